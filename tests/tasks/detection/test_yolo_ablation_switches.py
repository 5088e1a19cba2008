"""The anchor-free YOLO's ablation switches (``assigner``, ``dfl``, ``box_loss``, ``neck``): each builds, trains
a step with a finite loss that changes the way the switch says, and the defaults are the detector as it was."""

import hashlib

import pytest
import torch
from torchvision import ops

from cnnkit.errors import ConfigError
from cnnkit.tasks.detection.anchor_free import AnchorFreeYOLO, _pad_targets
from cnnkit.tasks.detection.assign import CentreAssigner
from cnnkit.tasks.detection.boxes import iou_loss

NUM_CLASSES = 10
REG_MAX = 8
TARGETS = [
    {
        "boxes": torch.tensor([[4.0, 12.0, 36.0, 44.0], [30.0, 30.0, 60.0, 50.0]]),
        "labels": torch.tensor([7, 2]),
    },
    {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([0])},
]


def build(**switches):
    torch.manual_seed(0)
    return AnchorFreeYOLO("resnet18", NUM_CLASSES, neck_channels=16, reg_max=REG_MAX, in_chans=1, **switches)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 1, 64, 64)


def test_defaults_are_the_detector_as_it_was(images):
    model = build().train()
    # the state_dict's keys and shapes, and the loss terms, recorded before the switches existed
    layout = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    assert len(model.state_dict()) == 264
    assert hashlib.sha1(layout.encode()).hexdigest() == "73773b1c99f0e45c08c259c453a649b2998d5190"
    losses = model.criterion(model(images), TARGETS)
    expected = {"loss": 12.512397, "box": 0.68166494, "class": 8.4508619, "dfl": 2.1163197}
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(expected, rel=1e-5)
    explicit = build(assigner="tal", dfl=True, box_loss="ciou", neck="pan")
    assert explicit.state_dict().keys() == model.state_dict().keys()


def train_step(model, images):
    """One AdamW step; the loss terms before it and the loss after it on the same batch."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = model.criterion(model(images), TARGETS)
    optimizer.zero_grad()
    losses["loss"].backward()
    optimizer.step()
    return losses, model.criterion(model(images), TARGETS)["loss"].item()


@pytest.mark.parametrize(
    "switches",
    [{"assigner": "centre"}, {"dfl": False}, {"box_loss": "iou"}, {"box_loss": "giou"}, {"neck": "fpn"}],
    ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()),
)
def test_each_switch_trains_a_step(images, switches):
    model = build(**switches)
    losses, after = train_step(model, images)
    assert all(torch.isfinite(v) for v in losses.values()) and after < losses["loss"].item()
    assert losses["box"] > 0 and losses["class"] > 0
    if switches == {"neck": "fpn"}:  # no bottom-up path: fewer weights than the PAN
        assert sum(p.numel() for p in model.neck.parameters()) < sum(
            p.numel() for p in build().neck.parameters()
        )
    assert set(losses) == (
        {"loss", "box", "class"} if switches == {"dfl": False} else {"loss", "box", "class", "dfl"}
    )


def test_box_loss_switch_changes_only_the_box_term(images):
    full, plain = build().train(), build(box_loss="iou").train()
    outputs = full(images)
    ciou, iou = full.criterion(outputs, TARGETS), plain.criterion(outputs, TARGETS)
    torch.testing.assert_close(iou["class"], ciou["class"])
    torch.testing.assert_close(iou["dfl"], ciou["dfl"])
    # the same positives and weights: 1 - IoU <= 1 - CIoU pair by pair, and here strictly in sum
    distances, logits = full._flatten(outputs)
    points, strides = full.points(outputs)
    boxes = full._boxes(distances, points, strides).detach()
    assigned = full._assign(logits, boxes, points, strides, TARGETS)
    fg, weight = assigned.foreground, assigned.scores.sum(-1)
    plain_iou = 1 - ops.box_iou(boxes[fg], assigned.boxes[fg]).diagonal()
    torch.testing.assert_close(iou["box"], (plain_iou * weight[fg]).sum() / assigned.scores.sum())
    assert iou["box"] < ciou["box"]


def test_direct_regression_has_four_outputs_per_point_and_starts_where_dfl_does(images):
    direct, full = build(dfl=False).eval(), build().eval()
    with torch.no_grad():
        outputs = direct(images)
    assert [o.shape[1] for o in outputs] == [4 + NUM_CLASSES] * 3
    assert sum(p.numel() for p in direct.parameters()) < sum(p.numel() for p in full.parameters())
    # the biases alone (zero weights): every side at (reg_max - 1) / 2 strides, as the flat distributions
    zero = [torch.zeros(1, 4 + NUM_CLASSES, 8 // s * 8, 8 // s * 8) for s in (1, 2, 4)]
    for level, head in zip(zero, direct.box_heads):
        level[:, :4] = head[-1].bias[:, None, None]
    points, strides = direct.points(zero)
    boxes, _ = direct.decode(zero)
    half = (REG_MAX - 1) / 2 * strides[:, None]
    torch.testing.assert_close(boxes[0], torch.cat([points - half, points + half], 1))
    # softplus(raw) * stride: raw 0 at point 0 (stride 8) gives sides of ln 2 * 8
    zero[0][0, :4, 0, 0] = 0.0
    boxes, _ = direct.decode(zero)
    side = torch.log(torch.tensor(2.0)) * 8
    torch.testing.assert_close(boxes[0, 0], torch.stack([4 - side, 4 - side, 4 + side, 4 + side]))


def test_centre_assigner_by_hand():
    # stride-8 points along y = 4 and one stride-16 point at (8, 4)
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0], [36.0, 4.0], [8.0, 4.0]])
    strides = torch.tensor([8.0, 8.0, 8.0, 8.0, 8.0, 16.0])
    # object 0: x 0..40 (centre 20); object 1 (smaller): x 8..24 (centre 16); object 2 is padding
    gt_boxes = torch.tensor([[[0.0, 0.0, 40.0, 8.0], [8.0, 0.0, 24.0, 8.0], [0.0, 0.0, 40.0, 40.0]]])
    gt_labels = torch.tensor([[3, 1, 0]])
    valid = torch.tensor([[True, True, False]])
    out = CentreAssigner(radius=1.5)(points, strides, gt_labels, gt_boxes, valid, num_classes=4)
    # object 0 reaches |x - 20| < 12 at stride 8: points 1, 2, 3; at stride 16 (24 px) point 5 (|8 - 20| = 12)
    # object 1: inside x 8..24, |x - 16| < 12: points 1, 2 (and point 5 lies at x = 8, on its edge: not inside).
    # Points 1 and 2 are claimed by both and keep the smaller object 1.
    assert out.foreground[0].tolist() == [False, True, True, True, False, True]
    assert out.gt_index[0, [1, 2, 3, 5]].tolist() == [1, 1, 0, 0]
    torch.testing.assert_close(out.boxes[0, [1, 3]], gt_boxes[0, [1, 0]])
    expected = torch.zeros(6, 4)
    expected[[1, 2], 1] = 1.0
    expected[[3, 5], 3] = 1.0
    torch.testing.assert_close(out.scores[0], expected)
    # a wider radius takes point 0 and 4 too (|x - 20| = 16 < 2.5 * 8)
    wide = CentreAssigner(radius=2.5)(points, strides, gt_labels, gt_boxes, valid, num_classes=4)
    assert wide.foreground[0].tolist() == [True] * 6
    empty = CentreAssigner()(points, strides, gt_labels[:, :0], gt_boxes[:, :0], valid[:, :0], num_classes=4)
    assert not empty.foreground.any() and empty.scores.shape == (1, 6, 4)


def test_centre_assignment_is_blind_to_the_predictions_and_hard(images):
    model = build(assigner="centre").train()
    outputs = model(images)
    distances, logits = model._flatten(outputs)
    points, strides = model.points(outputs)
    boxes = model._boxes(distances, points, strides)
    first = model._assign(logits, boxes, points, strides, TARGETS)
    second = model._assign(-logits, boxes + 5, points, strides, TARGETS)
    assert torch.equal(first.foreground, second.foreground) and torch.equal(first.scores, second.scores)
    assert set(first.scores.unique().tolist()) == {0.0, 1.0}
    # every object gets positives, and the class loss is normalised by their count
    gt_boxes, _, gt_valid = _pad_targets(TARGETS, boxes)
    assert first.foreground.sum() == first.scores.sum() > gt_valid.sum()
    losses = model.criterion(outputs, TARGETS)
    fg = first.foreground
    expected = iou_loss(boxes[fg], first.boxes[fg], "ciou").sum() / fg.sum()
    torch.testing.assert_close(losses["box"], expected.detach())


def test_fx_trace_and_bad_switches():
    model = build(dfl=False, assigner="centre").eval()
    x = torch.randn(1, 1, 64, 48)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        for a, b in zip(traced(x), model(x)):
            torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="assigner"):
        build(assigner="atss")
    with pytest.raises(ConfigError, match="box_loss"):
        build(box_loss="siou")
