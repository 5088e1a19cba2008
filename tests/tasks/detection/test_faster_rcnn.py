import time

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn as tv_fasterrcnn_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

from cnnkit.data import MNISTDetection
from cnnkit.errors import ConfigError
from cnnkit.tasks.detection.anchors import AnchorGenerator
from cnnkit.tasks.detection.boxes import box_iou
from cnnkit.tasks.detection.faster_rcnn import FasterRCNN, fast_rcnn_loss, fasterrcnn_resnet50_fpn
from cnnkit.tasks.detection.rpn import RegionProposalNetwork, flatten_rpn_outputs, sample_balanced

NUM_CLASSES = 10
SMALL = dict(
    in_chans=1,
    out_indices=(-3, -2, -1),
    fpn_channels=16,
    anchor_sizes=((16,), (32,), (64,), (128,)),
    rpn_pre_nms_top_n=(100, 50),
    rpn_post_nms_top_n=(40, 20),
    representation_size=32,
    box_batch_size_per_image=16,
)


def small_model(**changes):
    torch.manual_seed(0)
    return FasterRCNN("resnet18", NUM_CLASSES, **{**SMALL, **changes})


def targets_two_images():
    return [
        {
            "boxes": torch.tensor([[4.0, 12.0, 36.0, 44.0], [30.0, 30.0, 60.0, 62.0]]),
            "labels": torch.tensor([7, 2]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


@pytest.fixture(scope="module")
def torchvision_pair():
    """torchvision's Faster R-CNN with livelier random heads, and ours with its weights."""
    torch.manual_seed(0)
    tv = tv_fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    with torch.no_grad():  # larger head weights: varied objectness and class scores, many detections
        tv.rpn.head.cls_logits.weight.normal_(std=0.5)
        tv.rpn.head.bbox_pred.weight.normal_(std=0.002)
        tv.roi_heads.box_predictor.cls_score.weight.normal_(std=0.003)
    ours = fasterrcnn_resnet50_fpn().eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    return tv, ours


def test_state_dict_is_torchvision_layout(torchvision_pair):
    tv, ours = torchvision_pair
    theirs, mine = tv.state_dict(), ours.state_dict()
    assert list(theirs) == list(mine)
    assert all(theirs[k].shape == mine[k].shape for k in theirs)
    assert mine["roi_heads.box_predictor.cls_score.weight"].shape == (91, 1024)
    assert mine["rpn.head.conv.0.0.weight"].shape == (256, 256, 3, 3)


def test_eval_outputs_match_torchvision(torchvision_pair):
    tv, ours = torchvision_pair
    torch.manual_seed(1)
    images = torch.randn(2, 3, 128, 160)  # 160 / 64 is not whole: the pooled level's stride is 160 // 3
    with torch.no_grad():
        features = tv.backbone(images)
        image_list = ImageList(images, [(128, 160)] * 2)
        proposals, _ = tv.rpn(image_list, features)
        detections, _ = tv.roi_heads(features, proposals, image_list.image_sizes)
        outputs = ours(images)
    mine = ours.postprocess(outputs)
    for theirs, proposal, mine_i, own in zip(proposals, outputs["proposals"], mine, detections):
        assert len(theirs) > 300
        torch.testing.assert_close(proposal, theirs, atol=1e-4, rtol=0)
        assert len(own["boxes"]) > 20 and own["scores"].min() > 0.05 and own["scores"].max() < 0.9
        torch.testing.assert_close(mine_i["boxes"], own["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(mine_i["scores"], own["scores"], atol=1e-5, rtol=0)
        assert torch.equal(mine_i["labels"], own["labels"] - 1)


def test_training_losses_match_torchvision(torchvision_pair):
    tv, ours = torchvision_pair
    tv.train()
    ours.train()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 128, 128)
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 64.0, 120.0, 100.0]]),
            "labels": torch.tensor([4, 0]),
        },
        {"boxes": torch.tensor([[30.0, 30.0, 50.0, 44.0]]), "labels": torch.tensor([89])},
    ]
    shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
    try:
        with torch.no_grad():
            features = tv.backbone(images)
            image_list = ImageList(images, [(128, 128)] * 2)
            torch.manual_seed(10)  # the anchors' sample
            proposals, rpn_losses = tv.rpn(image_list, features, shifted)
            torch.manual_seed(11)  # the RoIs' sample
            _, roi_losses = tv.roi_heads(features, proposals, image_list.image_sizes, shifted)
            torch.manual_seed(11)
            outputs = ours(images, targets)
            torch.manual_seed(10)
            losses = ours.criterion(outputs, targets)
    finally:
        tv.eval()
        ours.eval()
    for mine, theirs in [
        ("rpn_objectness", rpn_losses["loss_objectness"]),
        ("rpn_box", rpn_losses["loss_rpn_box_reg"]),
        ("classifier", roi_losses["loss_classifier"]),
        ("box_reg", roi_losses["loss_box_reg"]),
    ]:
        torch.testing.assert_close(losses[mine], theirs, rtol=1e-5, atol=1e-6)
    assert losses["rpn_box"] > 0 and losses["box_reg"] > 0
    assert sum(len(r) for r in outputs["rois"]) == 1024  # 512 RoIs per image


def test_rpn_output_layout_and_filtering():
    anchors = AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
    rpn = RegionProposalNetwork(
        anchors, 4, pre_nms_top_n=(5, 3), post_nms_top_n=(4, 2), nms_threshold=0.7
    ).eval()
    logits = [torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 2)]
    deltas = [torch.randn(1, 12, 4, 4), torch.randn(1, 12, 2, 2)]
    objectness, flat = flatten_rpn_outputs(logits, deltas)
    assert objectness.shape == (1, 60) and flat.shape == (1, 60, 4)
    # anchor order is level, row, column, type: anchor (y=1, x=2, type 1) of level 0 is row (1 * 4 + 2) * 3 + 1
    assert objectness[0, 19] == logits[0][0, 1, 1, 2]
    assert torch.equal(flat[0, 19], deltas[0][0, 4:8, 1, 2])
    assert flat[0, 48 + 5].equal(deltas[1][0, 8:12, 0, 1])
    # distinct 6x6 boxes on an 8 x 8 grid; 46 duplicates 47 (same level: suppressed), 59 duplicates 47 (other
    # level: kept), 58 lies outside the image (clipped to nothing, removed)
    index = torch.arange(60)
    corners = torch.stack([index % 8 * 8, index // 8 % 8 * 8], 1).float()
    boxes = torch.cat([corners, corners + 6], 1)
    boxes[46] = boxes[59] = boxes[47]
    boxes[58] = torch.tensor([70.0, 70.0, 80.0, 80.0])
    scores = torch.arange(60.0)[None] / 10
    proposals, probabilities = rpn.filter_proposals(boxes[None], scores, [48, 12], (64, 64))
    # testing: top 3 per level (47, 46, 45 and 59, 58, 57) -> NMS per level -> best 2 over all levels
    torch.testing.assert_close(proposals[0], boxes[[59, 57]])
    torch.testing.assert_close(probabilities[0], torch.sigmoid(torch.tensor([5.9, 5.7])))
    rpn.train()  # training: top 5 per level, 4 kept
    proposals, _ = rpn.filter_proposals(boxes[None], scores, [48, 12], (64, 64))
    torch.testing.assert_close(proposals[0], boxes[[59, 57, 56, 55]])


def test_rpn_assign_targets_and_loss_by_hand():
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [20.0, 20.0, 30.0, 30.0], [5, 0, 15, 10]]
    )
    rpn = RegionProposalNetwork(AnchorGenerator(((16,),), ((1.0,),)), 4, batch_size_per_image=4)
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 11.0]])}
    labels, deltas = rpn.assign_targets(anchors, [target])
    # IoUs 10/11, 10/12, 0 and 50/160 (between 0.3 and 0.7: ignored)
    assert labels[0].tolist() == [1.0, 1.0, 0.0, -1.0]
    torch.testing.assert_close(deltas[0, 0], rpn.box_coder.encode(target["boxes"][0], anchors[0]))
    objectness = torch.tensor([[2.0, 0.0, -1.0, 5.0]])
    rpn_deltas = torch.zeros(1, 4, 4)
    objectness_loss, box_loss = rpn.loss(objectness, rpn_deltas, anchors, [target])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(objectness_loss, expected)
    # dh = log(11 / 10) and log(11 / 12), dy = 0.5 / 10 and -0.5 / 12: smooth-L1 (beta 1/9) over 3 sampled
    smooth = torch.nn.functional.smooth_l1_loss
    expected_box = smooth(rpn_deltas[0, :2], deltas[0, :2], beta=1 / 9, reduction="sum") / 3
    torch.testing.assert_close(box_loss, expected_box)
    no_objects = {"boxes": torch.zeros(0, 4)}
    labels, deltas = rpn.assign_targets(anchors, [no_objects])
    assert labels.tolist() == [[0.0] * 4] and deltas.abs().sum() == 0


def test_sample_balanced_caps_positives_and_fills_with_negatives():
    labels = torch.tensor([1] * 10 + [0] * 20 + [-1] * 5)
    generator = torch.Generator().manual_seed(0)
    positive, negative = sample_balanced(labels, 8, 0.25, generator)
    assert len(positive) == 2 and len(negative) == 6
    assert (labels[positive] == 1).all() and (labels[negative] == 0).all()
    assert len(set(negative.tolist())) == 6
    positive, negative = sample_balanced(torch.tensor([1, 0, 0, -1]), 8, 0.5)
    assert positive.tolist() == [0] and sorted(negative.tolist()) == [1, 2]


def test_sample_rois_adds_ground_truth_and_shifts_labels():
    model = small_model(box_batch_size_per_image=8, box_positive_fraction=0.5)
    proposals = [
        torch.tensor([[4.0, 12.0, 36.0, 40.0], [40.0, 40.0, 50.0, 50.0]]),
        torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
    ]
    sample = model.sample_rois(proposals, targets_two_images())
    rois, labels = sample["rois"], sample["roi_labels"]
    # image 0: the first proposal (IoU 28/32 with box 0) and both ground truths are foreground
    # (the second proposal lies inside box 1 with IoU 100 / 960: background)
    assert len(rois[0]) == 4 and sorted(labels[0].tolist()) == [0, 3, 8, 8]
    assert labels[0][:3].min() > 0 and labels[0][3] == 0  # foreground first
    assert labels[1].tolist() == [0] and len(rois[1]) == 1
    foreground = labels[0] > 0
    gt = targets_two_images()[0]["boxes"]
    matched = gt[sample["roi_matched_idxs"][0][foreground]]
    decoded = model.box_coder.decode(sample["regression_targets"][:4][foreground], rois[0][foreground])
    torch.testing.assert_close(decoded, matched)
    assert sample["regression_targets"][4:].abs().sum() == 0  # no ground truth: zero targets


def test_fast_rcnn_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    deltas = torch.zeros(2, 12)
    deltas[1, 4:8] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class 1's deltas of RoI 1
    labels = torch.tensor([0, 1])
    targets = torch.tensor([[9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 0.0, 1.0]])
    classifier, box = fast_rcnn_loss(logits, deltas, labels, targets)
    torch.testing.assert_close(classifier, torch.nn.functional.cross_entropy(logits, labels))
    # |0.5| and |1| above beta = 1/9: each x - beta / 2, summed over the one foreground RoI, over R = 2
    torch.testing.assert_close(box, torch.tensor((0.5 - 1 / 18 + 1 - 1 / 18) / 2))
    empty_classifier, empty_box = fast_rcnn_loss(
        torch.zeros(0, 3, requires_grad=True),
        torch.zeros(0, 12),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, 4),
    )
    assert empty_classifier == 0 and empty_box == 0 and empty_classifier.requires_grad


def test_forward_train_and_eval_outputs():
    model = small_model()
    images = torch.randn(2, 1, 64, 64)
    model.train()
    outputs = model(images, targets_two_images())
    assert outputs["image_size"] == (64, 64)
    assert outputs["anchors"].shape == (3 * (64 + 16 + 4 + 1), 4)
    assert outputs["objectness"].shape == (2, 255) and outputs["rpn_deltas"].shape == (2, 255, 4)
    assert [len(r) for r in outputs["rois"]] == [16, 16]
    assert outputs["class_logits"].shape == (32, 11) and outputs["box_deltas"].shape == (32, 44)
    assert outputs["regression_targets"].shape == (32, 4)
    losses = model.criterion(outputs, targets_two_images())
    assert set(losses) == {"loss", "rpn_objectness", "rpn_box", "classifier", "box_reg"}
    terms = sum(losses[k] for k in ("rpn_objectness", "rpn_box", "classifier", "box_reg"))
    torch.testing.assert_close(losses["loss"].detach(), terms)
    assert losses["classifier"] == pytest.approx(torch.log(torch.tensor(11.0)).item(), rel=0.2)
    losses["loss"].backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
    # without targets, even in training mode, the heads run on the (training top-n) proposals
    with torch.no_grad():
        unsampled = model(images)
    assert "roi_labels" not in unsampled and [len(r) for r in unsampled["rois"]] == [
        len(p) for p in unsampled["proposals"]
    ]
    assert max(len(p) for p in unsampled["proposals"]) <= 40
    with pytest.raises(ConfigError, match="training mode"):
        model.criterion(unsampled, targets_two_images())
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert max(len(p) for p in outputs["proposals"]) <= 20
    detections = model.postprocess(outputs, score_threshold=0.0)
    for d in detections:
        assert d["boxes"].shape[1] == 4 and d["labels"].dtype == torch.int64
        assert d["labels"].max() < NUM_CLASSES and d["boxes"].min() >= 0 and d["boxes"].max() <= 64
        assert torch.all(d["scores"][:-1] >= d["scores"][1:])


def test_criterion_without_any_ground_truth():
    model = small_model().train()
    empty = targets_two_images()[1]
    outputs = model(torch.randn(2, 1, 64, 64), [empty, empty])
    losses = model.criterion(outputs, [empty, empty])
    assert losses["rpn_box"] == 0 and losses["box_reg"] == 0
    assert losses["rpn_objectness"] > 0 and losses["classifier"] > 0
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(labels.eq(0).all() for labels in outputs["roi_labels"])


def test_postprocess_by_hand():
    model = small_model().eval()
    rois = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 70.0, 90.0]]), torch.zeros(0, 4)]
    logits = torch.full((2, 11), -10.0)
    logits[0, 4] = 10.0  # RoI 0: class 3 (index 4 with the background)
    logits[1, 0] = 10.0  # RoI 1: background
    deltas = torch.zeros(2, 44)
    deltas[0, 16:20] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 3's box: shifted by 0.1 of the width
    outputs = {"image_size": (64, 80), "rois": rois, "class_logits": logits, "box_deltas": deltas}
    first, second = model.postprocess(outputs)
    assert first["labels"].tolist() == [3]
    torch.testing.assert_close(first["boxes"], torch.tensor([[12.0, 10.0, 32.0, 30.0]]))
    torch.testing.assert_close(first["scores"], torch.softmax(logits[0], 0)[4:5])
    assert second["boxes"].shape == (0, 4) and second["scores"].shape == (0,)
    # lower threshold: the background RoI's tiny class scores appear, clipped to the 64 x 80 image
    low = model.postprocess(outputs, score_threshold=0.0, max_detections=5)[0]
    assert len(low["boxes"]) == 5 and low["boxes"][:, 3].max() <= 64
    assert model.postprocess(outputs, image_size=(20, 20))[0]["boxes"].tolist() == [[12.0, 10.0, 20.0, 20.0]]


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="anchor_sizes has 3 levels"):
        small_model(anchor_sizes=((16,), (32,), (64,)))
    with pytest.raises(ConfigError, match="num_classes"):
        FasterRCNN("resnet18", 0, in_chans=1)
    with pytest.raises(ConfigError, match="post_nms_top_n"):
        small_model(rpn_post_nms_top_n=(0, 10))
    with pytest.raises(ConfigError, match="box_positive_fraction"):
        small_model(box_positive_fraction=1.5)


@pytest.mark.slow
def test_overfits_two_images():
    torch.manual_seed(0)
    data = MNISTDetection(size=2, image_size=64, digits=(1, 2), seed=3)
    images = (torch.stack([data[i][0] for i in range(2)]).float() / 255 - 0.1) / 0.3
    targets = [data[i][1] for i in range(2)]
    model = small_model(
        fpn_channels=32, representation_size=64, sampling_ratio=1, box_batch_size_per_image=32
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    history = []
    for _ in range(80):
        losses = model.criterion(model(images, targets), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    print(f"80 steps in {time.perf_counter() - start:.1f} s; first {history[0]}, last {history[-1]}")
    assert history[-1]["loss"] < 0.25 * history[0]["loss"]
    model.eval()
    with torch.no_grad():
        detections = model.postprocess(model(images))
    for detection, target in zip(detections, targets):
        for box, label in zip(target["boxes"], target["labels"]):
            hits = (box_iou(detection["boxes"], box[None])[:, 0] > 0.5) & (detection["labels"] == label)
            assert hits.any() and detection["scores"][hits].max() > 0.5
