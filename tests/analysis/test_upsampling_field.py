"""Receptive field through upsampling, transposed convs, resizes and offsets, against a gradient oracle.

The oracle: a linear network (avg pools, no activations, positive weights, float64) in which output unit
``o`` depends on input pixel ``i`` exactly when ``d out[o] / d in[i] != 0``. For every unit of a central
stretch of the output longer than the pattern's period, the width of that set along W is measured; the
receptive field ``analyze`` reports must be the widest, and its jump the mean step between units.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.analysis import analyze
from cnnkit.analysis.field import identity_reach, read, resize_taps

SIZE = 96


def positive(model: nn.Module) -> nn.Module:
    """Weights ``1/fan_in`` (every tap counts), biases zero, float64, eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.full_like(p, 1.0 / max(p[0].numel(), 1)) if p.ndim > 1 else torch.zeros_like(p))
    return model.double().eval()


def unit_widths(model: nn.Module, channels: int = 1, size: int = SIZE, units: int = 16) -> list[int]:
    """Widths (input columns with non-zero gradient) of ``units`` neighbouring output units mid-tensor."""
    net = positive(model)
    x = torch.rand(1, channels, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    y = net(x)
    h, w = y.shape[2:]
    widths = []
    for col in range(w // 2 - units // 2, w // 2 + units // 2):
        (grad,) = torch.autograd.grad(y[0, :, h // 2, col].sum(), x, retain_graph=True)
        cols = torch.nonzero(grad[0].abs().sum(dim=(0, 1))).flatten()
        assert 0 < cols.min() and cols.max() < size - 1, "the field touches the border: use a larger input"
        widths.append(int(cols.max() - cols.min() + 1))
    return widths


def up(mode: str) -> nn.Module:
    """A 2x upsampling: ``nn.Upsample`` of ``mode``, or a transposed conv ``"tconv4"`` (4x4, stride 2,
    padding 1) / ``"tconv2"`` (2x2, stride 2)."""
    if mode == "tconv4":
        return nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1)
    if mode == "tconv2":
        return nn.ConvTranspose2d(1, 1, 2, stride=2)
    return nn.Upsample(scale_factor=2, mode=mode)


def conv3() -> nn.Module:
    return nn.Conv2d(1, 1, 3, padding=1)


def check(model: nn.Module, channels: int = 1, size: int = SIZE) -> tuple[int | str, list[int]]:
    """``analyze``'s rf and jump against the oracle; returns the rf and the unit widths."""
    report = analyze(model, (1, channels, size, size))
    widths = unit_widths(model, channels, size)
    assert report.rf == max(widths)
    return report.rf, widths


def test_two_pools_then_two_upsamplings_report_the_widest_unit():
    # the defect: widest unit 12, narrowest 8; the old rule rf + jump_in per bilinear upsampling said 10
    model = nn.Sequential(nn.AvgPool2d(2), nn.AvgPool2d(2), up("bilinear"), up("bilinear"))
    rf, widths = check(model)
    assert rf == 12 and min(widths) == 8
    assert analyze(model, (1, 1, SIZE, SIZE)).jump == 1
    max_pools = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(2), up("bilinear"), up("bilinear"))
    assert analyze(max_pools, (1, 1, SIZE, SIZE)).rf == 12


CASCADES = {
    # mode: (rf with nothing between the upsamplings, rf with a 3x3 conv between)
    "bilinear": (12, 16),
    "nearest": (4, 8),
    "bicubic": (24, 28),
    "tconv4": (12, 16),
    "tconv2": (4, 8),
}


@pytest.mark.parametrize("between", [False, True], ids=["adjacent", "conv_between"])
@pytest.mark.parametrize("mode", sorted(CASCADES))
def test_cascaded_upsampling_matches_the_widest_unit(mode, between):
    middle = [conv3()] if between else []
    model = nn.Sequential(nn.AvgPool2d(2), nn.AvgPool2d(2), up(mode), *middle, up(mode))
    rf, _ = check(model)
    assert rf == CASCADES[mode][between]


@pytest.mark.parametrize(
    ("mode", "expected"), [("bilinear", 54), ("tconv4", 54), ("nearest", 38), ("tconv2", 38)]
)
def test_encoder_then_two_upsamplings(mode, expected):
    # the old rule said 50 for bilinear and 4x4 transposed convs: it averaged the 54- and 46-wide units
    encoder = [conv3(), nn.AvgPool2d(2), conv3(), nn.AvgPool2d(2), conv3(), nn.AvgPool2d(2), conv3()]
    rf, _ = check(nn.Sequential(*encoder, up(mode), up(mode)))
    assert rf == expected


def test_decoder_with_convs_between_upsamplings_is_unchanged():
    encoder = [conv3(), nn.AvgPool2d(2), conv3(), nn.AvgPool2d(2), conv3(), nn.AvgPool2d(2), conv3()]
    decoder = [up("bilinear"), conv3(), up("bilinear"), conv3()]
    rf, widths = check(nn.Sequential(*encoder, *decoder))
    assert rf == 62 and min(widths) == 62


@pytest.mark.parametrize(("padding", "narrowest"), [(0, 12), (1, 8)])
def test_stride_after_upsampling_picks_units_by_padding(padding, narrowest):
    # a 2x2 stride-2 conv after two bilinear upsamplings reads unit pairs (4k, 4k+1) or (4k-1, 4k):
    # the padding decides which units it keeps; both end 12 wide at the widest (the old rule said 11)
    model = nn.Sequential(
        nn.AvgPool2d(2), nn.AvgPool2d(2), up("bilinear"), up("bilinear"), nn.Conv2d(1, 1, 2, 2, padding)
    )
    rf, widths = check(model)
    assert rf == 12 and min(widths) == narrowest
    assert analyze(model, (1, 1, SIZE, SIZE)).jump == 2


@pytest.mark.parametrize(
    ("name", "build", "expected_rf", "expected_jump"),
    [
        (
            "x4_then_x2_bilinear",
            lambda: nn.Sequential(
                nn.AvgPool2d(4), nn.Upsample(scale_factor=4, mode="bilinear"), up("bilinear")
            ),
            12,
            0.5,
        ),
        (
            "align_corners",
            lambda: nn.Sequential(
                nn.AvgPool2d(2),
                nn.AvgPool2d(2),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                up("bilinear"),
            ),
            12,
            None,
        ),
        (
            "pixel_shuffle",
            lambda: nn.Sequential(
                nn.AvgPool2d(2), nn.AvgPool2d(2), nn.Conv2d(1, 4, 1), nn.PixelShuffle(2), up("bilinear")
            ),
            8,
            1,
        ),
        (
            "dilated_transposed",
            lambda: nn.Sequential(nn.AvgPool2d(2), nn.ConvTranspose2d(1, 1, 3, 2, dilation=2), up("tconv4")),
            6,
            0.5,
        ),
        (
            "adaptive_bins_after_upsampling",
            lambda: nn.Sequential(nn.AvgPool2d(2), up("bilinear"), nn.AdaptiveAvgPool2d(35), up("bilinear")),
            10,
            None,
        ),
    ],
)
def test_resizes_match_the_widest_unit(name, build, expected_rf, expected_jump):
    rf, _ = check(build())
    assert rf == expected_rf
    if expected_jump is not None:
        assert analyze(build(), (1, 1, SIZE, SIZE)).jump == expected_jump


class AntialiasedResize(nn.Module):
    """A 3x3 conv, then ``F.interpolate`` to ``size`` with ``antialias`` (the kernel stretches when shrinking)."""

    def __init__(self, size: int, mode: str) -> None:
        super().__init__()
        self.conv = conv3()
        self.size, self.mode = size, mode

    def forward(self, x):
        return F.interpolate(self.conv(x), size=self.size, mode=self.mode, antialias=True)


@pytest.mark.parametrize(
    ("size", "mode", "expected"),
    [(48, "bilinear", 6), (24, "bilinear", 10), (48, "bicubic", 10), (37, "bilinear", 8)],
)
def test_antialiased_shrinking_reads_the_stretched_kernel(size, mode, expected):
    # without antialias a 2x bilinear shrink reads 2 pixels per output (rf 4 after the conv); with it, 4
    rf, _ = check(AntialiasedResize(size, mode))
    assert rf == expected


class SpaceToDepth(nn.Module):
    """YOLOv5's Focus: the four pixel phases side by side in channels (slices that start at 0 and 1)."""

    def forward(self, x):
        return torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


class ShiftedSum(nn.Module):
    """``x`` plus ``x`` moved 2 pixels right and down by padding and cropping."""

    def forward(self, x):
        return x + F.pad(x, (2, 0, 2, 0))[..., :-2, :-2]


def test_slice_starts_and_padding_move_the_units():
    # the old rule ignored where a slice starts or a pad puts the pixels: it said 1 for both
    report = analyze(SpaceToDepth(), (1, 1, 16, 16))
    assert (report.rf, report.jump) == (2, 2)
    assert max(unit_widths(SpaceToDepth(), size=16, units=4)) == 2
    report = analyze(ShiftedSum(), (1, 1, 16, 16))
    assert report.rf == 3 == max(unit_widths(ShiftedSum(), size=16, units=4))


def test_read_tracks_each_phase():
    # bilinear 2x: output 2m reads inputs m-1, m; output 2m+1 reads m, m+1
    assert resize_taps(Fraction(1, 2), "bilinear", False) == (2, 1, [-1, 0], [0, 1])
    after_pools = read(identity_reach(), 1, 4, [0], [3])  # two 2x2 pools: unit o sees 4o .. 4o+3
    once = read(after_pools, 2, 1, [-1, 0], [0, 1])
    assert once.spans == ((-4, 3), (0, 7)) and once.jump == 2
    twice = read(once, 2, 1, [-1, 0], [0, 1])
    assert [last - first + 1 for first, last in twice.spans] == [8, 12, 12, 8]
    assert (twice.rf, twice.jump) == (12, 1)
