import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnkit.tasks.segmentation.metrics import (
    SegmentationEvaluator,
    confusion_matrix,
    dice,
    miou,
    per_class_dice,
    per_class_iou,
    pixel_accuracy,
)

# rows: true class, columns: prediction; class 3 occurs in neither
HAND = torch.tensor([[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_hand_computed_matrix():
    # class 0: TP 3, FP 1, FN 1; class 1: TP 2, FP 1, FN 1; class 2: TP 0, FP 1, FN 1
    iou = per_class_iou(HAND)
    torch.testing.assert_close(iou[:3], torch.tensor([3 / 5, 2 / 4, 0.0], dtype=torch.float64))
    assert math.isnan(iou[3].item())
    d = per_class_dice(HAND)
    torch.testing.assert_close(d[:3], torch.tensor([6 / 8, 4 / 6, 0.0], dtype=torch.float64))
    assert math.isnan(d[3].item())
    assert miou(HAND) == pytest.approx((3 / 5 + 2 / 4 + 0) / 3)
    assert dice(HAND) == pytest.approx((6 / 8 + 4 / 6 + 0) / 3)
    assert pixel_accuracy(HAND) == pytest.approx(5 / 8)


def test_matrix_from_masks_with_ignored_pixels():
    target = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 2], [1, 2, 0, 0]])
    m = confusion_matrix(pred, target, 3, ignore_index=255)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # IoU: class 0: 1/(1+1+1), class 1: 2/(2+1+0), class 2: 1/(1+0+1)
    assert miou(m) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(m) == pytest.approx(4 / 6)


def test_empty_matrix_gives_nan_and_bad_shape_raises():
    assert math.isnan(miou(torch.zeros(3, 3, dtype=torch.int64)))
    with pytest.raises(ValueError, match="square"):
        miou(torch.zeros(2, 3))


def numpy_metrics(pred: np.ndarray, target: np.ndarray, k: int, ignore: int):
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    ious, dices = [], []
    for c in range(k):
        p, t = pred == c, target == c
        inter, union = np.logical_and(p, t).sum(), np.logical_or(p, t).sum()
        if union:
            ious.append(inter / union)
            dices.append(2 * inter / (p.sum() + t.sum()))
    return np.mean(ious), np.mean(dices), (pred == target).mean()


@pytest.mark.parametrize("seed", range(4))
def test_against_numpy_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    k = 6
    target = rng.integers(0, k - 1, size=(3, 11, 13))  # class k - 1 never occurs in the targets
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, k - 2 + seed % 2, size=target.shape)  # and sometimes not in predictions either
    m = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), k, ignore_index=255)
    expected_iou, expected_dice, expected_acc = numpy_metrics(pred, target, k, 255)
    assert miou(m) == pytest.approx(expected_iou)
    assert dice(m) == pytest.approx(expected_dice)
    assert pixel_accuracy(m) == pytest.approx(expected_acc)


def random_batch(g, b=2, k=4, h=5, w=7):
    logits = torch.randn(b, k, h, w, generator=g)
    masks = torch.randint(0, k, (b, h, w), generator=g)
    masks[:, 0, 0] = 255
    return logits, masks


def test_evaluator_accumulates_batches_like_one_batch(generator):
    (l1, m1), (l2, m2) = random_batch(generator), random_batch(generator, b=3)
    split, whole = SegmentationEvaluator(4), SegmentationEvaluator(4)
    split.update(l1, m1)
    split.update(l2, m2)
    whole.update(torch.cat([l1, l2]), torch.cat([m1, m2]))
    a, b = split.compute(), whole.compute()
    assert a["confusion"] == b["confusion"]
    assert a["miou"] == pytest.approx(b["miou"])
    assert a["loss"] == pytest.approx(b["loss"])
    assert a["samples"] == 5 and a["pixels"] == 5 * 34
    expected_loss = F.cross_entropy(torch.cat([l1, l2]), torch.cat([m1, m2]), ignore_index=255).item()
    assert a["loss"] == pytest.approx(expected_loss)
    expected = miou(confusion_matrix(torch.cat([l1, l2]).argmax(1), torch.cat([m1, m2]), 4, 255))
    assert a["miou"] == pytest.approx(expected)


def test_reduce_sums_the_state_of_every_rank(generator):
    (l1, m1), (l2, m2) = random_batch(generator), random_batch(generator)
    rank0, rank1, single = SegmentationEvaluator(4), SegmentationEvaluator(4), SegmentationEvaluator(4)
    rank0.update(l1, m1)
    rank1.update(l2, m2)
    single.update(l1, m1)
    single.update(l2, m2)
    other = iter([rank1.confusion, rank1.totals])
    rank0.reduce(lambda t: t.add_(next(other)))
    a, b = rank0.compute(), single.compute()
    assert a["confusion"] == b["confusion"] and a["samples"] == 4
    assert a["miou"] == pytest.approx(b["miou"]) and a["loss"] == pytest.approx(b["loss"])


def test_evaluator_reports_absent_classes_as_nan_and_leaves_them_out():
    ev = SegmentationEvaluator(3)
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = 5.0  # predicts [0, 1]
    ev.update(logits, torch.tensor([[[0, 1]]]))
    out = ev.compute()
    assert out["per_class_iou"][:2] == [1.0, 1.0] and math.isnan(out["per_class_iou"][2])
    assert out["miou"] == 1.0 and out["dice"] == 1.0 and out["pixel_accuracy"] == 1.0
