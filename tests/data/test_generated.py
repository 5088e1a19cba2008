"""Generated sets: determinism by (split, seed, index), tight boxes, bounded overlap, consistent masks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.ops import box_iou

from cnnkit.data import (
    MNIST5k,
    MNISTDetection,
    MNISTSegmentation,
    Shapes,
    collate_detection,
)
from cnnkit.errors import DataError


def assert_items_equal(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key


@pytest.mark.parametrize("cls", [MNISTDetection, MNISTSegmentation, Shapes])
def test_same_seed_same_item_in_any_order_different_seed_differs(cls):
    first = cls("train", size=20, seed=4)
    again = cls("train", size=20, seed=4)
    assert_items_equal(first[17], again[17])  # read alone, without items 0..16
    assert_items_equal(first[-3], again[17])
    assert not torch.equal(cls("train", size=20, seed=5)[17][0], first[17][0])
    assert not torch.equal(cls("val", size=20, seed=4)[17][0], first[17][0])
    with pytest.raises(IndexError):
        first[20]


def test_item_pinned():
    image, target = MNISTDetection("train", size=1, seed=0)[0]
    assert image.shape == (1, 128, 128) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [6, 0, 9, 6]
    assert target["boxes"].tolist() == [
        [36, 4, 48, 26],
        [1, 59, 30, 96],
        [94, 72, 126, 102],
        [54, 24, 83, 64],
    ]


def test_digits_come_from_the_matching_mnist5k_split():
    train, val = MNISTDetection("train", size=1), MNISTDetection("val", size=1)
    assert torch.equal(train._source_images, MNIST5k("train", pad_to_32=False).images[:, 0])
    assert torch.equal(val._source_images, MNIST5k("test", pad_to_32=False).images[:, 0])


def test_boxes_are_tight_and_overlap_is_bounded():
    data = MNISTDetection("val", size=40, image_size=96, digits=(2, 5), seed=2)
    counts = []
    for i in range(len(data)):
        image, target = data[i]
        boxes = target["boxes"]
        counts.append(len(boxes))
        assert target["labels"].min() >= 0 and target["labels"].max() <= 9
        assert boxes.dtype == torch.float32 and (boxes[:, 2:] > boxes[:, :2]).all()
        assert boxes.min() >= 0 and boxes.max() <= 96
        for x1, y1, x2, y2 in boxes.int().tolist():
            inside = image[0, y1:y2, x1:x2]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= 0.3
    assert max(counts) == 5 and min(counts) >= 2 and sum(counts) / len(counts) > 3


def test_segmentation_masks_agree_with_boxes_and_labels():
    det = MNISTDetection("train", size=10, seed=7)
    seg = MNISTSegmentation("train", size=10, seed=7, threshold=100)
    for i in range(len(seg)):
        image, target = seg[i]
        assert_items_equal((image, {k: target[k] for k in ("labels", "boxes")}), det[i])
        masks, mask = target["masks"], target["mask"]
        assert masks.dtype == torch.uint8 and mask.dtype == torch.int64
        assert masks.shape == (len(target["labels"]), 128, 128)
        assert torch.equal(mask > 0, image[0] >= 100)
        for j, (x1, y1, x2, y2) in enumerate(target["boxes"].int().tolist()):
            assert int(masks[j].sum()) > 0 and int(masks[j].sum()) == int(masks[j, y1:y2, x1:x2].sum())
            owned = (mask == target["labels"][j] + 1) & (masks[j] == 1)
            assert int(owned.sum()) > 0
        assert set(mask.unique().tolist()) <= {0, *(target["labels"] + 1).tolist()}


def test_shapes_masks_boxes_and_classes():
    data = Shapes("train", size=30, seed=1)
    labels = []
    for i in range(len(data)):
        image, target = data[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        masks = target["masks"]
        assert int(masks.sum(0).max()) <= 1  # shapes never overlap
        for j, (x1, y1, x2, y2) in enumerate(target["boxes"].int().tolist()):
            rows, cols = masks[j].any(1).nonzero(), masks[j].any(0).nonzero()
            assert (x1, y1, x2, y2) == (
                int(cols.min()),
                int(rows.min()),
                int(cols.max()) + 1,
                int(rows.max()) + 1,
            )
        assert torch.equal(target["mask"], (masks * (target["labels"] + 1)[:, None, None]).sum(0))
        labels += target["labels"].tolist()
    assert set(labels) == {0, 1, 2}


def test_bad_arguments():
    with pytest.raises(DataError, match="unknown split 'test'"):
        MNISTDetection("test")
    with pytest.raises(DataError, match=r"digits must be a \(min, max\) pair"):
        MNISTDetection(digits=(3, 1))


def test_collate_with_dataloader():
    loader = DataLoader(
        MNISTDetection(size=5, image_size=32, scale=(0.5, 1.0)), batch_size=3, collate_fn=collate_detection
    )
    images, targets = next(iter(loader))
    assert images.shape == (3, 1, 32, 32) and images.dtype == torch.uint8
    assert len(targets) == 3 and all(t["boxes"].shape[1] == 4 for t in targets)
    mixed = [(torch.zeros(1, 4, 4, dtype=torch.uint8), {}), (torch.zeros(1, 5, 4, dtype=torch.uint8), {})]
    images, targets = collate_detection(mixed)
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(1, 4, 4), (1, 5, 4)]
    # Classification items (image, int label) need no collate of their own: torch's default stacks them.
    images, labels = default_collate([MNIST5k("test")[i] for i in range(4)])
    assert images.shape == (4, 1, 32, 32) and labels.dtype == torch.int64
    assert labels.tolist() == MNIST5k("test").labels[:4].tolist()
