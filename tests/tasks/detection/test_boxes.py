import math

import pytest
import torch
from torchvision import ops
from torchvision.models.detection import _utils as tv_det_utils

from cnnkit.errors import ConfigError
from cnnkit.tasks.detection.boxes import (
    BoxCoder,
    Matcher,
    batched_nms,
    box_area,
    box_convert,
    box_iou,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
    iou_loss,
    nms,
)


def random_boxes(n: int, generator: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_box_convert_by_hand():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    assert box_convert(xyxy, "xyxy", "xywh").tolist() == [[10.0, 20.0, 40.0, 20.0]]
    assert box_convert(xyxy, "xyxy", "cxcywh").tolist() == [[30.0, 30.0, 40.0, 20.0]]
    # image 100 high, 200 wide: x / 200, y / 100
    torch.testing.assert_close(
        box_convert(xyxy, "xyxy", "cxcywhn", image_size=(100, 200)), torch.tensor([[0.15, 0.3, 0.2, 0.2]])
    )
    torch.testing.assert_close(
        box_convert(xyxy, "xyxy", "xyxyn", image_size=(100, 200)), torch.tensor([[0.05, 0.2, 0.25, 0.4]])
    )


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh", "xyxyn", "xywhn", "cxcywhn"])
def test_box_convert_round_trip(fmt, generator):
    boxes = random_boxes(7, generator).reshape(7, 1, 4)
    there = box_convert(boxes, "xyxy", fmt, image_size=(120, 90))
    assert there.shape == (7, 1, 4)
    torch.testing.assert_close(box_convert(there, fmt, "xyxy", image_size=(120, 90)), boxes)


def test_box_convert_between_normalized_needs_no_size():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    torch.testing.assert_close(box_convert(boxes, "xyxyn", "cxcywhn"), torch.tensor([[0.3, 0.4, 0.4, 0.4]]))


def test_box_convert_errors():
    with pytest.raises(ConfigError, match="image_size"):
        box_convert(torch.zeros(1, 4), "xyxy", "xyxyn")
    with pytest.raises(ConfigError, match="unknown box format"):
        box_convert(torch.zeros(1, 4), "xyxy", "yxyx")


def test_area_and_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 4.0, 2.0]])
    assert box_area(b).tolist() == [4.0, 4.0]
    # overlap 1, union 7; touching boxes overlap 0
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    # enclosing box of a and b[0] has area 9: GIoU = 1/7 - (9 - 7) / 9
    torch.testing.assert_close(generalized_box_iou(a, b[:1]), torch.tensor([[1 / 7 - 2 / 9]]))
    # centres (1, 1) and (2, 2): rho^2 = 2, enclosing diagonal^2 = 18; same aspect ratio, so CIoU = DIoU
    torch.testing.assert_close(distance_box_iou(a, b[:1]), torch.tensor([[1 / 7 - 2 / 18]]))
    torch.testing.assert_close(complete_box_iou(a, b[:1]), torch.tensor([[1 / 7 - 2 / 18]]))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (box_iou, ops.box_iou),
        (generalized_box_iou, ops.generalized_box_iou),
        (distance_box_iou, ops.distance_box_iou),
        (complete_box_iou, ops.complete_box_iou),
    ],
)
def test_pairwise_and_elementwise_equal_torchvision(ours, theirs, generator):
    a, b = random_boxes(6, generator), random_boxes(6, generator)
    expected = theirs(a, b)
    torch.testing.assert_close(ours(a, b), expected)
    assert ours(a, b[:4]).shape == (6, 4)
    torch.testing.assert_close(ours(a, b, pairwise=False), expected.diagonal(), atol=1e-6, rtol=1e-5)


def test_elementwise_needs_equal_shapes():
    with pytest.raises(ConfigError, match="equal shapes"):
        box_iou(torch.zeros(2, 4), torch.zeros(3, 4), pairwise=False)


@pytest.mark.parametrize(
    ("kind", "theirs"),
    [
        ("giou", ops.generalized_box_iou_loss),
        ("diou", ops.distance_box_iou_loss),
        ("ciou", ops.complete_box_iou_loss),
    ],
)
def test_losses_equal_torchvision(kind, theirs, generator):
    a, b = random_boxes(5, generator), random_boxes(5, generator)
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(iou_loss(a, b, kind, reduction), theirs(a, b, reduction=reduction))


def test_iou_loss_values_and_gradient():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    loss = iou_loss(pred, target, "iou")
    torch.testing.assert_close(loss, torch.tensor([6 / 7, 0.0]))
    torch.testing.assert_close(iou_loss(pred, target, "iou", "mean"), torch.tensor(3 / 7))
    iou_loss(pred, target, "giou", "sum").backward()
    # moving the first box towards its target (increasing x2, y2) lowers the loss
    assert pred.grad[0, 2] < 0 and pred.grad[0, 3] < 0
    with pytest.raises(ConfigError, match="unknown IoU loss"):
        iou_loss(pred, target, "siou")


def test_nms_and_batched_nms():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]  # IoU of the first two is 81/119 = 0.68
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]


def test_box_coder_by_hand():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    box = torch.tensor([[5.0, 0.0, 15.0, 40.0]])  # centre moved by (5, 10), height doubled
    expected = torch.tensor([[10 * 0.5, 10 * 0.5, 0.0, 5 * math.log(2)]])
    torch.testing.assert_close(coder.encode(box, anchor), expected)
    torch.testing.assert_close(coder.decode(expected, anchor), box)


def test_box_coder_round_trip_and_torchvision(generator):
    coder = BoxCoder()
    anchors, boxes = random_boxes(20, generator), random_boxes(20, generator)
    deltas = coder.encode(boxes, anchors)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        coder.encode(coder.decode(deltas, anchors), anchors), deltas, atol=1e-4, rtol=1e-4
    )
    theirs = tv_det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(deltas, theirs.encode_single(boxes, anchors))
    torch.testing.assert_close(coder.decode(deltas, anchors), theirs.decode_single(deltas, anchors))


def test_box_coder_clamps_scale():
    coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    decoded = coder.decode(torch.tensor([[0.0, 0.0, 100.0, -1.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    width = decoded[0, 2] - decoded[0, 0]
    torch.testing.assert_close(width, torch.tensor(1000.0))
    torch.testing.assert_close(decoded[0, 3] - decoded[0, 1], torch.tensor(16 * math.exp(-1.0)))


def test_matcher_thresholds_by_hand():
    # 2 ground truths x 5 predictions
    quality = torch.tensor([[0.9, 0.5, 0.1, 0.0, 0.35], [0.2, 0.6, 0.3, 0.0, 0.1]])
    matcher = Matcher(0.7, 0.3)
    # 0.9 -> gt 0; 0.6 between; 0.3 between (low is inclusive); 0.0 below; 0.35 between
    assert matcher(quality).tolist() == [0, -2, -2, -1, -2]
    low_quality = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    # gt 1's best prediction (1, at 0.6) is promoted; gt 0's best is already matched
    assert low_quality(quality).tolist() == [0, 1, -2, -1, -2]


def test_matcher_low_quality_ties_and_argmax():
    quality = torch.tensor([[0.4, 0.4, 0.1], [0.1, 0.5, 0.2]])
    matches = Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    # gt 0 ties on predictions 0 and 1; prediction 1 keeps its own argmax, gt 1 (as torchvision)
    assert matches.tolist() == [0, 1, -1]
    theirs = tv_det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)(quality)
    assert theirs.tolist() == matches.tolist()


def test_matcher_equals_torchvision_on_iou(generator):
    gt, anchors = random_boxes(4, generator), random_boxes(30, generator)
    quality = box_iou(gt, anchors)
    for allow in (False, True):
        ours = Matcher(0.5, 0.4, allow)(quality)
        theirs = tv_det_utils.Matcher(0.5, 0.4, allow)(quality)
        assert ours.tolist() == theirs.tolist()


def test_matcher_without_overlap_or_ground_truth():
    matcher = Matcher(0.7, 0.3, allow_low_quality_matches=True)
    assert matcher(torch.zeros(1, 3)).tolist() == [-1, -1, -1]
    assert matcher(torch.zeros(0, 3)).tolist() == [-1, -1, -1]
    with pytest.raises(ConfigError, match="low_threshold"):
        Matcher(0.3, 0.7)
