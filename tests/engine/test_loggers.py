"""`logger=tensorboard` / `logger=mlflow`: the logs, read back with the trackers' own readers, hold what
metrics.csv holds."""

import csv
import json
import sys

import pytest

from cnnkit.cli import main
from cnnkit.engine.config import load_config
from cnnkit.engine.loggers import flatten_config
from cnnkit.engine.run import resume, train
from cnnkit.errors import ConfigError

TINY = {
    "model": "lenet5",
    "data": {"train_size": 128, "val_size": 64},
    "epochs": 2,
    "progress": False,
}


def _csv_rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    (root / "store").mkdir()
    run = train(
        **TINY,
        logger=["tensorboard", "mlflow"],
        mlflow={"tracking_uri": uri, "experiment": "tiny"},
        output_dir=str(root / "run"),
    )
    return run, uri, root


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_scalars_equal_metrics_csv(logged_run):
    run, _, _ = logged_run
    rows = _csv_rows(run.dir)
    events = _scalars(run.dir)
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "epoch/train_loss", "epoch/loss", "epoch/accuracy", "epoch/lr"} <= set(
        tags
    )
    # 128 images in batches of 64: 2 steps per epoch, 4 in all, numbered 1..4
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]
    for column in ("train_loss", "loss", "accuracy", "top5", "lr", "time"):
        logged = events.Scalars(f"epoch/{column}")
        assert [e.step for e in logged] == [int(row["step"]) for row in rows] == [2, 4]
        # TensorBoard stores float32
        assert [e.value for e in logged] == pytest.approx([row[column] for row in rows], rel=1e-6)
    # the epoch's train_loss is the mean of its step losses
    steps = [e.value for e in events.Scalars("train/loss")]
    assert rows[0]["train_loss"] == pytest.approx(sum(steps[:2]) / 2, rel=1e-6)
    assert rows[1]["lr"] == pytest.approx(events.Scalars("train/lr")[-1].value, rel=1e-6)


def test_tensorboard_holds_predictions_every_epoch_and_the_final_plots(logged_run):
    run, _, _ = logged_run
    images = _scalars(run.dir).Tags()["images"]
    assert sorted(images) == ["plots/confusion_matrix", "plots/curves", "plots/predictions", "predictions"]
    # the validation samples' picture after each epoch, at the step it ended on, as predictions.png draws it
    per_epoch = _scalars(run.dir).Images("predictions")
    assert [image.step for image in per_epoch] == [int(row["step"]) for row in _csv_rows(run.dir)]
    last, final = per_epoch[-1], _scalars(run.dir).Images("plots/predictions")[0]
    assert (last.width, last.height) == (final.width, final.height)
    assert last.encoded_image_string == final.encoded_image_string  # the same model, the same picture
    curves = _scalars(run.dir).Images("plots/curves")[0]
    from PIL import Image

    with Image.open(run.dir / "curves.png") as png:
        assert (curves.width, curves.height) == png.size


def test_mlflow_params_metrics_and_artifacts(logged_run):
    from mlflow import MlflowClient

    run, uri, root = logged_run
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    [record] = client.search_runs([experiment.experiment_id])
    assert record.info.run_id == json.loads((run.dir / "mlflow_run.json").read_text())["run_id"]
    assert record.info.status == "FINISHED" and record.info.run_name == "run"
    params = record.data.params
    config = load_config(run.dir / "config.yaml")
    assert params == flatten_config(config)
    assert params["optim.lr"] == "0.003" and params["data.train_size"] == "128"
    assert params["model"] == "lenet5" and params["logger"] == '["tensorboard", "mlflow"]'
    rows = _csv_rows(run.dir)
    for column in ("train_loss", "loss", "accuracy", "top5", "lr", "time"):
        history = client.get_metric_history(record.info.run_id, column)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([row[column] for row in rows], rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(record.info.run_id)}
    assert artifacts == {"checkpoints", "plots", "config.yaml", "metrics.csv"}
    checkpoints = {a.path: a.file_size for a in client.list_artifacts(record.info.run_id, "checkpoints")}
    assert checkpoints == {
        "checkpoints/best.safetensors": (run.dir / "best.safetensors").stat().st_size,
        "checkpoints/last.safetensors": (run.dir / "last.safetensors").stat().st_size,
    }
    plots = {a.path for a in client.list_artifacts(record.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/curves.png", "plots/predictions.png"}
    # artifacts of a SQLite store lie beside it, not in the working directory
    assert experiment.artifact_location == (root / "store" / "mlartifacts").as_uri()


def test_resume_continues_the_same_mlflow_run_and_tensorboard_folder(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = train(
        **TINY, plots=False, logger="mlflow", mlflow={"tracking_uri": uri}, output_dir=str(tmp_path / "r")
    )
    run_id = json.loads((first.dir / "mlflow_run.json").read_text())["run_id"]
    resume(first.dir, ["epochs=3", "logger=[mlflow,tensorboard]"])
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    [record] = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert record.info.run_id == run_id and record.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([r["accuracy"] for r in _csv_rows(first.dir)])
    assert record.data.params["epochs"] == "2"  # MLflow parameters are immutable: the first value stays
    # TensorBoard started with the resumed epoch: steps 5 and 6 only
    assert [e.step for e in _scalars(first.dir).Scalars("train/loss")] == [5, 6]


def test_default_store_is_beside_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = train(**{**TINY, "epochs": 1}, plots=False, logger="mlflow", output_dir="runs/a")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    [record] = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    assert record.info.run_name == "a" and run.dir.name == "a"
    assert len(client.list_artifacts(record.info.run_id, "checkpoints")) == 2
    assert (tmp_path / "runs" / "mlartifacts").is_dir() and not (tmp_path / "mlartifacts").exists()


def test_logger_key_takes_one_name_or_a_list():
    assert load_config(None, ["logger=tensorboard"]).logger == ["tensorboard"]
    assert load_config(None, ["logger=[tensorboard,mlflow]"]).logger == ["tensorboard", "mlflow"]
    assert load_config(None, []).logger == []
    with pytest.raises(ConfigError, match="'tensorbord' is not one of tensorboard, mlflow; did you mean"):
        load_config(None, ["logger=tensorbord"])
    with pytest.raises(ConfigError, match="unknown config key 'mlflow.uri'"):
        load_config(None, ["mlflow.uri=x"])


@pytest.mark.parametrize(
    "name, modules", [("mlflow", ["mlflow"]), ("tensorboard", ["tensorboard", "torch.utils.tensorboard"])]
)
def test_missing_extra_is_one_line_and_exit_2(name, modules, tmp_path, monkeypatch, capsys):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import mlflow` now raises ImportError
    code = main(["train", f"logger={name}", "epochs=1", "progress=false", f"output_dir={tmp_path}/r"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        f"cnnkit train: error: logger={name} needs the {name} package: pip install 'cnnkit[{name}]'\n"
    )
    assert not (tmp_path / "r").exists()  # stopped before the run started


def test_under_torchrun_only_rank_0_logs(tmp_path):
    import os
    import subprocess

    from mlflow import MlflowClient

    run, uri = tmp_path / "ddp", f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cnnkit", "train",
        "data.train_size=256", "data.val_size=64", "data.batch_size=32", "epochs=2", "plots=false",
        "progress=false", "logger=[tensorboard,mlflow]", f"mlflow.tracking_uri={uri}", f"output_dir={run}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((run / "tensorboard").iterdir())) == 1  # one event file, rank 0's
    # 256 samples over 2 ranks of 32 per batch: 4 steps per epoch, each logged once
    assert [e.step for e in _scalars(run).Scalars("train/loss")] == list(range(1, 9))
    client = MlflowClient(tracking_uri=uri)
    [record] = client.search_runs([client.get_experiment_by_name("classification").experiment_id])
    history = client.get_metric_history(record.info.run_id, "accuracy")
    assert [m.value for m in history] == pytest.approx([row["accuracy"] for row in _csv_rows(run)])
    assert [m.step for m in history] == [1, 2]
