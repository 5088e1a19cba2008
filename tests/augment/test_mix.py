"""MixUp and CutMix: soft labels sum to one and weigh what was actually mixed or pasted."""

import pytest
import torch

from cnnkit.augment import CutMix, MixUp
from cnnkit.augment.base import sample_beta
from cnnkit.errors import ConfigError, DataError


def _distinct_images(b=8, h=12, w=16):
    """Sample i is the constant image i + 1, so every pixel says where it came from."""
    return (torch.arange(b, dtype=torch.uint8) + 1).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()


def test_mixup_blends_images_and_labels_with_the_same_lambda(generator):
    x = torch.rand(8, 3, 5, 5, generator=generator)
    labels = torch.arange(8) % 4
    t = MixUp(alpha=0.4, num_classes=4)
    params = t.sample(x, generator)
    y, soft = t.apply(x, labels, params)
    lam, j = params["lam"].float(), params["partner"]
    torch.testing.assert_close(y, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[j])
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    for i in range(8):
        expect = torch.zeros(4)
        expect[labels[i]] += lam[i]
        expect[labels[j[i]]] += 1 - lam[i]
        torch.testing.assert_close(soft[i], expect)
    assert len(set(params["lam"].tolist())) == 8


def test_cutmix_label_weight_is_the_pasted_area(generator):
    x = _distinct_images()
    t = CutMix(alpha=1.0, num_classes=8)
    params = t.sample(x, generator)
    y, soft = t.apply(x, torch.arange(8), params)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    j = params["partner"]
    for i in range(8):
        own = float((y[i, 0] == i + 1).float().mean())
        if j[i] == i:
            assert soft[i, i] == 1.0
            continue
        torch.testing.assert_close(soft[i, i], torch.tensor(own))
        torch.testing.assert_close(soft[i, j[i]], torch.tensor(1 - own))
    assert y.dtype == torch.uint8


def test_mix_soft_labels_chain(generator):
    x = torch.rand(6, 3, 8, 8)
    _, soft = MixUp(num_classes=3)(x, torch.arange(6) % 3, generator)
    _, again = CutMix()(x, soft, generator)
    torch.testing.assert_close(again.sum(1), torch.ones(6))


def test_mixup_detection_concatenates_both_samples_objects(generator):
    x = torch.rand(2, 3, 10, 10)
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[5.0, 5.0, 9.0, 9.0], [1.0, 1.0, 3.0, 3.0]]), "labels": torch.tensor([2, 3])},
    ]
    t = MixUp()
    _, out = t.apply(
        x, targets, {"partner": torch.tensor([1, 0]), "lam": torch.tensor([0.3, 0.6], dtype=torch.float64)}
    )
    assert out[0]["labels"].tolist() == [1, 2, 3] and out[1]["labels"].tolist() == [2, 3, 1]
    with pytest.raises(DataError):
        t.apply(
            x,
            [{"mask": torch.zeros(10, 10)}] * 2,
            {"partner": torch.tensor([1, 0]), "lam": torch.tensor([0.5, 0.5])},
        )


def test_cutmix_detection_cuts_partner_boxes_to_the_patch():
    x = _distinct_images(2, 10, 10)
    targets = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 3.0, 3.0], [6.0, 6.0, 9.0, 9.0]]),
            "labels": torch.tensor([1, 2]),
            "mask": torch.ones(10, 10, dtype=torch.long),
        },
        {
            "boxes": torch.tensor([[2.0, 2.0, 8.0, 8.0]]),
            "labels": torch.tensor([5]),
            "mask": torch.full((10, 10), 4),
        },
    ]
    params = {
        "partner": torch.tensor([1, 0]),
        "lam": torch.tensor([0.5, 0.5]),
        "rects": torch.tensor([[5, 5, 10, 10], [0, 0, 0, 0]]),
    }
    y, out = CutMix().apply(x, targets, params)
    assert out[0]["labels"].tolist() == [1, 5]  # own box inside the patch dropped, partner's cut to the patch
    torch.testing.assert_close(out[0]["boxes"][1], torch.tensor([5.0, 5.0, 8.0, 8.0]))
    assert int((out[0]["mask"] == 4).sum()) == 25 and int((y[0, 0] == 2).sum()) == 25
    assert out[1]["labels"].tolist() == [5]


def test_beta_sampler_matches_the_distribution():
    draws = sample_beta(0.5, 20000, torch.Generator().manual_seed(0))
    assert abs(float(draws.mean()) - 0.5) < 0.01
    assert abs(float(draws.var()) - 0.125) < 0.01  # Beta(a, a): variance 1 / (4 (2a + 1))
    draws = sample_beta(2.0, 20000, torch.Generator().manual_seed(1))
    assert abs(float(draws.var()) - 0.05) < 0.005


def test_class_indices_need_num_classes():
    with pytest.raises(ConfigError):
        MixUp()(torch.rand(2, 3, 4, 4), torch.tensor([0, 1]))
