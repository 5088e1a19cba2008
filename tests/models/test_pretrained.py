"""Pretrained weights from local files and through torchvision's weights API (with a file:// URL; no network)."""

from __future__ import annotations

import hashlib
import pathlib

import pytest
import torch
import torchvision
from safetensors.torch import save_file

import cnnkit
from cnnkit.models import pretrained


@pytest.fixture(scope="module")
def tv_resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture
def x():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _save_pth(model: torch.nn.Module, path: pathlib.Path) -> pathlib.Path:
    torch.save(model.state_dict(), path)
    return path


def test_local_pth_loads_and_matches_torchvision(tmp_path, tv_resnet18, x):
    path = _save_pth(tv_resnet18, tmp_path / "resnet18.pth")
    ours = cnnkit.create_model("resnet18", weights=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv_resnet18(x), rtol=0, atol=1e-5)


def test_local_safetensors_loads(tmp_path, tv_resnet18, x):
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in tv_resnet18.state_dict().items()}, str(path))
    ours = cnnkit.load_pretrained(cnnkit.create_model("resnet18"), path).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv_resnet18(x), rtol=0, atol=1e-5)


def test_new_num_classes_keeps_backbone_and_gets_fresh_head(tmp_path, tv_resnet18, x):
    path = _save_pth(tv_resnet18, tmp_path / "resnet18.pth")
    ours = cnnkit.create_model("resnet18", weights=str(path), num_classes=10).eval()
    assert ours.fc.out_features == 10
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(x), tv_resnet18.layer4(_stem_to_layer3(tv_resnet18, x))
        )


def _stem_to_layer3(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer3(m.layer2(m.layer1(x)))


def test_one_input_channel_sums_pretrained_filters(tmp_path, tv_resnet18):
    path = _save_pth(tv_resnet18, tmp_path / "resnet18.pth")
    grey = cnnkit.create_model("resnet18", weights=str(path), in_chans=1).eval()
    assert grey.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(grey.conv1.weight, tv_resnet18.conv1.weight.sum(1, keepdim=True))
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(image), tv_resnet18(image.expand(1, 3, 64, 64)), rtol=1e-4, atol=1e-4)


def test_adapt_input_conv_keeps_constant_response():
    w = torch.randn(8, 3, 3, 3)
    for c in (1, 3, 6, 9):
        adapted = pretrained.adapt_input_conv(w, c)
        assert adapted.shape == (8, c, 3, 3)
        torch.testing.assert_close(adapted.sum(dim=(1, 2, 3)), w.sum(dim=(1, 2, 3)))
    two = pretrained.adapt_input_conv(w, 2)
    torch.testing.assert_close(two, w[:, :2] * 1.5)


def test_mismatched_checkpoint_lists_keys(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "bogus.weight": torch.zeros(3)}, tmp_path / "w.pth")
    with pytest.raises(cnnkit.ConfigError) as err:
        cnnkit.create_model("resnet18", weights=str(tmp_path / "w.pth"))
    message = str(err.value)
    assert "missing: bn1.weight" in message and "unexpected: bogus.weight" in message


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "payload": pathlib.PurePosixPath("/")}, path)
    with pytest.raises(cnnkit.DataError, match="cannot read weights"):
        pretrained.read_state_dict(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(cnnkit.DataError, match="nothere.pth"):
        cnnkit.create_model("resnet18", weights=str(tmp_path / "nothere.pth"))


def _fake_weights_enum(url: str):
    entry = torchvision.models.Weights(url=url, transforms=None, meta={})

    class ResNet18_Weights(torchvision.models.WeightsEnum):  # noqa: N801 (torchvision's naming)
        IMAGENET1K_V1 = entry
        DEFAULT = entry

    return ResNet18_Weights


def _serve(model: torch.nn.Module, tmp_path: pathlib.Path, stem: str) -> pathlib.Path:
    """Save a state_dict under torch.hub's ``<stem>-<sha256 prefix>.pth`` naming, as the weights URLs are."""
    raw = tmp_path / "raw.pth"
    _save_pth(model, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()[:8]
    served = tmp_path / "served" / f"{stem}-{digest}.pth"
    served.parent.mkdir(exist_ok=True)
    raw.rename(served)
    return served


def test_weights_api_downloads_from_url_and_verifies_hash(tmp_path, monkeypatch, tv_resnet18, x):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    served = _serve(tv_resnet18, tmp_path, "resnet18")
    fake = _fake_weights_enum(served.as_uri())
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: fake)
    ours = cnnkit.create_model("resnet18", pretrained=True, num_classes=5).eval()
    assert ours.fc.out_features == 5
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(x), tv_resnet18.layer4(_stem_to_layer3(tv_resnet18, x))
        )
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / served.name).exists()


def test_googlenet_published_weights_rescale_input_and_adapt_aux_heads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(0)
    served = _serve(torchvision.models.googlenet(weights=None, init_weights=True), tmp_path, "googlenet")
    fake = _fake_weights_enum(served.as_uri())
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: fake)
    model = cnnkit.create_model("googlenet", pretrained=True, num_classes=7)
    assert model.transform_input, "torchvision's googlenet weights expect transform_input=True"
    assert model.fc.out_features == 7 and model.aux1.fc2.out_features == 7
    local = cnnkit.create_model("googlenet", weights=str(served), num_classes=7)  # aux heads re-initialised
    assert local.aux2.fc2.out_features == 7


def test_failed_download_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    fake = _fake_weights_enum((tmp_path / "absent-0123abcd.pth").as_uri())
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: fake)
    with pytest.raises(cnnkit.ConfigError, match=r"weights='PATH'") as err:
        cnnkit.create_model("resnet18", pretrained=True)
    assert "\n" not in str(err.value)


def test_unknown_weights_entry_lists_available():
    with pytest.raises(cnnkit.ConfigError, match="IMAGENET1K_V1"):
        cnnkit.create_model("resnet18", weights="IMAGENET1K_V9")


def test_model_without_published_weights_says_so():
    with pytest.raises(cnnkit.ConfigError, match="no published torchvision weights"):
        cnnkit.create_model("lenet5", pretrained=True)
