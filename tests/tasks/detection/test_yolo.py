import time

import pytest
import torch

from cnnkit.data import MNISTDetection
from cnnkit.errors import ConfigError
from cnnkit.tasks.detection.boxes import box_convert
from cnnkit.tasks.detection.yolo import YOLODetector

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return YOLODetector("resnet18", NUM_CLASSES, fpn_channels=16, in_chans=1, neighbor_cells=False).eval()


def zero_outputs(model, n=1, size=64):
    channels = model.num_boxes * 5 + NUM_CLASSES
    return [torch.zeros(n, channels, size // s, size // s) for s in model.strides]


def test_forward_shapes_and_layout(model):
    assert model.strides == [8, 16, 32] and model.num_boxes == 3
    with torch.no_grad():
        outputs = model(torch.zeros(2, 1, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(2, 3 * 5 + 10, s, s) for s in (8, 4, 2)]
    boxes, confidence, class_probs = model.decode(outputs)
    total = 3 * (64 + 16 + 4)
    assert (
        boxes.shape == (2, total, 4)
        and confidence.shape == (2, total)
        and class_probs.shape == (2, total, 10)
    )
    # the prior init: confidences and class probabilities start near 0.01
    assert torch.allclose(confidence, torch.full_like(confidence, 0.01), atol=0.01)


def test_zero_outputs_decode_to_the_priors(model):
    outputs = zero_outputs(model)
    boxes, confidence, class_probs = model.decode(outputs)
    priors, strides, cells = model.priors(outputs)
    torch.testing.assert_close(boxes[0], priors)
    assert torch.all(confidence == 0.5) and torch.all(class_probs == 0.5)
    # priors centred in their cells: box 3 * (8 * 1 + 2) + 1 is level 0, row 1, column 2, square
    assert box_convert(priors[31], "xyxy", "cxcywh").tolist() == [20.0, 12.0, 32.0, 32.0]
    assert strides[31] == 8 and strides[-1] == 32
    assert cells[31] == 10 and cells[-1] == 64 + 16 + 4 - 1


def test_decode_offsets_and_scales(model):
    outputs = zero_outputs(model)
    big = 20.0  # sigmoid -> 1: centre moves one stride, size grows 4x
    outputs[0][0, 5:7, 1, 2] = big  # box 1 of cell (1, 2): t_x, t_y
    outputs[0][0, 7:9, 1, 2] = big  # t_w, t_h
    boxes, _, _ = model.decode(outputs)
    torch.testing.assert_close(
        box_convert(boxes[0, 31], "xyxy", "cxcywh"), torch.tensor([28.0, 20.0, 128.0, 128.0])
    )


def test_assign_targets_by_hand(model):
    outputs = zero_outputs(model)
    target = {
        "boxes": torch.tensor([[4.0, 12.0, 36.0, 44.0]]),
        "labels": torch.tensor([7]),
    }  # 32x32 at (20, 28)
    (a,) = model.assign_targets(outputs, [target])
    # level 0 (priors ~32): cell (3, 2), all 3 shapes within 4x; level 1 (~64): cell (1, 1), all 3;
    # level 2 (~128): the square prior is exactly 4x, not within
    expected = [3 * (3 * 8 + 2) + k for k in range(3)] + [192 + 3 * (1 * 4 + 1) + k for k in range(3)]
    assert a.positive.nonzero().flatten().tolist() == expected
    assert a.gt_index[a.positive].tolist() == [0] * 6 and set(a.gt_index[~a.positive].tolist()) == {-1}
    assert a.cell_positive.nonzero().flatten().tolist() == [26, 64 + 5]
    assert a.cell_classes[26].nonzero().flatten().tolist() == [7]


def test_assign_targets_with_neighbor_cells():
    torch.manual_seed(0)
    model = YOLODetector("resnet18", NUM_CLASSES, fpn_channels=16, in_chans=1)  # neighbor_cells=True
    outputs = zero_outputs(model)
    target = {
        "boxes": torch.tensor([[3.0, 11.0, 35.0, 43.0]]),
        "labels": torch.tensor([4]),
    }  # centre (19, 27)
    (a,) = model.assign_targets(outputs, [target])
    # level 0 (stride 8): centre at grid (2.375, 3.375): own cell (row 3, col 2) = 26, the nearer neighbour
    # along x is col 1 (cell 25), along y row 2 (cell 18); level 1 (stride 16): grid (1.19, 1.69): own cell
    # 5, neighbours col 0 (cell 4) and row 2 (cell 9); three boxes each (every prior within 4x there)
    cells = sorted([18, 25, 26] + [64 + c for c in (4, 5, 9)])
    expected = [3 * c + k for c in cells for k in range(3)]
    assert a.positive.nonzero().flatten().tolist() == expected
    assert a.cell_positive.nonzero().flatten().tolist() == cells
    assert all(a.cell_classes[c].nonzero().flatten().tolist() == [4] for c in cells)
    # a 6x6 object in the corner: its neighbours lie outside the grid and it fits no prior within 4x, so
    # only its best prior in its own cell is responsible (the clamped neighbours do not erase that claim)
    corner = {"boxes": torch.tensor([[0.0, 0.0, 6.0, 6.0]]), "labels": torch.tensor([1])}
    (a,) = model.assign_targets(outputs, [corner])
    assert a.positive.nonzero().flatten().tolist() == [0]  # cell 0; equal-area priors: the first is best


def test_neighbor_claims_rank_below_own_cell_claims():
    torch.manual_seed(0)
    model = YOLODetector("resnet18", NUM_CLASSES, fpn_channels=16, in_chans=1)
    outputs = zero_outputs(model)
    # two 32x32 objects centred in adjacent level-0 cells (row 3, cols 2 and 3: cells 26 and 27), each
    # nearer the other's cell, so each also claims the other's boxes as a neighbour. The square boxes are
    # each object's best prior; the wide and tall boxes of a cell go to the object centred in it.
    boxes = torch.tensor([[7.0, 8.0, 39.0, 40.0], [9.0, 8.0, 41.0, 40.0]])
    (a,) = model.assign_targets(outputs, [{"boxes": boxes, "labels": torch.tensor([0, 1])}])
    assert a.gt_index[3 * 26 : 3 * 28].tolist() == [0, 0, 0, 1, 1, 1]


def test_assign_targets_shared_cell(model):
    outputs = zero_outputs(model)
    target = {
        "boxes": torch.tensor(
            [[4.0, 12.0, 36.0, 44.0], [8.0, 4.0, 32.0, 52.0]]
        ),  # 32x32 and 24x48, same centre
        "labels": torch.tensor([0, 1]),
    }
    (a,) = model.assign_targets(outputs, [target])
    # cell 26's boxes (wide, square, tall): the tall prior is the 24x48 object's best fit
    assert a.gt_index[78:81].tolist() == [0, 0, 1]
    assert a.cell_classes[26].nonzero().flatten().tolist() == [0, 1]


def test_assign_without_objects_and_tiny_objects(model):
    outputs = zero_outputs(model)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    tiny = {"boxes": torch.tensor([[10.0, 10.0, 12.0, 12.0]]), "labels": torch.tensor([2])}
    a_empty, a_tiny = model.assign_targets(outputs, [empty, tiny])
    assert not a_empty.positive.any() and not a_empty.cell_positive.any()
    # a 2x2 object fits no prior within 4x, but its best prior is still responsible
    assert a_tiny.positive.sum() == 1


def test_criterion_terms(model):
    model.train()
    images = torch.randn(2, 1, 64, 64)
    targets = [
        {"boxes": torch.tensor([[4.0, 12.0, 36.0, 44.0]]), "labels": torch.tensor([7])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model.criterion(model(images), targets)
    assert set(losses) == {"loss", "box", "confidence", "class"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert 0 < losses["box"] < 2 and losses["class"] > 0
    losses["loss"].backward()
    assert model.backbone.model.conv1.weight.grad.abs().sum() > 0
    model.zero_grad()
    empty = model.criterion(model(images), [targets[1], targets[1]])
    assert empty["box"] == 0 and empty["class"] == 0 and empty["confidence"] > 0
    model.eval()


def test_postprocess_format_threshold_and_nms(model):
    outputs = zero_outputs(model, n=2)
    for level in outputs:
        level[:, 4:15:5] = -10.0  # confidences ~0
        level[:, 15:] = -10.0  # class probabilities ~0
    outputs[0][0, 5 + 4, 1, 2] = 10.0  # square box of cell (1, 2): confident
    outputs[0][0, 0 + 4, 1, 2] = 5.0  # wide box of the same cell, less so; IoU with the square 704/1332
    outputs[0][0, 15 + 3, 1, 2] = 10.0  # the cell says class 3
    detections = model.postprocess(outputs)
    assert len(detections) == 2
    first, second = detections
    assert first["labels"].tolist() == [3] and first["labels"].dtype == torch.int64
    torch.testing.assert_close(first["boxes"], torch.tensor([[4.0, -4.0, 36.0, 28.0]]))
    torch.testing.assert_close(first["scores"], torch.sigmoid(torch.tensor([10.0])) ** 2)
    assert second["boxes"].shape == (0, 4) and second["scores"].shape == (0,)
    both = model.postprocess(outputs, iou_threshold=0.6)[0]
    assert both["labels"].tolist() == [3, 3] and both["scores"][0] > both["scores"][1]
    clipped = model.postprocess(outputs, image_size=(64, 64))[0]
    assert clipped["boxes"].tolist() == [[4.0, 0.0, 36.0, 28.0]]
    assert model.postprocess(outputs, max_detections=0)[0]["boxes"].shape == (0, 4)


def test_levels_must_share_box_count():
    with pytest.raises(ConfigError, match="same number of boxes"):
        YOLODetector("resnet18", 2, anchor_sizes=((32,), (64, 96), (128,)), in_chans=1)


@pytest.mark.slow
def test_loss_decreases_when_overfitting_two_images():
    torch.manual_seed(0)
    data = MNISTDetection(size=2, image_size=64, digits=(1, 2), seed=3)
    images = torch.stack([data[i][0] for i in range(2)]).float() / 255
    targets = [data[i][1] for i in range(2)]
    model = YOLODetector("resnet18", NUM_CLASSES, fpn_channels=32, in_chans=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    history = []
    for _ in range(30):
        losses = model.criterion(model(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    print(f"30 steps in {time.perf_counter() - start:.1f} s; first {history[0]}, last {history[-1]}")
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["box"] < history[0]["box"]
