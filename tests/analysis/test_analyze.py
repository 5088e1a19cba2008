"""Oracles for cnnkit.analyze: torchvision's published GFLOPS, empirical receptive fields, hand counts."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnkit import geometry
from cnnkit.analysis import analyze
from cnnkit.analysis.field import transposed_taps

# -- torchvision GFLOPS metadata (conv + linear MACs at 224) ---------------------------------------------

FAST_ZOO = [
    ("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
    ("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1"),
]
SLOW_ZOO = [
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    ("convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1"),
    ("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1"),
    ("densenet121", "DenseNet121_Weights.IMAGENET1K_V1"),
    ("googlenet", "GoogLeNet_Weights.IMAGENET1K_V1"),
    ("vgg11", "VGG11_Weights.IMAGENET1K_V1"),
    ("vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1"),
]


def analyze_torchvision(name: str, weights: str) -> tuple[nn.Module, object, float]:
    """``(model, analyze(model) at 224x224, the GMACs torchvision's weights metadata publishes)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet's init notice
        model = getattr(torchvision.models, name)(weights=None)
    return model, analyze(model, (1, 3, 224, 224)), torchvision.models.get_weight(weights).meta["_ops"]


@pytest.mark.parametrize(("name", "weights"), FAST_ZOO)
def test_macs_match_torchvision_metadata(name, weights):
    model, report, published_gmacs = analyze_torchvision(name, weights)
    assert report.method == "fx"
    assert report.macs / 1e9 == pytest.approx(published_gmacs, rel=0.005)
    assert report.flops == 2 * report.macs
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.rf == "global"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "weights"), SLOW_ZOO)
def test_macs_match_torchvision_metadata_large(name, weights):
    model, report, published_gmacs = analyze_torchvision(name, weights)
    assert report.macs / 1e9 == pytest.approx(published_gmacs, rel=0.005)
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.method == "fx" and report.rf == "global"


# -- empirical receptive field -------------------------------------------------------------------------


class Residual(nn.Module):
    """Stem, a strided residual block with a 1x1 strided shortcut, and a head conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.shortcut = nn.Conv2d(4, 4, 1, stride=2)
        self.head = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        x = self.relu(self.stem(x))
        x = self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x))
        return self.head(x)


class Inception(nn.Module):
    """1x1, 1x1->3x3, 1x1->5x5 and maxpool->1x1 branches concatenated, after a strided stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU())
        self.b1 = nn.Conv2d(4, 2, 1)
        self.b3 = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(4, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 5, padding=2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(4, 2, 1))

    def forward(self, x):
        x = self.stem(x)
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


def dilated_stack() -> nn.Module:
    layers = [nn.Conv2d(2, 3, 3, padding=1)]
    for d in (2, 4, 8):
        layers += [nn.ReLU(), nn.Conv2d(3, 3, 3, padding=d, dilation=d)]
    return nn.Sequential(*layers)


def plain_chain() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.GELU(),
        nn.AvgPool2d(3, stride=1),
        nn.Conv2d(4, 2, 5),
    )


class Functional(nn.Module):
    """Functional ops: F.conv2d, F.max_pool2d, F.adaptive_avg_pool2d, operator add, torch.cat.

    ``linear = True`` (set by :func:`linearised`) swaps max-pool for avg-pool and drops the ReLU.
    """

    linear = False

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.ones(4, 2, 3, 3))
        self.w2 = nn.Parameter(torch.ones(4, 4, 5, 5))

    def forward(self, x):
        x = F.conv2d(x, self.w1, padding=1)
        x = F.avg_pool2d(x, 2) if self.linear else F.max_pool2d(F.relu(x), 2)
        y = F.conv2d(x, self.w2, padding=2, dilation=1)
        x = F.adaptive_avg_pool2d(x + y, (x.shape[2] // 2, x.shape[3] // 2))
        return torch.cat([x, F.avg_pool2d(x, 3, stride=1, padding=1)], 1)


class ChannelsLastMLP(nn.Module):
    """ConvNeXt-style: depthwise 7x7, permute to channels-last, LayerNorm + Linear on C, permute back."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(2, 2, 7, padding=3, groups=2)
        self.norm = nn.LayerNorm(2)
        self.fc = nn.Linear(2, 4)
        self.out = nn.Conv2d(4, 2, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.dw(x).permute(0, 2, 3, 1)
        x = self.fc(self.norm(x)).permute(0, 3, 1, 2)
        return self.out(x)


def linearised(model: nn.Module) -> nn.Module:
    """Max-pools become avg-pools, activations identity, weights positive, biases zero, float64."""
    if hasattr(model, "linear"):
        model.linear = True
    for name, child in list(model.named_children()):
        if isinstance(child, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        elif isinstance(child, (nn.ReLU, nn.GELU)):
            setattr(model, name, nn.Identity())
        else:
            linearised(child)
    with torch.no_grad():
        for p in model.parameters(recurse=False):
            p.copy_(torch.full_like(p, 1.0 / max(p[0].numel(), 1)) if p.ndim > 1 else torch.zeros_like(p))
    if isinstance(model, nn.LayerNorm):  # normalisation statistics would spread the gradient; keep it affine
        model.forward = lambda x: x
    return model.double()


def support(model: nn.Module, size: int, unit: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) input rows/cols with non-zero gradient for the output pixel ``unit``."""
    x = torch.rand(1, 2, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    model(x)[0, :, unit[0], unit[1]].sum().backward()  # every channel: cat keeps the widest branch
    rows = torch.nonzero(x.grad[0].abs().sum(dim=(0, 2))).flatten()
    cols = torch.nonzero(x.grad[0].abs().sum(dim=(0, 1))).flatten()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


BRANCHED = {
    "residual": (Residual, 64),
    "inception": (Inception, 64),
    "dilated": (dilated_stack, 96),
    "chain": (plain_chain, 64),
    "functional": (Functional, 64),
    "channels_last_mlp": (ChannelsLastMLP, 48),
}


@pytest.mark.parametrize("kind", sorted(BRANCHED))
def test_receptive_field_matches_gradient_support(kind):
    build, size = BRANCHED[kind]
    model = build()
    report = analyze(model, (1, 2, size, size))
    net = linearised(model).eval()
    h, w = net(torch.zeros(1, 2, size, size, dtype=torch.float64)).shape[2:]
    centre = (h // 2, w // 2)
    top, bottom, left, right = support(net, size, centre)
    assert top > 0 and left > 0 and bottom < size - 1 and right < size - 1, "field touches the border"
    assert bottom - top + 1 == right - left + 1 == report.rf
    _, _, next_left, _ = support(net, size, (centre[0], centre[1] + 1))
    assert next_left - left == report.jump


def test_transposed_conv_field_is_the_widest_unit():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ConvTranspose2d(3, 3, 3, stride=2))
    report = analyze(model, (1, 2, 32, 32))
    net = linearised(model).eval()
    widths = []
    for col in (14, 15):
        _, _, left, right = support(net, 32, (15, col))
        widths.append(right - left + 1)
    assert max(widths) == report.rf
    assert report.jump == 1


def test_transposed_taps():
    # (first, last, step) of the inputs read by each of the s output phases: o = i*s + j*d - p
    assert transposed_taps(2, 2, 1, 0) == ([0, 0], [0, 0], 1)
    assert transposed_taps(4, 2, 1, 1) == ([-1, 0], [0, 1], 1)
    assert transposed_taps(3, 1, 2, 0) == ([-4], [0], 2)
    assert transposed_taps(3, 2, 1, 0) == ([-1, 0], [0, 0], 1)
    assert transposed_taps(1, 2, 1, 0) == ([0, 1], [0, 0], 1)  # odd outputs read nothing


def test_lenet_fields_follow_the_page():
    lenet = nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip
    report = analyze(lenet, (1, 1, 32, 32))
    by_name = {row.name: row for row in report.rows}
    assert (by_name["0"].rf, by_name["0"].jump) == geometry.receptive_field([(5, 1)]) == (5, 1)
    assert (by_name["2"].rf, by_name["2"].jump) == (6, 2)
    assert (by_name["3"].rf, by_name["3"].jump) == geometry.receptive_field([(5,), (2, 2), (5,)]) == (14, 2)
    assert (by_name["5"].rf, by_name["5"].jump) == (16, 4)
    assert [row.rf for row in report.rows[6:]] == ["global"] * 6
    assert report.params == 61_706 == sum(row.params for row in report.rows)


def test_global_ops_stay_global():
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
            mixed = torch.softmax(tokens @ tokens.transpose(1, 2), dim=-1) @ tokens
            local = self.conv2(x)
            return local * self.se(local), mixed

    report = analyze(Attention(), (1, 3, 12, 12))
    rf = {row.name: row.rf for row in report.rows}
    assert rf["conv"] == 3 and rf["conv2"] == 5
    assert rf["flatten"] == rf["matmul"] == rf["se.0"] == rf["mul"] == "global"
    assert report.rf == "global"
    macs = {row.name: row.macs for row in report.rows}
    assert macs["matmul"] == 144 * 144 * 8 and macs["matmul_1"] == 144 * 8 * 144


# -- parameters, fallback, hand counts -----------------------------------------------------------------


def test_shared_parameters_count_once_and_unused_ones_only_in_totals():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.unused = nn.Linear(10, 10)

        def forward(self, x):
            return self.conv(self.conv(x))

    model = Shared()
    report = analyze(model, (1, 4, 8, 8))
    assert [row.name for row in report.rows] == ["conv", "conv#2"]
    assert [row.params for row in report.rows] == [4 * 4 * 9 + 4, 0]
    assert report.params == 4 * 4 * 9 + 4 + 110 == sum(p.numel() for p in model.parameters())
    assert report.macs == 2 * 64 * 4 * 4 * 9
    assert report.rf == 5


def test_untraceable_model_falls_back_to_hooks():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(5 * 3 * 3, 2)
            self.fc.weight.requires_grad_(False)

        def forward(self, x):
            if x.sum() > 0:
                x = -x
            return self.fc(torch.flatten(self.pool(self.conv(x)), 1))

    model = Branchy().train()
    with pytest.warns(UserWarning, match="could not trace.*forward hooks"):
        report = analyze(model, (2, 3, 8, 8))
    assert model.training
    assert report.method == "hooks"
    assert report.params == 3 * 5 * 9 + 5 + 45 * 2 + 2
    assert report.trainable_params == report.params - 90
    assert [row.macs for row in report.rows] == [2 * 5 * 6 * 6 * 27, 0, 2 * 2 * 45]
    assert [(row.rf, row.jump) for row in report.rows[:2]] == [(3, 1), (4, 2)]
    assert report.rows[2].rf == "global"


def test_hand_computed_network():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 10)
    )  # fmt: skip
    report = analyze(model.train(), (2, 3, 16, 16))
    conv_out, pool_out = 2 * 8 * 16 * 16, 2 * 8 * 8 * 8
    assert [row.macs for row in report.rows] == [conv_out * 27, 0, 0, 0, 0, 2 * 10 * 512]
    assert report.macs == 110_592 + 10_240
    assert [row.activation_bytes for row in report.rows] == [4 * conv_out] * 3 + [4 * pool_out] * 2 + [80]
    assert report.activation_bytes == 57_424
    assert [row.other_ops for row in report.rows] == [0, conv_out, conv_out, pool_out * 4, 0, 0]
    assert [row.output_shape for row in report.rows][-1] == (2, 10)
    assert report.params == 3 * 8 * 9 + 8 + 16 + 5130
    assert model.training
    double = analyze(copy.deepcopy(model).double(), (2, 3, 16, 16), dtype=torch.float64)
    assert double.activation_bytes == 2 * report.activation_bytes


def test_report_renderings():
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 1000))
    report = analyze(model, (1, 1, 32, 32))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["params"] == 156 + 7000 and data["rows"][0]["output_shape"] == [1, 6, 28, 28]
    assert data["rf"] == "global" and data["method"] == "fx"
    text = str(report)
    for needle in (
        "Layer",
        "Op",
        "Output shape",
        "Params",
        "MACs",
        "RF",
        "Jump",
        "7,156",
        "1x6x28x28",
        "global",
    ):
        assert needle in text
    assert "MACs: 0.124 M" in text  # 28*28*6*25 + 6000 = 123,600
    table = report.table("t")
    assert [c.header for c in table.columns] == [
        "Layer",
        "Op",
        "Output shape",
        "Params",
        "MACs",
        "RF",
        "Jump",
    ]
    assert table.row_count == 4


def test_op_without_rule_that_changes_spatial_size_warns_and_is_global():
    class Unfold(nn.Module):
        def forward(self, x):
            return F.unfold(x, 2, stride=2)

    with pytest.warns(UserWarning, match="unfold changes a spatial size"):
        report = analyze(Unfold(), (1, 1, 8, 8))
    assert report.rf == "global" and report.rows[0].output_shape == (1, 4, 16)


class _GatedStack(nn.Module):
    """Strided conv, a squeeze-and-excitation gate, then another strided conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn(x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True))))
        return self.conv2(x)


def test_gated_maps_are_global_but_keep_counting_their_jump():
    report = analyze(_GatedStack(), (1, 3, 32, 32))
    rows = {row.name: row for row in report.rows}
    assert (rows["conv1"].rf, rows["conv1"].jump) == (3, 2)
    assert (rows["bn"].rf, rows["bn"].jump) == ("global", 2)
    assert (rows["conv2"].rf, rows["conv2"].jump) == ("global", 4)
    assert (report.rf, report.jump) == ("global", 4)
