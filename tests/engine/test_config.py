import pytest

from cnnkit.engine.config import TrainConfig, load_config, parse_override, save_config
from cnnkit.errors import ConfigError


def test_defaults_train_lenet_on_mnist5k():
    config = load_config()
    assert (config.model, config.data.name, config.task) == ("lenet5", "mnist5k", "classification")


def test_overrides_are_typed_and_nested():
    config = load_config(
        None, ["epochs=5", "optim.lr=0.01", "data=imagefolder:/x", "amp=true", "grad_clip=1"]
    )
    assert config.epochs == 5 and config.optim.lr == 0.01
    assert config.data.name == "imagefolder:/x"
    assert config.amp is True
    assert config.grad_clip == 1.0 and isinstance(config.grad_clip, float)


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'.*'epochs'"):
        load_config(None, ["epoch=3"])
    with pytest.raises(ConfigError, match=r"'optim.lrr'.*'lr'"):
        load_config(None, ["optim.lrr=3"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"epochs: expected an integer, got 'five'"):
        load_config(None, ["epochs=five"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, ["optim.name=adamm"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("epochs")


def test_yaml_file_then_overrides_and_roundtrip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\noptim:\n  name: sgd\n  lr: 0.1\naugment: []\n")
    config = load_config(path, ["epochs=4"])
    assert config.epochs == 4 and config.optim.name == "sgd" and config.augment == []
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


def test_yaml_with_unknown_key_fails(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="'optim'"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")


def test_default_config_is_a_dataclass_instance():
    assert isinstance(load_config(), TrainConfig)
