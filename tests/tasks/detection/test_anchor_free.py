"""The anchor-free YOLO: DFL and the distribution decode by hand, the task-aligned assigner on a hand-made case,
head shapes at odd sizes, the loss, post-processing and torch.fx."""

import math

import pytest
import torch
from torchvision import ops

from cnnkit.errors import ConfigError
from cnnkit.tasks.detection.anchor_free import AnchorFreeYOLO, _pad_targets
from cnnkit.tasks.detection.anchors import anchor_points
from cnnkit.tasks.detection.assign import TaskAlignedAssigner
from cnnkit.tasks.detection.boxes import box_iou, box_to_distance, distance_to_box
from cnnkit.tasks.detection.losses import distribution_expectation, distribution_focal_loss

NUM_CLASSES = 10
REG_MAX = 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AnchorFreeYOLO("resnet18", NUM_CLASSES, neck_channels=16, reg_max=REG_MAX, in_chans=1).eval()


def zero_outputs(model, size=64, n=1):
    return [torch.zeros(n, 4 * model.reg_max + NUM_CLASSES, size // s, size // s) for s in model.strides]


def test_distribution_focal_loss_by_hand():
    # uniform over 0, 1, 2 and y = 0.3: -(0.7 log 1/3 + 0.3 log 1/3) = log 3
    assert distribution_focal_loss(torch.zeros(3), torch.tensor(0.3)).item() == pytest.approx(math.log(3))
    # S = (1/4, 1/2, 1/4), y = 1.5: -(0.5 log 1/2 + 0.5 log 1/4)
    logits = torch.tensor([0.0, math.log(2), 0.0])
    expected = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    assert distribution_focal_loss(logits, torch.tensor(1.5)).item() == pytest.approx(expected)
    # at its minimum, S_i = y_{i+1} - y, S_{i+1} = y - y_i (here y = 1.25): zero gradient, E[S] = y
    best = torch.tensor([1e-9, 0.75, 0.25]).log().requires_grad_()
    distribution_focal_loss(best, torch.tensor(1.25)).backward()
    assert best.grad.abs().max() < 1e-6
    assert distribution_expectation(best.detach()).item() == pytest.approx(1.25, abs=1e-6)
    # a target beyond the last value is clamped to n - 1 - 0.01, batched shapes are kept
    assert distribution_focal_loss(torch.zeros(2, 4, 3), torch.full((2, 4), 9.0)).shape == (2, 4)


def test_distribution_expectation():
    probs = torch.tensor([[0.2, 0.3, 0.5], [1.0, 1e-12, 1e-12]])
    torch.testing.assert_close(distribution_expectation(probs.log()), torch.tensor([1.3, 0.0]))


def test_distance_box_round_trip():
    points = torch.tensor([[10.0, 20.0], [0.0, 0.0]])
    boxes = torch.tensor([[4.0, 2.0, 30.0, 21.0], [1.0, 1.0, 2.0, 2.0]])
    distances = box_to_distance(points, boxes)
    assert distances.tolist() == [[6.0, 18.0, 20.0, 1.0], [-1.0, -1.0, 2.0, 2.0]]
    torch.testing.assert_close(distance_to_box(points, distances), boxes)


def test_anchor_points_are_cell_centres():
    points, strides = anchor_points([(2, 3), (1, 2)], [8, 16])
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8], [24, 8]]
    assert strides.tolist() == [8] * 6 + [16] * 2


@pytest.mark.parametrize(("backbone", "neck"), [("resnet18", "pan"), ("mobilenet_v3_small", "fpn")])
def test_head_shapes_at_odd_sizes(backbone, neck):
    torch.manual_seed(0)
    model = AnchorFreeYOLO(backbone, 3, neck=neck, neck_channels=16, in_chans=1).eval()
    with torch.no_grad():
        outputs = model(torch.zeros(2, 1, 97, 75))
    assert model.strides == [8, 16, 32]
    assert [tuple(o.shape) for o in outputs] == [(2, 4 * 16 + 3, h, w) for h, w in ((13, 10), (7, 5), (4, 3))]
    boxes, probs = model.decode(outputs)
    assert boxes.shape == (2, 13 * 10 + 35 + 12, 4) and probs.shape == (2, 177, 3)
    # the prior init: class probabilities start at 0.01, distributions flat (every side (reg_max - 1) / 2)
    torch.testing.assert_close(probs, torch.full_like(probs, 0.01), atol=1e-3, rtol=0)


def test_decode_is_expected_distance_times_stride(model):
    outputs = zero_outputs(model)
    points, strides = model.points(outputs)
    boxes, probs = model.decode(outputs)
    half = (REG_MAX - 1) / 2  # flat distributions
    torch.testing.assert_close(boxes[0], distance_to_box(points, (half * strides)[:, None].expand(-1, 4)))
    assert torch.all(probs == 0.5)
    # point (row 1, column 2) of level 0 (stride 8, centre (20, 12)): l = 1, t = 2, r = 3.5, b = 0 strides
    big = 30.0
    outputs[0][0, 0 * REG_MAX + 1, 1, 2] = big
    outputs[0][0, 1 * REG_MAX + 2, 1, 2] = big
    outputs[0][0, 2 * REG_MAX + 3 : 2 * REG_MAX + 5, 1, 2] = big  # half on 3, half on 4
    outputs[0][0, 3 * REG_MAX + 0, 1, 2] = big
    boxes, _ = model.decode(outputs)
    torch.testing.assert_close(boxes[0, 8 + 2], torch.tensor([20.0 - 8, 12 - 16, 20 + 28, 12 + 0]))


def _assigner_case():
    """Five points on a row of stride-8 cells (and one far away); two objects overlapping on three points."""
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0], [60.0, 60.0]])
    gt_boxes = torch.tensor([[[0.0, 0.0, 24.0, 8.0], [8.0, 0.0, 40.0, 8.0]]])  # points 0-2, points 1-3
    gt_labels = torch.tensor([[1, 0]])
    pred = torch.tensor(
        [
            [0.0, 0.0, 24.0, 8.0],  # = object 0
            [0.0, 0.0, 16.0, 8.0],  # IoU 2/3 with object 0, 0.2 with object 1
            [8.0, 0.0, 40.0, 8.0],  # = object 1; IoU 0.4 with object 0
            [16.0, 0.0, 40.0, 8.0],  # IoU 0.75 with object 1
            [0.0, 0.0, 24.0, 8.0],  # = object 0, confident, but its point lies outside every object
        ]
    )[None]
    scores = torch.tensor([[0.5, 0.9], [0.5, 0.8], [0.6, 0.9], [0.7, 0.2], [0.5, 1.0]])[None]
    return scores, pred, points, gt_labels, gt_boxes


def test_assigner_top_k_inside_and_conflicts_by_hand():
    scores, pred, points, labels, boxes = _assigner_case()
    valid = torch.ones(1, 2, dtype=torch.bool)
    # alpha = beta = 1: t = s * IoU. Object 0 (class 1): points 0, 1, 2 inside, t = .9, .533, .36; object 1
    # (class 0): points 1, 2, 3, t = .1, .6, .525. Point 4's t for object 0 would be 1, but it is outside.
    one = TaskAlignedAssigner(top_k=1, alpha=1.0, beta=1.0)(scores, pred, points, labels, boxes, valid)
    assert one.foreground[0].tolist() == [True, False, True, False, False]
    assert one.gt_index[0, [0, 2]].tolist() == [0, 1]
    three = TaskAlignedAssigner(top_k=3, alpha=1.0, beta=1.0)(scores, pred, points, labels, boxes, valid)
    # points 1 and 2 are claimed by both: point 1 keeps object 0 (IoU 2/3 > 0.2), point 2 object 1 (1 > 0.4)
    assert three.foreground[0].tolist() == [True, True, True, True, False]
    assert three.gt_index[0, :4].tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(three.boxes[0, :4], boxes[0, [0, 0, 1, 1]])
    # soft targets t * max IoU / max t per object: object 0 (.9, .533) -> 1, .593; object 1 (.6, .525) -> 1, .875
    expected = torch.zeros(5, 2)
    expected[0, 1], expected[1, 1] = 1.0, 0.8 * (2 / 3) / 0.9
    expected[2, 0], expected[3, 0] = 1.0, 0.7 * 0.75 / 0.6
    torch.testing.assert_close(three.scores[0], expected)


def test_assigner_padding_and_beta():
    scores, pred, points, labels, boxes = _assigner_case()
    # a batch of two: the second image has only object 1 (object 0's slot is padding)
    batch = [torch.cat([t, t]) for t in (scores, pred)]
    valid = torch.tensor([[True, True], [False, True]])
    out = TaskAlignedAssigner(top_k=3, alpha=1.0, beta=1.0)(
        *batch, points, labels.repeat(2, 1), boxes.repeat(2, 1, 1), valid
    )
    assert out.foreground[1].tolist() == [False, True, True, True, False]
    torch.testing.assert_close(out.scores[1, 1:4, 0], torch.tensor([0.1 / 0.6, 1.0, 0.875]))
    # beta = 6 (the default) ranks by IoU far more: object 1's points 2 (IoU 1) and 3 (0.75), not 1 (0.2)
    out = TaskAlignedAssigner(top_k=2, alpha=1.0)(
        *batch, points, labels.repeat(2, 1), boxes.repeat(2, 1, 1), valid
    )
    assert out.foreground[1].tolist() == [False, False, True, True, False]
    empty = TaskAlignedAssigner()(scores, pred, points, labels[:, :0], boxes[:, :0], valid[:1, :0])
    assert not empty.foreground.any() and empty.scores.sum() == 0


def test_criterion_terms_and_box_loss_is_ciou(model):
    model.train()
    images = torch.randn(2, 1, 64, 64)
    targets = [
        {
            "boxes": torch.tensor([[4.0, 12.0, 36.0, 44.0], [30.0, 30.0, 60.0, 50.0]]),
            "labels": torch.tensor([7, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    outputs = model(images)
    losses = model.criterion(outputs, targets)
    assert set(losses) == {"loss", "box", "class", "dfl"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["box"] > 0 and losses["dfl"] > 0
    w_box, w_class, w_dfl = model.loss_weights
    total = w_box * losses["box"] + w_class * losses["class"] + w_dfl * losses["dfl"]
    torch.testing.assert_close(losses["loss"].detach(), total)
    # the box term is torchvision's complete_box_iou_loss of the positives, weighted by their soft targets
    distances, logits = model._flatten(outputs)
    points, strides = model.points(outputs)
    boxes = model._boxes(distances, points, strides).detach()
    gt_boxes, gt_labels, gt_valid = _pad_targets(targets, boxes)
    assigned = model.assigner(logits.detach().sigmoid(), boxes, points, gt_labels, gt_boxes, gt_valid)
    fg, weight = assigned.foreground, assigned.scores.sum(-1)
    ciou = ops.complete_box_iou_loss(boxes[fg], assigned.boxes[fg], reduction="none")
    expected = (ciou * weight[fg]).sum() / assigned.scores.sum()
    torch.testing.assert_close(losses["box"], expected)
    losses["loss"].backward()
    assert model.backbone.model.conv1.weight.grad.abs().sum() > 0
    model.zero_grad()
    empty = model.criterion(model(images), [targets[1], targets[1]])
    assert empty["box"] == 0 and empty["dfl"] == 0 and empty["class"] > 0
    model.eval()


def test_postprocess_threshold_nms_and_clipping(model):
    outputs = zero_outputs(model, n=2)
    for level in outputs:
        level[:, 4 * REG_MAX :] = -10.0  # every class probability ~0
    c = 4 * REG_MAX
    outputs[0][0, c + 3, 1, 2] = 10.0  # point (1, 2) of level 0 says class 3
    outputs[0][0, c + 3, 1, 3] = 5.0  # its neighbour too, less sure: the same flat box shifted by 8 px
    detections = model.postprocess(outputs)
    first, second = detections
    half = (REG_MAX - 1) / 2 * 8
    assert first["labels"].tolist() == [3] and first["labels"].dtype == torch.int64
    torch.testing.assert_close(first["boxes"], torch.tensor([[20 - half, 12 - half, 20 + half, 12 + half]]))
    torch.testing.assert_close(first["scores"], torch.sigmoid(torch.tensor([10.0])))
    assert second["boxes"].shape == (0, 4)
    both = model.postprocess(outputs, iou_threshold=0.9)[0]  # IoU of the shifted twins: 48 / 64 = 0.6
    assert both["labels"].tolist() == [3, 3] and both["scores"][0] > both["scores"][1]
    clipped = model.postprocess(outputs, image_size=(64, 64))[0]
    assert clipped["boxes"].tolist() == [[0.0, 0.0, 20 + half, 12 + half]]
    assert model.postprocess(outputs, max_detections=0)[0]["boxes"].shape == (0, 4)


def test_fx_trace_matches(model):
    x = torch.randn(1, 1, 64, 48)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        for a, b in zip(traced(x), model(x)):
            torch.testing.assert_close(a, b)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="neck"):
        AnchorFreeYOLO("resnet18", 2, neck="bifpn", in_chans=1)
    with pytest.raises(ConfigError, match="reg_max"):
        AnchorFreeYOLO("resnet18", 2, reg_max=1, in_chans=1)


def test_learns_to_find_the_objects_of_two_images():
    from cnnkit.data import MNISTDetection

    torch.manual_seed(0)
    data = MNISTDetection(size=2, image_size=64, digits=(1, 2), seed=3)
    images = torch.stack([data[i][0] for i in range(2)]).float() / 255
    targets = [data[i][1] for i in range(2)]
    model = AnchorFreeYOLO("resnet18", NUM_CLASSES, neck_channels=16, in_chans=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def best_box_ious(outputs):
        """Per object, the IoU of the box that scores its class highest."""
        boxes, probs = model.decode([o.detach() for o in outputs])
        return [
            float(box_iou(image_boxes[image_probs[:, label].argmax()][None], box[None])[0, 0])
            for image_boxes, image_probs, target in zip(boxes, probs, targets)
            for box, label in zip(target["boxes"], target["labels"])
        ]

    before = best_box_ious(model(images))
    for _ in range(40):
        losses = model.criterion(model(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    after = best_box_ious(model(images))
    assert max(before) < 0.1
    assert sum(iou > 0.5 for iou in after) >= 2, after


def test_trains_with_mosaic_closed_for_the_last_epoch_and_ema(tmp_path):
    """A tiny run through the engine: Mosaic for the first epoch only (close_mosaic=1), EMA weights kept."""
    import cnnkit
    from cnnkit.engine.run import train
    from cnnkit.engine.trainer import Callback

    seen = []

    class RecordAugment(Callback):
        def on_epoch_start(self, trainer):
            seen.append([type(t).__name__ for t in trainer.task.augment.transforms])

    run = train(
        model="yolo",
        backbone="resnet18",
        recipe="none",
        data={"name": "mnist-det", "train_size": 16, "val_size": 8, "batch_size": 8, "image_size": 64},
        model_kwargs={"neck_channels": 16, "reg_max": 8},
        augment=["Mosaic", {"RandomAffine": {"degrees": 0, "scale": [0.8, 1.2]}}],
        close_mosaic=1,
        ema_decay=0.9,
        epochs=2,
        progress=False,
        plots=False,
        output_dir=str(tmp_path / "run"),
        callbacks=[RecordAugment()],
    )
    assert seen == [["Mosaic", "RandomAffine"], ["RandomAffine"]]
    assert len(run.history) == 2 and 0.0 <= run.metrics["map"] <= 1.0
    (answer,) = cnnkit.load(run.dir).predict([torch.zeros(1, 50, 70, dtype=torch.uint8)], conf=0.0)
    assert len(answer["detections"]) > 0 and set(answer["detections"][0]) == {"label", "score", "box"}
