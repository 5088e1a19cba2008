"""cnnkit.build: the page's arrow notation, its defaults, the feature contract and its error messages."""

from __future__ import annotations

import re
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import cnnkit
from cnnkit.analysis import analyze
from cnnkit.errors import ConfigError, SpecError
from cnnkit.models import spec as spec_module
from cnnkit.models.features import FeatureListNet
from cnnkit.models.spec import SpecNet, SpecTokenError, build

LENET = "Input(32x32) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(120) -> FC(84) -> FC(10)"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layout(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, type(module).__name__) for name, module in model.named_children()]


def test_page_lenet_has_61706_parameters_in_readable_modules():
    net = build(LENET)
    assert isinstance(net, SpecNet) and cnnkit.build is build
    assert n_params(net) == 61_706
    # C_out * (C_in * k^2 + 1) per conv, n_in * n_out + n_out per FC (page, "Parameter Count").
    expected = {
        "conv1": 6 * 26,
        "conv2": 16 * (6 * 25 + 1),
        "fc1": 400 * 120 + 120,
        "fc2": 120 * 84 + 84,
        "fc3": 850,
    }
    assert {name: n_params(m) for name, m in net.named_children() if n_params(m)} == expected
    assert [name for name, _ in layout(net)] == [
        "conv1", "act1", "pool1", "conv2", "act2", "pool2", "flatten", "fc1", "act3", "fc2", "act4", "fc3",
    ]  # fmt: skip
    assert net.input_size == (1, 32, 32)
    assert build(LENET.replace("Input(32x32)", "Input(1x32x32)")).input_size == (1, 32, 32)


def test_lenet_shapes_follow_the_page_32_28_14_10_5():
    net = build(LENET)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    shapes = {}
    for name in net.feature_layers:
        x = getattr(net, name)(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["conv1"] == (6, 28, 28) and shapes["pool1"] == (6, 14, 14)
    assert shapes["conv2"] == (16, 10, 10) and shapes["pool2"] == (16, 5, 5)
    assert net(torch.zeros(3, 1, 32, 32)).shape == (3, 10)


def test_options_strides_padding_dwconv_gap_and_bias_rules():
    net = build(
        "Input(3x32x32) -> Conv(3x3,8,s=2,p=same) -> BN -> DWConv(3x3,p=1) -> MaxPool(3,2,p=1) -> GAP "
        "-> Dropout(0.2) -> FC(5)"
    )
    assert layout(net) == [
        ("conv1", "Conv2d"), ("bn1", "BatchNorm2d"), ("act1", "ReLU"), ("dwconv1", "Conv2d"), ("act2", "ReLU"),
        ("pool1", "MaxPool2d"), ("gap", "AdaptiveAvgPool2d"), ("flatten", "Flatten"), ("drop1", "Dropout"),
        ("fc1", "Linear"),
    ]  # fmt: skip
    assert net.conv1.bias is None and net.conv1.padding == (1, 1) and net.conv1.stride == (2, 2)
    assert net.dwconv1.groups == 8 and net.dwconv1.bias is not None and net.drop1.p == 0.2
    # conv 8*3*9 (no bias before BN) + BN 2*8 + depthwise 8*9 + 8 + FC 8*5 + 5
    assert n_params(net) == 216 + 16 + 80 + 45
    x = torch.zeros(2, 3, 32, 32)
    assert net.forward_features(x).shape == (2, 8, 8, 8)  # 32 -s2-> 16 -> 16 -pool s2-> 8
    assert net(x).shape == (2, 5)
    assert [(i["num_chs"], i["reduction"]) for i in net.feature_info] == [(8, 2), (8, 4)]


@pytest.mark.parametrize(
    ("spec", "kernel", "size"),
    [
        ("Input(1x9x9) -> Conv(3x3,2,p=valid)", 3, 7),
        ("Input(1x9x9) -> Conv(5,2,p=same)", 5, 9),
        ("Input(1x9x9) -> Conv(3x3,2,p=2,d=2)", 3, 9),
        ("Input(1x9x9) -> Conv(3x3,2,s=2,p=same)", 3, 5),
        ("Input(1x9x9) -> Conv(2x2,2,stride=3,padding=1)", 2, 4),
        ("Input(1x9x9) -> AvgPool(3)", 3, 3),
        ("Input(1x9x9) -> MaxPool(3x3,s=1,p=1)", 3, 9),
    ],
)
def test_output_sizes_match_torch(spec, kernel, size):
    net = build(spec)
    assert net(torch.zeros(1, 1, 9, 9)).shape[-2:] == (size, size)
    assert next(iter(net.children())).kernel_size in (kernel, (kernel, kernel))


def test_default_activation_rules():
    assert layout(build("Input(1x8x8) -> Conv(3x3,4) -> BN -> Conv(3x3,4)")) == [
        ("conv1", "Conv2d"), ("bn1", "BatchNorm2d"), ("act1", "ReLU"), ("conv2", "Conv2d"),
    ]  # fmt: skip
    assert layout(build("Input(1x8x8) -> Conv(3x3,4) -> BN -> GELU -> FC(3)"))[:3] == [
        ("conv1", "Conv2d"), ("bn1", "BatchNorm2d"), ("act1", "GELU"),
    ]  # fmt: skip
    assert [n for n, _ in layout(build("Input(1x8x8) -> Conv(3x3,4) -> Identity -> FC(3)"))] == [
        "conv1", "flatten", "fc1",
    ]  # fmt: skip
    tanh = build(LENET, act="tanh", pool="avg")
    assert {type(m).__name__ for n, m in tanh.named_children() if n.startswith(("act", "pool"))} == {
        "Tanh",
        "AvgPool2d",
    }
    assert not any(n.startswith("act") for n, _ in layout(build(LENET, act="identity")))
    leaky = build("Input(1x8x8) -> FC(4) -> LeakyReLU(0.2) -> FC(2) -> Sigmoid")
    assert leaky.act1.negative_slope == 0.2 and isinstance(leaky.act2, nn.Sigmoid)


def test_names_are_case_insensitive():
    lower = build(
        "input(32x32) -> conv(5x5,6) -> POOL -> conv(5X5,16) -> pool -> fc(120) -> Fc(84) -> fC(10)"
    )
    assert layout(lower) == layout(build(LENET)) and n_params(lower) == 61_706


def test_feature_contract(generator):
    net = build(LENET)
    assert [dict(i) for i in net.feature_info] == [
        {"num_chs": 16, "reduction": 2, "module": "act2"},
        {"num_chs": 16, "reduction": 4, "module": "pool2"},
    ]
    x = torch.randn(2, 1, 32, 32, generator=generator)
    maps = net.forward_intermediates(x)
    assert [m.shape for m in maps] == [(2, 16, 10, 10), (2, 16, 5, 5)]
    feats = net.forward_features(x)
    assert torch.equal(feats, maps[-1])
    assert net.forward_head(feats, pre_logits=True).shape == (2, 84) and net.head_hidden_size == 84
    assert net.num_features == 16
    assert torch.equal(net.forward_head(feats), net(x))
    assert net.get_classifier() is net.fc3
    pyramid = FeatureListNet(build(LENET), out_indices=(0, 1))
    assert [m.shape for m in pyramid(x)] == [(2, 16, 10, 10), (2, 16, 5, 5)]
    assert n_params(pyramid) == 156 + 2416  # the head is dropped
    net.reset_classifier(3)
    assert net(x).shape == (2, 3) and net.num_classes == 3
    net.reset_classifier(0)
    assert net(x).shape == (2, 84)


def test_traces_with_fx_and_analyze_reads_the_names():
    report = analyze(build(LENET), (1, 1, 32, 32))
    assert [row.name for row in report.rows][:3] == ["conv1", "act1", "pool1"]
    assert report.params == 61_706 and report.macs == 416_520


def test_input_size_and_num_classes_overrides():
    net = build(LENET, input_size=(3, 32, 32), num_classes=4)
    assert net.conv1.in_channels == 3 and net.fc3.out_features == 4 and net.num_classes == 4
    assert n_params(net) == 61_706 + 2 * 6 * 25 - 6 * 84 - 6
    assert build(LENET, num_classes=0)(torch.zeros(1, 1, 32, 32)).shape == (1, 84)
    with pytest.raises(ConfigError, match="act must be one of"):
        build(LENET, act="swish")
    with pytest.raises(ConfigError, match="pool must be"):
        build(LENET, pool="min")
    with pytest.raises(ConfigError, match="input_size"):
        build(LENET, input_size=(1, 32))
    with pytest.raises(ConfigError, match="FC layer"):
        build("Input(1x8x8) -> Conv(3x3,4)", num_classes=3)


def test_spec_without_flattening_returns_the_map():
    net = build("Input(2x10x12) -> Conv(3x3,4) -> Conv(3x3,5,d=2)")
    assert net(torch.zeros(1, 2, 10, 12)).shape == (1, 5, 4, 6)
    assert [dict(i) for i in net.feature_info] == [{"num_chs": 5, "reduction": 1, "module": "conv2"}]
    assert net.head_layers == () and isinstance(net.act1, nn.ReLU) and net.num_features == 5
    with pytest.raises(ConfigError, match="no FC layer"):
        net.reset_classifier(3)


def caret_column(err: SpecTokenError) -> int:
    lines = str(err).split("\n")
    assert len(lines) == 3 and lines[1].startswith("  ") and lines[2].lstrip().startswith("^")
    return lines[2].index("^") - 2


@pytest.mark.parametrize(
    ("spec", "token", "message"),
    [
        ("Input(32x32) -> Cnv(5x5,6) -> Pool", "Cnv(5x5,6)", "unknown layer 'Cnv' (did you mean 'Conv'"),
        ("Input(32x32) -> Blah -> Pool", "Blah", "expected a layer such as Conv(3x3,16), Pool, FC(10)"),
        ("Conv(3x3,4) -> FC(2)", "Conv(3x3,4)", "a spec starts with Input(CxHxW) or Input(HxW)"),
        ("Input(8x8) -> Input(8x8)", "Input(8x8)", "Input may appear only once"),
        ("Input(8x8) -> FC(2) ->", "->", "missing layer after '->'"),
        ("Input(8x8) -> Conv(3x3)", "Conv(3x3)", "Conv needs channels; e.g. Conv(3x3,16)"),
        ("Input(8x8) -> Conv(3x3,4,q=1)", "q=1", "Conv has no argument 'q'"),
        ("Input(8x8) -> Conv(3x3,four)", "four", "channels of Conv must be a whole number"),
        ("Input(8x8) -> Conv(3x3,4,s=0)", "s=0", "stride of Conv must be at least 1"),
        ("Input(8x8) -> Conv(3x3x3,4)", "3x3x3", "kernel of Conv must look like N or NxN"),
        ("Input(8x8) -> Conv(4x4,4,p=same)", "p=same", "p=same needs an odd kernel span"),
        ("Input(2x8x8) -> Conv(3x3,3,g=2)", "Conv(3x3,3,g=2)", "groups=2 must divide"),
        ("Input(8x8) -> Conv(3x3,4", "(3x3,4", "missing ')'"),
        ("Input(8x8) -> Conv(3x3,4) x", "x", "unexpected text after Conv(...)"),
        ("Input(8x8) -> Conv 3", "3", "expected '(' or '->' after Conv"),
        ("Input(8x8) -> Pool(2)", "2", "Pool takes no arguments"),
        ("Input(8x8) -> FC(4) -> Conv(3x3,2)", "Conv(3x3,2)", "already flat (4 features)"),
        ("Input(8x8) -> GAP -> Pool", "Pool", "already flat"),
        ("Input(8x8) -> Dropout(1.5)", "1.5", "p of Dropout must be at most 1.0"),
        ("Input(8x8) -> MaxPool(2,2,p=2)", "MaxPool(2,2,p=2)", "padding 2 is more than half"),
        ("Input(8x8) -> FC(1234567890)", "1234567890", "at most 9 digits"),
        ("Input(8x8) -> Conv(3x3,4,s=2,2)", "2", "positional argument after a keyword"),
        ("Input(8x8) -> Conv(3x3,4,s=1,stride=2)", "stride=2", "got 'stride' twice"),
    ],
)
def test_errors_put_a_caret_under_the_bad_token(spec, token, message):
    with pytest.raises(SpecTokenError) as info:
        build(spec)
    err = info.value
    assert isinstance(err, SpecError) and message in err.problem
    assert caret_column(err) == err.column == spec.rindex(token) and err.length == len(token)
    assert str(err).split("\n")[1] == "  " + spec
    assert "\n" not in err.one_line() and f"column {err.column + 1}" in err.one_line()


def test_an_empty_layer_points_at_the_arrow_before_it():
    with pytest.raises(SpecTokenError, match="missing layer after '->'") as info:
        build("Input(8x8) ->  -> FC(2)")
    assert caret_column(info.value) == 11
    with pytest.raises(SpecTokenError, match="missing layer before '->'") as info:
        build(" -> FC(2)")
    assert caret_column(info.value) == 1


def test_shape_errors_name_the_layer():
    with pytest.raises(SpecError) as info:
        build("Input(10x10) -> Conv(5x5,6) -> Pool -> Conv(5x5,16) -> Pool -> FC(10)")
    assert info.value.problem == "Conv(5x5,16) at position 4: input 3x3 is smaller than the 5x5 kernel"
    with pytest.raises(
        SpecError, match=r"input 6x6 \(padded by 1x1\) is smaller than the 5x5 kernel at dilation 2"
    ):
        build("Input(6x6) -> Conv(5x5,2,p=1,d=2)")
    with pytest.raises(
        SpecError, match=r"MaxPool\(3\) at position 3: input 2x2 is smaller than the 3x3 window"
    ):
        build("Input(4x4) -> Conv(3x3,2) -> MaxPool(3)")
    with pytest.raises(SpecError, match="would exceed 1,000,000,000 parameters"):
        build("Input(3x1000x1000) -> FC(1000)")


def test_empty_and_non_string_specs():
    with pytest.raises(SpecError, match="empty spec"):
        build("  ")
    with pytest.raises(SpecError, match="a spec is a string"):
        build(None)  # type: ignore[arg-type]


VALID = [
    LENET,
    "Input(3x16x16) -> Conv(3x3,8,s=2,p=same) -> BN -> DWConv(3x3,p=1) -> MaxPool(3,2,p=1) -> GAP -> FC(5)",
    "Input(2x12x12) -> Conv(3,4,d=2,g=2) -> AvgPool(2) -> Dropout(0.5) -> FC(6) -> BN -> Tanh -> FC(2)",
    "Input(1x12x12) -> Conv(1x1,4) -> GELU -> Conv(3x3,4,p=1) -> SiLU -> LeakyReLU(0.1) -> Pool -> FC(3)",
]
GRAMMAR_CHARS = "()->,=x0123456789 ConvPolFCIpuGABNRLDdsgpame"


def spec_outcome(text: str) -> nn.Module | SpecError:
    """The model ``text`` builds, or the SpecError it raises; any other exception propagates (and fails)."""
    # A small parameter cap keeps mutated sizes (FC(8) -> FC(8999)) from allocating much.
    with mock.patch.object(spec_module, "MAX_PARAMS", 2_000_000):
        try:
            return build(text)
        except SpecError as err:
            return err
        except RecursionError:  # pragma: no cover - the failure we look for
            pytest.fail(f"RecursionError for {text!r}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60) | st.text(alphabet=GRAMMAR_CHARS, max_size=80))
def test_fuzz_random_text_raises_only_spec_errors(text):
    outcome = spec_outcome(text)
    assert isinstance(outcome, nn.Module) or str(outcome), f"SpecError without a message for {text!r}"


@st.composite
def mutated_specs(draw) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        char = draw(st.sampled_from(GRAMMAR_CHARS) | st.characters())
        if op == "insert":
            text = text[:i] + char + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        elif op == "replace":
            text = text[:i] + char + text[i + 1 :]
        else:
            j = draw(st.integers(i, min(len(text), i + 12)))
            text = text[:j] + text[i:j] + text[j:]
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_fuzz_mutated_specs_raise_only_spec_errors(text):
    outcome = spec_outcome(text)
    assert isinstance(outcome, nn.Module) or str(outcome), f"SpecError without a message for {text!r}"


@st.composite
def conv_stacks(draw) -> tuple[str, tuple[int, int, int]]:
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 20)), draw(st.integers(1, 20))
    layers = [f"Input({c}x{h}x{w})"]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "dwconv", "maxpool", "avgpool", "bn"]))
        k, s = draw(st.integers(1, 5)), draw(st.integers(1, 3))
        if kind == "conv":
            p = draw(st.sampled_from(["valid", "same", "1", "2"]))
            layers.append(f"Conv({k}x{k},{draw(st.integers(1, 4))},s={s},p={p},d={draw(st.integers(1, 2))})")
        elif kind == "dwconv":
            layers.append(f"DWConv({k},s={s},p={draw(st.integers(0, 2))})")
        elif kind == "bn":
            layers.append("BN")
        else:
            layers.append(
                f"{'MaxPool' if kind == 'maxpool' else 'AvgPool'}({k},{s},p={draw(st.integers(0, k // 2))})"
            )
    if draw(st.booleans()):
        layers.append(f"FC({draw(st.integers(1, 5))})")
    return " -> ".join(layers), (c, h, w)


@settings(max_examples=80, deadline=None)
@given(conv_stacks())
def test_a_spec_that_builds_runs_on_its_input(case):
    # The planned shapes size every FC; a wrong plan would make torch fail or give another output shape.
    text, size = case
    try:
        net = build(text)
    except SpecError as err:
        assert re.search(r"smaller than the|odd kernel span", err.problem), err.problem
        return
    out = net.eval()(torch.zeros(2, *size))
    last = text.rsplit("->", 1)[-1].strip()
    if last.startswith("FC("):
        assert out.shape == (2, int(last[3:-1]))
    else:
        assert out.ndim == 4 and out.shape[1] == net.num_features
