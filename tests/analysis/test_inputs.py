"""``analyze``'s input: the model card's size by default, sizes without the batch dim, dtypes, one-line errors."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnkit
from cnnkit.analysis import analyze
from cnnkit.errors import ConfigError


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))


def test_default_input_size_is_the_model_card():
    model = cnnkit.create_model("lenet5")
    assert model.default_cfg["input_size"] == (1, 32, 32)
    report = analyze(model)
    assert report.input_size == (1, 1, 32, 32)
    assert report.macs == 416_520 == cnnkit.model_card("lenet5").macs
    assert report.params == 61_706


def test_inception_v3_defaults_to_its_299_card():
    # analyze used 224 whatever the model: 2.838 G MACs, where the card and `cnnkit summary` say 5.713 G
    model = cnnkit.create_model("inception_v3")
    report = analyze(model)
    assert report.input_size == (1, 3, 299, 299)
    assert report.macs == 5_713_216_096 == cnnkit.model_card("inception_v3").macs
    assert analyze(model, (3, 224, 224)).macs == 2_837_921_120


def test_without_default_cfg_the_default_is_224():
    report = analyze(small_cnn())
    assert report.input_size == (1, 3, 224, 224)
    assert report.macs == 224 * 224 * 8 * 27


def test_input_size_without_the_batch_dim_is_batch_one():
    batchless = analyze(small_cnn(), (3, 32, 32))
    batched = analyze(small_cnn(), (1, 3, 32, 32))
    assert batchless.input_size == batched.input_size == (1, 3, 32, 32)
    assert batchless.macs == batched.macs == 32 * 32 * 8 * 27
    assert batchless.rows[0].output_shape == (1, 8, 32, 32)
    assert analyze(small_cnn(), torch.Size([2, 3, 32, 32])).macs == 2 * batched.macs
    conv1d = analyze(nn.Conv1d(2, 4, 5), (2, 100))  # (C, L) for a 1-d model
    assert conv1d.input_size == (1, 2, 100) and conv1d.macs == 96 * 4 * 10


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((32, 32), "input_size (32, 32) has 2 dims; Sequential takes (N, C, H, W) or, without the batch dim, "
         "(C, H, W), e.g. (1, 3, 224, 224) or (3, 224, 224)"),
        ((1, 1, 3, 32, 32), "input_size (1, 1, 3, 32, 32) has 5 dims; Sequential takes (N, C, H, W)"),
        ((1, 3, 0, 32), "input_size must be positive whole numbers, e.g. (1, 3, 224, 224); got (1, 3, 0, 32)"),
        ((1, 3, 32.0, 32), "input_size must be positive whole numbers"),
        (224, "input_size must be positive whole numbers, e.g. (1, 3, 224, 224); got 224"),
    ],
)  # fmt: skip
def test_wrong_input_size_is_one_config_error_line(size, message):
    with pytest.raises(ConfigError) as err:
        analyze(small_cnn(), size)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_wrong_size_for_a_card_names_the_card_size():
    with pytest.raises(ConfigError, match=re.escape("e.g. (1, 1, 32, 32) or (1, 32, 32)")):
        analyze(cnnkit.create_model("lenet5"), (32, 32))


def test_a_model_without_card_that_is_not_2d_needs_an_input_size():
    with pytest.raises(
        ConfigError, match=re.escape("Conv1d has no default_cfg['input_size'] and takes (N, C, L)")
    ):
        analyze(nn.Conv1d(2, 4, 5))


def test_an_input_the_model_cannot_run_on_is_one_config_error_line():
    with pytest.raises(ConfigError) as err:
        analyze(small_cnn(), (1, 32, 32))  # 1 channel for a 3-channel conv
    message = str(err.value)
    assert message.startswith("Sequential cannot run on a 1x32x32 input (batch 1, float32): Given groups=1")
    assert "expected input[1, 1, 32, 32] to have 3 channels" in message and "\n" not in message
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(ConfigError, match=r"cannot run on a 3x2x2 input \(batch 1, float32\): .*Kernel size"):
        analyze(nn.Conv2d(3, 4, 3), (3, 2, 2))


def test_float16_analyses_a_converted_copy():
    model = small_cnn().train()
    fp32 = analyze(model, (3, 32, 32))
    fp16 = analyze(model, (3, 32, 32), dtype=torch.float16)
    assert fp16.macs == fp32.macs and fp16.params == fp32.params == 8 * 27 + 8 + 16
    assert fp16.activation_bytes * 2 == fp32.activation_bytes == 4 * (3 * 8 * 32 * 32 + 8 * 16 * 16)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and model.training
    half = small_cnn().half()
    assert (
        analyze(half, (3, 32, 32)).activation_bytes == fp32.activation_bytes
    )  # float32 input: a float32 copy
    assert all(p.dtype == torch.float16 for p in half.parameters())


def test_a_dtype_that_is_not_a_float_is_one_config_error_line():
    with pytest.raises(ConfigError) as err:
        analyze(small_cnn(), (3, 8, 8), dtype=torch.int64)
    message = str(err.value)
    assert message.startswith("Sequential cannot run on a 3x8x8 input (batch 1, int64): ")
    assert message.endswith("pass a floating dtype (the model is converted to it)") and "\n" not in message
    with pytest.raises(
        ConfigError, match=re.escape("dtype must be a torch.dtype such as torch.float16; got 'float16'")
    ):
        analyze(small_cnn(), (3, 8, 8), dtype="float16")


class AntialiasedHalving(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)


def test_float16_without_cpu_kernels_is_one_config_error_line_saying_what_to_do():
    # PyTorch has no float16 CPU kernel for antialiased resizing: NotImplementedError, now a ConfigError
    with pytest.raises(ConfigError) as err:
        analyze(AntialiasedHalving(), (1, 3, 16, 16), dtype=torch.float16, device="cpu")
    message = str(err.value)
    assert message.startswith("AntialiasedHalving cannot run on a 3x16x16 input (batch 1, float16): ")
    assert "not implemented for 'Half'" in message
    assert message.endswith(
        "float16 may be unsupported on CPU: analyse in float32 (shapes, parameters and MACs do not depend on "
        "the dtype; activation bytes scale with the element size) or pass device='cuda'"
    )
    assert "\n" not in message and isinstance(err.value.__cause__, NotImplementedError)
    assert analyze(AntialiasedHalving(), (1, 3, 16, 16)).rows[0].output_shape == (1, 3, 8, 8)
