"""Mosaic: the four quadrants come from the drawn images, and every box, instance mask and semantic mask still
covers exactly its object's pixels."""

import pytest
import torch

from cnnkit.augment import Mosaic, build_transform
from cnnkit.errors import ConfigError


def _painted_batch(b=6, h=40, w=48, generator=None):
    """Each object is a filled rectangle whose pixel value is its label (unique in the batch), so a box's
    pixels say which object it is; instance masks and the semantic mask are those rectangles."""
    images = torch.zeros(b, 1, h, w, dtype=torch.uint8)
    targets = []
    label = 1
    for i in range(b):
        boxes, labels, masks = [], [], []
        for _ in range(3):
            x1 = int(torch.randint(0, w - 12, (1,), generator=generator))
            y1 = int(torch.randint(0, h - 12, (1,), generator=generator))
            x2 = x1 + int(torch.randint(6, 12, (1,), generator=generator))
            y2 = y1 + int(torch.randint(6, 12, (1,), generator=generator))
            free = images[i, 0, y1:y2, x1:x2] == 0
            if not free.all():  # keep objects apart, so each rectangle is whole
                continue
            images[i, 0, y1:y2, x1:x2] = label
            mask = torch.zeros(h, w, dtype=torch.uint8)
            mask[y1:y2, x1:x2] = 1
            boxes.append([x1, y1, x2, y2])
            labels.append(label)
            masks.append(mask)
            label += 1
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.uint8),
                "mask": images[i, 0].clone(),
            }
        )
    return images, targets


def test_boxes_and_masks_cover_their_objects_pixels(generator):
    images, targets = _painted_batch(generator=generator)
    t = Mosaic(min_visible=0.0)
    params = t.sample(images, generator)
    out, moved = t.apply(images, targets, params)
    assert out.shape == images.shape and params["apply"].all()
    kept = 0
    for image, target in zip(out, moved):
        assert torch.equal(target["mask"], image[0])  # the semantic mask is cut like the image
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"])
        for box, label, mask in zip(target["boxes"], target["labels"], target["masks"]):
            x1, y1, x2, y2 = (int(v) for v in box.tolist())
            assert torch.equal(mask.bool(), image[0] == label)  # the mask is the object's visible pixels
            assert (image[0, y1:y2, x1:x2] == label).all()  # the box holds only the object ...
            ys, xs = (image[0] == label).nonzero(as_tuple=True)  # ... and is tight around what is visible
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
            kept += 1
        # every visible object has its box
        visible = set(image.unique().tolist()) - {0}
        assert visible == set(target["labels"].tolist())
    assert kept > len(moved)


def test_quadrants_come_from_the_drawn_images():
    b, h, w = 4, 10, 12
    images = (torch.arange(b, dtype=torch.uint8) + 1).view(b, 1, 1, 1).expand(b, 1, h, w).contiguous()
    params = {
        "apply": torch.tensor([True, False, True, True]),
        "sources": torch.tensor([[1, 2, 3, 0], [0, 0, 0, 0], [2, 2, 2, 2], [3, 1, 1, 3]]),
        "centre": torch.tensor([[5, 4], [0, 0], [12, 10], [0, 0]]),
    }
    out = Mosaic().apply(images, None, params)[0][:, 0]
    assert (out[0, :4, :5] == 2).all() and (out[0, :4, 5:] == 3).all()
    assert (out[0, 4:, :5] == 4).all() and (out[0, 4:, 5:] == 1).all()
    assert (out[1] == 2).all()  # not chosen: unchanged
    assert (out[2] == 3).all()  # a centre at the far corner: all of q_0
    assert (out[3] == 4).all()  # at the near corner: all of q_3


def test_objects_mostly_cut_off_are_dropped():
    h, w = 20, 20
    images = torch.zeros(1, 1, h, w, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([3])}
    # centre (14, 0): q_0 and q_1 are empty; q_2 shifts the box by (-6, 0) to [-6, 4): 40 % visible;
    # q_3 shifts it by (14, 0) to [14, 24), clipped to [14, 20): 60 % visible
    params = {"apply": torch.tensor([True]), "sources": torch.zeros(1, 4, dtype=torch.int64)}
    params["centre"] = torch.tensor([[14, 0]])
    _, [moved] = Mosaic(min_visible=0.5).apply(images, [target], params)
    assert moved["boxes"].tolist() == [[14.0, 0.0, 20.0, 10.0]]
    _, [moved] = Mosaic(min_visible=0.7).apply(images, [target], params)
    assert moved["boxes"].shape == (0, 4) and moved["labels"].shape == (0,)


def test_built_by_name_reproducible_and_checked(generator):
    images, targets = _painted_batch(generator=generator)
    pipeline = build_transform(
        [{"Mosaic": {"p": 0.5}}, {"RandomAffine": {"degrees": 0, "scale": [0.8, 1.2]}}]
    )
    first = pipeline(images, targets, torch.Generator().manual_seed(3))
    second = pipeline(images, targets, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(first[1], second[1]))
    assert torch.equal(Mosaic(p=0.0)(images, generator=generator), images)
    # class labels: soft, weighted by each quadrant's area
    labels = torch.arange(4)
    params = {"apply": torch.tensor([True, False, False, False]), "centre": torch.tensor([[12, 30]] * 4)}
    params["sources"] = torch.tensor([[0, 1, 2, 3]] * 4)
    _, soft = Mosaic(num_classes=4).apply(images[:4], labels, params)
    h, w = images.shape[-2:]
    torch.testing.assert_close(
        soft[0], torch.tensor([12 * 30, (w - 12) * 30, 12 * (h - 30), (w - 12) * (h - 30)]) / (h * w)
    )
    assert torch.equal(soft[1:], torch.eye(4)[1:])
    with pytest.raises(ConfigError, match="center"):
        Mosaic(center=(0.8, 0.2))
