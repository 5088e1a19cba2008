"""Colour transforms against torchvision.transforms.v2.functional with the same per-sample factors."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cnnkit.augment import ColorJitter, Normalize
from cnnkit.augment.color import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation
from cnnkit.errors import ConfigError

TV_OPS = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]


@pytest.fixture
def images(generator):
    return torch.randint(0, 256, (6, 3, 17, 23), dtype=torch.uint8, generator=generator)


def test_hue_is_exact_hsv_rotation(images):
    x = images.float() / 255
    shifts = torch.tensor([-0.5, -0.3, -0.05, 0.0, 0.2, 0.5])
    y = adjust_hue(x, shifts)
    for i, s in enumerate(shifts.tolist()):
        assert (y[i] - TF.adjust_hue(x[i], s)).abs().max() < 1e-5


def test_hue_leaves_greys_and_one_channel_images_alone():
    grey = torch.linspace(0, 1, 30).view(1, 1, 5, 6).expand(2, 3, 5, 6)
    assert torch.allclose(adjust_hue(grey, torch.tensor([0.25, -0.4])), grey)
    one = torch.rand(2, 1, 4, 4)
    assert torch.equal(adjust_hue(one, torch.tensor([0.1, 0.2])), one)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ],
)
def test_blend_ops_match_torchvision(images, ours, theirs):
    factors = torch.tensor([0.0, 0.4, 0.9, 1.0, 1.3, 1.8])
    x = images.float() / 255
    y = ours(x, factors, 1.0)
    y8 = ours(images.float(), factors, 255.0).round()
    for i, f in enumerate(factors.tolist()):
        assert (y[i] - theirs(x[i], f)).abs().max() < 1e-5
        # torchvision truncates uint8 results (and the grey mean for contrast), we round: at most one level.
        assert (y8[i] - theirs(images[i], f).float()).abs().max() <= 1


def test_color_jitter_matches_torchvision_in_the_sampled_order(images, generator):
    t = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    params = t.sample(images, generator)
    x = images.float() / 255
    y, _ = t.apply(x, None, params)
    for i in range(images.shape[0]):
        ref = x[i]
        for op in params["order"][i].tolist():
            ref = TV_OPS[op](ref, float(params["factors"][i, op]))
        assert (y[i] - ref).abs().max() < 1e-5


def test_color_jitter_keeps_uint8_and_draws_per_sample(images, generator):
    t = ColorJitter(0.4, 0.4, 0.4, 0.1)
    y, labels = t(images, torch.arange(6), generator)
    assert y.dtype == torch.uint8 and labels.tolist() == list(range(6))
    params = t.sample(images, torch.Generator().manual_seed(1))
    assert len(set(params["factors"][:, 3].tolist())) == 6
    assert len({tuple(o) for o in params["order"].tolist()}) > 1
    lo, hi = params["factors"][:, :3].min(), params["factors"][:, :3].max()
    assert 0.6 <= lo and hi <= 1.4 and params["factors"][:, 3].abs().max() <= 0.1


def test_color_jitter_ranges_follow_torchvision():
    t = ColorJitter(brightness=1.5, contrast=(0.2, 0.5), hue=0.0)
    assert t.brightness == (0.0, 2.5) and t.contrast == (0.2, 0.5) and t.saturation is None and t.hue is None
    with pytest.raises(ConfigError):
        ColorJitter(hue=0.7)


def test_normalize_matches_torchvision(images):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    y = Normalize(mean, std)(images)
    for i in range(images.shape[0]):
        ref = TF.normalize(images[i].float() / 255, list(mean), list(std))
        assert (y[i] - ref).abs().max() < 1e-5


def test_saturation_leaves_one_channel_images_unchanged(generator):
    grey = torch.randint(0, 256, (5, 1, 6, 7), dtype=torch.uint8, generator=generator)
    out = ColorJitter(saturation=(0.2, 1.8))(grey, generator=generator)
    assert torch.equal(out, grey)
