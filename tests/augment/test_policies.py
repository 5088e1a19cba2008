"""RandAugment / AutoAugment: each operation against torchvision, per-sample draws, the ImageNet policy."""

import math

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from cnnkit.augment import IMAGENET_POLICY, AutoAugment, RandAugment
from cnnkit.augment.policies import (
    OPS,
    adjust_sharpness,
    apply_op,
    autocontrast,
    equalize,
    posterize,
    solarize,
)


@pytest.fixture
def images(generator):
    x = torch.randint(0, 256, (4, 3, 20, 24), dtype=torch.uint8, generator=generator)
    x[1] = x[1] // 3 + 70  # low contrast, so equalize and autocontrast have work to do
    return x


def test_pixel_ops_match_torchvision(images):
    f = images.float()
    bits = torch.tensor([1.0, 3.0, 6.0, 8.0])
    thresholds = torch.tensor([0.0, 64.0, 128.0, 250.0])
    sharp = torch.tensor([0.1, 0.6, 1.4, 1.9])
    for i in range(4):
        assert torch.equal(equalize(f, 255.0)[i], TF.equalize(images[i]).float())
        assert torch.equal(posterize(f, bits, 255.0)[i], TF.posterize(images[i], int(bits[i])).float())
        assert torch.equal(
            solarize(f, thresholds, 255.0)[i], TF.solarize(images[i], float(thresholds[i])).float()
        )
        assert (autocontrast(f, 255.0)[i] - TF.autocontrast(images[i]).float()).abs().max() <= 1
        ref = TF.adjust_sharpness(images[i].float() / 255, float(sharp[i]))
        assert (adjust_sharpness(f / 255, sharp, 1.0)[i] - ref).abs().max() < 1e-5
        ref = TF.posterize(images[i].float() / 255, int(bits[i]))
        assert (posterize(f / 255, bits, 1.0)[i] - ref).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_ops_match_torchvision_affine(images, name):
    # magnitudes chosen so that no nearest-neighbour sample falls exactly half-way between pixels
    mags = torch.tensor([0.27, -0.13, 7.6, -3.3], dtype=torch.float64)
    if name.startswith("Shear"):
        mags = torch.tensor([0.27, -0.13, 0.09, -0.29], dtype=torch.float64)
    y, _ = apply_op(name, images.float(), mags, 255.0, None, "nearest", None)
    for i, m in enumerate(mags.tolist()):
        if name == "Rotate":
            ref = TF.rotate(images[i], m)
        else:
            shear = math.degrees(math.atan(m))
            kw = {
                "ShearX": {"shear": [shear, 0.0], "translate": [0, 0], "center": [0, 0]},
                "ShearY": {"shear": [0.0, shear], "translate": [0, 0], "center": [0, 0]},
                "TranslateX": {"shear": [0.0, 0.0], "translate": [int(m), 0]},
                "TranslateY": {"shear": [0.0, 0.0], "translate": [0, int(m)]},
            }[name]
            ref = TF.affine(images[i], angle=0.0, scale=1.0, **kw)
        assert (y[i] != ref.float()).float().mean() < 0.005


def test_imagenet_policy_is_the_published_one():
    ours = [tuple((op, p, m) for op, p, m in sub) for sub in IMAGENET_POLICY]
    theirs = [tuple(sub) for sub in T.AutoAugment()._get_policies(T.AutoAugmentPolicy.IMAGENET)]
    assert ours == theirs


def test_rand_augment_draws_ops_per_sample_and_replays(images):
    t = RandAugment(num_ops=2, magnitude=9)
    big = images.repeat(8, 1, 1, 1)
    params = t.sample(big, torch.Generator().manual_seed(0))
    assert params["ops"].shape == (32, 2) and len(params["ops"].unique()) > 6
    assert set(params["ops"].flatten().tolist()) <= {OPS.index(n) for n in OPS if n != "Invert"}
    rotations = params["magnitudes"][params["ops"] == OPS.index("Rotate")]
    assert torch.allclose(rotations.abs(), torch.tensor(9 * 30.0 / 30, dtype=torch.float64))
    a = t(big, generator=torch.Generator().manual_seed(4))
    b = t(big, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.dtype == torch.uint8
    assert not torch.equal(a[:4], a[4:8])


def test_policy_geometric_ops_move_boxes(images):
    target = [{"boxes": torch.tensor([[4.0, 4.0, 10.0, 10.0]]), "labels": torch.tensor([1])}] * 4
    ops = torch.full((4, 1), OPS.index("TranslateX"))
    params = {"ops": ops, "magnitudes": torch.tensor([[3.0], [-2.0], [0.0], [5.5]], dtype=torch.float64)}
    _, out = RandAugment(num_ops=1).apply(images, target, params)
    assert [float(t["boxes"][0, 0]) for t in out] == [7.0, 2.0, 4.0, 9.0]


def test_auto_augment_applies_sub_policies_with_their_probabilities(images):
    t = AutoAugment()
    big = images.repeat(50, 1, 1, 1)
    params = t.sample(big, torch.Generator().manual_seed(0))
    applied = params["ops"] != OPS.index("Identity")
    probs = torch.tensor([[step[1] for step in IMAGENET_POLICY[s]] for s in params["policy"].tolist()])
    assert abs(float(applied.float().mean()) - float(probs.mean())) < 0.05
    assert (applied[probs == 0] == 0).all()
    y = t(images, generator=torch.Generator().manual_seed(1))
    assert y.dtype == torch.uint8 and y.shape == images.shape
