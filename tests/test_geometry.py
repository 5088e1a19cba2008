"""cnnkit.geometry against the page's worked examples, hand computations and torch modules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnkit import geometry as G

FAST = settings(max_examples=50, deadline=None)


def test_geometry_imports_no_torch_or_numpy():
    source = G.__loader__.get_source(G.__name__)
    assert "import torch" not in source and "import numpy" not in source


# --- page worked examples -------------------------------------------------------------------------------


def test_page_parameter_count_example():
    assert G.conv_params(64, 128, 3) == 128 * (64 * 9 + 1) == 73856


def test_lenet5_spec_geometry_and_params():
    # Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84) -> FC(10)
    sizes = [32]
    sizes.append(G.conv_output_size(sizes[-1], 5))
    sizes.append(G.pool_output_size(sizes[-1], 2))
    sizes.append(G.conv_output_size(sizes[-1], 5))
    sizes.append(G.pool_output_size(sizes[-1], 2))
    assert sizes == [32, 28, 14, 10, 5]
    params = (
        G.conv_params(1, 6, 5)
        + G.conv_params(6, 16, 5)
        + G.linear_params(16 * 5 * 5, 120)
        + G.linear_params(120, 84)
        + G.linear_params(84, 10)
    )
    assert params == 61706


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("depth", [1, 2, 5])
def test_receptive_field_stride_one_stack(kernel, depth):
    assert G.receptive_field([(kernel,)] * depth) == (1 + depth * (kernel - 1), 1)


def test_two_3x3_have_the_field_of_one_5x5():
    assert G.receptive_field([(3,), (3,)])[0] == G.receptive_field([(5,)])[0] == 5


def test_receptive_field_with_strides_matches_page_sum():
    layers = [(7, 2), (3, 2), (3, 1), (3, 2), (3, 1)]
    # RF = 1 + sum (k_l - 1) * prod_{j<l} s_j = 1 + 6*1 + 2*2 + 2*4 + 2*4 + 2*8
    assert G.receptive_field(layers) == (1 + 6 + 4 + 8 + 8 + 16, 8)
    # LeNet-5: conv5 -> pool2 -> conv5 -> pool2 gives 14 (jump 2) at conv2 and 16 (jump 4) after pool2
    assert G.receptive_field([(5, 1), (2, 2), (5, 1)]) == (14, 2)
    assert G.receptive_field([(5, 1), (2, 2), (5, 1), (2, 2)]) == (16, 4)


def test_receptive_field_dilation_uses_effective_kernel():
    # DeepLab-style: dilations 1, 2, 4 of 3x3 convs -> 1 + 2 + 4 + 8
    assert G.receptive_field([(3, 1, 1), (3, 1, 2), (3, 1, 4)]) == (15, 1)
    assert G.receptive_field([]) == (1, 1)


def test_same_and_valid_padding_hand_values():
    assert G.conv_output_size(28, 5, padding="valid") == 24
    assert G.conv_output_size(28, 4, padding="same") == 28
    assert G.conv_output_size(224, 7, stride=2, padding="same") == 112
    assert G.conv_output_size(225, 3, stride=2, padding="same") == 113
    assert G.conv_output_size(224, 7, stride=2, padding=3) == 112
    assert [G.same_padding(k) for k in (1, 3, 5, 7)] == [0, 1, 2, 3]


def test_depthwise_separable_hand_values():
    assert G.depthwise_separable_params(32, 64, 3) == 32 * 9 + 32 * 64
    assert G.depthwise_separable_params(32, 64, 3, bias=True) == 32 * 9 + 32 + 32 * 64 + 64
    assert G.depthwise_separable_reduction(3, 64) == pytest.approx((9 + 64) / (9 * 64))


def test_compound_scaling_hand_values():
    s = G.compound_scaling(1)
    assert isinstance(s, G.CompoundScaling)
    assert s == pytest.approx((1.2, 1.1, 1.15, 1.2 * 1.21 * 1.3225))
    assert s.flops == pytest.approx(1.92027)
    assert G.compound_scaling(0) == (1.0, 1.0, 1.0, 1.0)
    s3 = G.compound_scaling(3)
    assert s3.depth == pytest.approx(1.728) and s3.width == pytest.approx(1.331)
    assert s3.resolution == pytest.approx(1.520875) and s3.flops == pytest.approx(1.92027**3)


# --- errors ---------------------------------------------------------------------------------------------


def test_empty_conv_output_names_the_numbers():
    with pytest.raises(ValueError, match=r"size=3.*kernel=5"):
        G.conv_output_size(3, 5)
    with pytest.raises(ValueError, match=r"dilation\*\(kernel-1\)\+1=9"):
        G.conv_output_size(8, 3, dilation=4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: G.conv_output_size(0, 3),
        lambda: G.conv_output_size(8, 3, stride=0),
        lambda: G.conv_output_size(8, 3, padding=-1),
        lambda: G.conv_output_size(8, 3, padding="full"),
        lambda: G.pool_output_size(8, 2, padding=2),
        lambda: G.pool_output_size(1, 3, padding=0),
        lambda: G.conv_params(6, 4, 3, groups=4),
        lambda: G.conv_params(6, 4, (3, 3, 3)),
        lambda: G.linear_params(0, 3),
        lambda: G.receptive_field([(3, 1, 1, 1)]),
        lambda: G.receptive_field([(3, 0)]),
        lambda: G.compound_scaling(1, alpha=0),
        lambda: G.compound_scaling(math.nan),
        lambda: G.same_padding(0),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_bad_argument_message_names_value():
    with pytest.raises(ValueError, match=r"stride=0"):
        G.conv_output_size(8, 3, stride=0)
    with pytest.raises(ValueError, match=r"groups=4.*c_in=6"):
        G.conv_params(6, 4, 3, groups=4)


# --- properties against torch modules -------------------------------------------------------------------


@FAST
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    padding=st.integers(0, 4),
    dilation=st.integers(1, 3),
)
def test_conv_output_size_matches_conv2d(size, kernel, stride, padding, dilation):
    conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
    fits = size + 2 * padding >= dilation * (kernel - 1) + 1
    if not fits:
        with pytest.raises(ValueError):
            G.conv_output_size(size, kernel, stride, padding, dilation)
        return
    expected = conv(torch.zeros(1, 1, size, size)).shape[-1]
    assert G.conv_output_size(size, kernel, stride, padding, dilation) == expected


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@FAST
@given(size=st.integers(1, 30), kernel=st.integers(1, 6), dilation=st.integers(1, 3))
def test_same_padding_at_stride_one_matches_torch_same(size, kernel, dilation):
    conv = nn.Conv2d(1, 1, kernel, padding="same", dilation=dilation, bias=False)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == G.conv_output_size(
        size, kernel, padding="same", dilation=dilation
    )
    assert G.conv_output_size(size, kernel, padding="same", dilation=dilation) == size


@FAST
@given(
    size=st.integers(1, 40), kernel=st.integers(1, 7), stride=st.integers(1, 4), dilation=st.integers(1, 3)
)
def test_same_padding_tf_convention_by_explicit_padding(size, kernel, stride, dilation):
    out = G.conv_output_size(size, kernel, stride, "same", dilation)
    assert out == math.ceil(size / stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    padded = nn.functional.pad(torch.zeros(1, 1, 1, size), (total // 2, total - total // 2))
    conv = nn.Conv2d(1, 1, (1, kernel), stride=stride, dilation=dilation, bias=False)
    assert conv(padded).shape[-1] == out


@FAST
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 6),
    stride=st.one_of(st.none(), st.integers(1, 4)),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 3),
    ceil_mode=st.booleans(),
)
def test_pool_output_size_matches_max_pool2d(size, kernel, stride, padding, dilation, ceil_mode):
    padding = min(padding, kernel // 2)
    if size + 2 * padding < dilation * (kernel - 1) + 1:
        with pytest.raises(ValueError):
            G.pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
        return
    pool = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    expected = pool(torch.zeros(1, 1, size, size)).shape[-1]
    assert G.pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) == expected


def test_ceil_mode_drops_window_starting_in_right_padding():
    # size 5, k 2, s 2, p 1: ceil((5 + 2 - 2) / 2) + 1 = 4, but window 4 would start at padded index 6,
    # past the input and its left padding (5 + 1), so it is dropped.
    assert G.pool_output_size(5, 2, 2, 1, ceil_mode=True) == 3
    assert nn.MaxPool2d(2, 2, 1, ceil_mode=True)(torch.zeros(1, 1, 5, 5)).shape[-1] == 3
    # size 6: ceil(6 / 2) + 1 = 4 and window 4 starts at padded index 6 < 7: kept.
    assert G.pool_output_size(6, 2, 2, 1, ceil_mode=True) == 4
    assert G.pool_output_size(6, 2, 2, 1) == 4
    assert G.pool_output_size(7, 2, 2, 0, ceil_mode=True) == 4


@FAST
@given(
    c_in_per_group=st.integers(1, 6),
    c_out_per_group=st.integers(1, 6),
    groups=st.integers(1, 4),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    bias=st.booleans(),
)
def test_conv_params_matches_conv2d(c_in_per_group, c_out_per_group, groups, kh, kw, bias):
    c_in, c_out = c_in_per_group * groups, c_out_per_group * groups
    conv = nn.Conv2d(c_in, c_out, (kh, kw), groups=groups, bias=bias)
    expected = sum(p.numel() for p in conv.parameters())
    assert G.conv_params(c_in, c_out, (kh, kw), bias=bias, groups=groups) == expected
    if kh == kw:
        assert G.conv_params(c_in, c_out, kh, bias=bias, groups=groups) == expected


@FAST
@given(n_in=st.integers(1, 50), n_out=st.integers(1, 50), bias=st.booleans())
def test_linear_params_matches_linear(n_in, n_out, bias):
    assert G.linear_params(n_in, n_out, bias) == sum(
        p.numel() for p in nn.Linear(n_in, n_out, bias).parameters()
    )


@FAST
@given(c_in=st.integers(1, 24), c_out=st.integers(1, 24), kernel=st.integers(1, 7), bias=st.booleans())
def test_depthwise_separable_matches_modules(c_in, c_out, kernel, bias):
    depthwise = nn.Conv2d(c_in, c_in, kernel, groups=c_in, bias=bias)
    pointwise = nn.Conv2d(c_in, c_out, 1, bias=bias)
    separable = sum(p.numel() for m in (depthwise, pointwise) for p in m.parameters())
    assert G.depthwise_separable_params(c_in, c_out, kernel, bias=bias) == separable
    if not bias:
        standard = nn.Conv2d(c_in, c_out, kernel, bias=False).weight.numel()
        assert G.depthwise_separable_reduction(kernel, c_out) == pytest.approx(
            separable / standard, rel=1e-12
        )


@FAST
@given(
    layers=st.lists(
        st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 3)),
        min_size=1,
        max_size=4,
    )
)
def test_receptive_field_matches_page_sum(layers):
    rf = 1 + sum(d * (k - 1) * math.prod(s for _, s, _ in layers[:i]) for i, (k, _, d) in enumerate(layers))
    assert G.receptive_field(layers) == (rf, math.prod(s for _, s, _ in layers))


def test_numpy_integers_are_accepted_and_results_are_python_ints():
    out = G.conv_output_size(np.int64(32), np.int64(5), padding=np.int64(2))
    assert out == 32 and type(out) is int
    assert type(G.conv_params(np.int64(3), np.int64(8), (np.int64(3), np.int64(3)))) is int
    assert G.receptive_field([(np.int64(3), np.int64(2))]) == (3, 2)
