import pytest
import torch
from torchvision import ops

import cnnkit
from cnnkit.data import MNISTDetection
from cnnkit.errors import ConfigError
from cnnkit.export.formats import check_exportable
from cnnkit.tasks.detection.boxes import BoxCoder
from cnnkit.tasks.detection.fast_rcnn import FastRCNN
from cnnkit.tasks.detection.proposals import SelectiveSearch
from cnnkit.tasks.detection.rcnn import (
    RCNN,
    context_boxes,
    fit_box_regressor,
    fit_linear_svm,
    hard_negatives,
    negative_mask,
    train_svm_with_mining,
    warp_regions,
)

NUM_CLASSES = 10
PROPOSALS = {"workers": 1, "cache": False}


def small_rcnn(**changes):
    torch.manual_seed(0)
    options = dict(in_chans=1, warp_size=32, representation_size=16, svm_images=4, proposals=PROPOSALS)
    return RCNN("mobilenet_v3_small", NUM_CLASSES, **{**options, **changes})


def small_fast_rcnn(**changes):
    torch.manual_seed(0)
    options = dict(in_chans=1, representation_size=16, proposals=PROPOSALS)
    return FastRCNN("mobilenet_v3_small", NUM_CLASSES, **{**options, **changes})


def test_context_padding_leaves_p_pixels_around_the_box_in_the_warp():
    boxes = torch.tensor([[10.0, 20.0, 205.0, 215.0]])  # 195 px: 227 - 2 * 16
    assert torch.allclose(context_boxes(boxes, 227, 16), torch.tensor([[-6.0, 4.0, 221.0, 231.0]]))
    assert torch.equal(context_boxes(boxes, 64, 0), boxes)
    with pytest.raises(ConfigError, match="context padding"):
        context_boxes(boxes, 32, 16)


def test_warp_regions_crops_resizes_and_fills_outside_with_zero():
    image = torch.arange(64.0).reshape(1, 1, 8, 8) + 1
    whole = warp_regions(image, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], 8, 0)
    assert whole.shape == (1, 1, 8, 8)
    assert torch.allclose(
        whole[..., 1:-1, 1:-1], image[..., 1:-1, 1:-1]
    )  # a ramp: bilinear samples are exact
    padded = warp_regions(image, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], 16, 4)  # context beyond the image
    assert (
        padded.shape == (1, 1, 16, 16)
        and (padded[..., :3, :] == 0).all()
        and (padded[..., 5:11, 5:11] > 0).all()
    )


def test_negative_mask_is_per_class_below_the_threshold():
    ious = torch.tensor([[0.9, 0.2, 0.0, 0.35], [0.1, 0.5, 0.29, 0.0]])  # two boxes, of classes 3 and 5
    mask = negative_mask(ious, torch.tensor([3, 5]), NUM_CLASSES, 0.3)
    assert mask.shape == (4, NUM_CLASSES)
    assert mask[:, 3].tolist() == [False, True, True, False]
    assert mask[:, 5].tolist() == [True, False, True, True]
    assert mask[:, [0, 1, 2, 4, 6, 7, 8, 9]].all()  # no box of these classes: every proposal is negative
    assert negative_mask(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), 2).all()


def test_hard_negatives_are_the_ones_inside_the_margin():
    assert hard_negatives(torch.tensor([-3.0, -1.0, -0.5, 2.0, -1.01])).tolist() == [2, 3]


def separable(n=60, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=g)
    x = torch.randn(n, dim, generator=g)
    score = x @ direction
    keep = score.abs() > 0.5  # a gap around the separating plane
    return x[keep], (score[keep] > 0).long(), direction


def test_linear_svm_separates_separable_features():
    x, y, _ = separable()
    w, b = fit_linear_svm(x, y, c=10.0)
    margins = torch.where(y > 0, 1.0, -1.0) * (x @ w + b)
    assert (margins > 0).all()


def test_mining_keeps_only_hard_negatives_and_still_separates():
    x, y, direction = separable(400)
    positives, negatives = x[y == 1], x[y == 0]
    far = negatives - 20 * direction / direction.norm()  # easy negatives, far behind the margin
    w, b = train_svm_with_mining(positives, torch.cat([negatives, far]), chunk=50, c=10.0)
    assert (positives @ w + b > 0).all() and (negatives @ w + b < 0).all()
    assert (far @ w + b < -1).all()  # easy: never inside the margin, never needed in the cache


def test_box_regression_targets_round_trip_and_ridge_recovers_a_linear_map():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    proposals = torch.tensor([[10.0, 10.0, 30.0, 40.0], [5.0, 50.0, 25.0, 60.0]])
    gt = torch.tensor([[12.0, 8.0, 33.0, 41.0], [4.0, 49.0, 27.0, 62.0]])
    assert torch.allclose(coder.decode(coder.encode(gt, proposals), proposals), gt, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    features, weights = torch.randn(200, 6, generator=g), torch.randn(7, 4, generator=g)
    targets = torch.cat([features, torch.ones(200, 1)], 1) @ weights
    assert torch.allclose(fit_box_regressor(features, targets, ridge=0.0), weights, atol=1e-4)
    shrunk = fit_box_regressor(features, targets, ridge=1e4)
    assert shrunk[:-1].abs().sum() < weights[:-1].abs().sum() / 5  # lambda shrinks the weights, not the bias


def test_fast_rcnn_roi_pooling_matches_torchvision():
    model = small_fast_rcnn()
    features = torch.randn(2, 48, 8, 8)
    rois = [
        torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 50.0, 40.0]]),
        torch.tensor([[5.0, 5.0, 30.0, 90.0]]),
    ]
    pooled = model.pool(features, rois)
    assert pooled.shape == (3, 48, 7, 7)
    assert torch.equal(pooled, ops.roi_pool(features, rois, 7, 1 / 16))
    aligned = small_fast_rcnn(pooler="roi_align", roi_size=5).pool(features, rois)
    assert torch.equal(aligned, ops.roi_align(features, rois, 5, 1 / 16, 2, aligned=True))


def test_fast_rcnn_samples_a_quarter_foreground_and_no_background_below_0_1():
    model = small_fast_rcnn()
    gt = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    g = torch.Generator().manual_seed(0)
    shift = torch.randint(-6, 7, (60, 4), generator=g).float()
    near = gt + shift  # IoU >= 0.5: foreground
    half = torch.tensor([[40.0, 20.0, 80.0, 60.0]]) + shift.abs()  # IoU in [0.1, 0.5)
    far = torch.tensor([[90.0, 90.0, 120.0, 120.0]]).expand(30, 4)  # IoU 0
    proposals = [torch.cat([near, half, far])]
    targets = [{"boxes": gt, "labels": torch.tensor([4])}]
    torch.manual_seed(0)
    sample = model.sample_rois(model.background_candidates(proposals, targets), targets)
    labels = sample["roi_labels"][0]
    assert len(labels) == 64 and int((labels == 5).sum()) == 16 and int((labels == 0).sum()) == 48
    iou = ops.box_iou(gt, sample["rois"][0])[0]
    assert (
        (iou[labels == 0] >= 0.1).all() and (iou[labels == 0] < 0.5).all() and (iou[labels == 5] >= 0.5).all()
    )


def canvases():
    images = torch.zeros(2, 1, 64, 64)
    images[0, 0, 8:40, 10:20] = 1.0
    images[1, 0, 30:50, 30:60] = 1.0
    targets = [
        {"boxes": torch.tensor([[10.0, 8.0, 20.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 30.0, 60.0, 50.0]]), "labels": torch.tensor([7])},
    ]
    return images, targets


@pytest.mark.parametrize("build", [small_rcnn, small_fast_rcnn])
def test_train_and_eval_outputs_and_loss(build):
    model = build().train()
    images, targets = canvases()
    outputs = model(images, targets)
    losses = model.criterion(outputs, targets)
    assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad
    losses["loss"].backward()
    assert model.box_head.fc6.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model(images)
        detections = model.postprocess(outputs, score_threshold=0.0)
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
    with pytest.raises(ConfigError, match="sampled"):
        model.criterion(outputs, targets)


@pytest.mark.parametrize("build", [small_rcnn, small_fast_rcnn])
def test_an_image_without_proposals_gives_no_detections(build):
    model = build(proposals={**PROPOSALS, "min_size": 1000}).eval()
    with torch.no_grad():
        outputs = model(canvases()[0])
        detections = model.postprocess(outputs, score_threshold=0.0)
    assert [len(p) for p in outputs["proposals"]] == [0, 0]
    assert all(len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) == 0 for d in detections)


def test_rcnn_fits_svms_and_regressors_after_its_last_epoch_only():
    model = small_rcnn()
    images, targets = canvases()
    model.after_train_epoch([(images, targets)], epoch=0, epochs=2)
    assert not bool(model.fitted)
    model.after_train_epoch([(images, targets)], epoch=1, epochs=2)
    assert bool(model.fitted) and model.svm_weight.abs().sum() > 0 and model.feature_scale[0] != 1
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    scores = outputs["svm_scores"]
    assert scores.shape == (len(torch.cat(outputs["rois"])), NUM_CLASSES)
    state = model.state_dict()
    assert {"svm_weight", "svm_bias", "bbox_weight", "feature_scale", "fitted"} <= set(state)


def test_registered_cards_say_detection_and_not_exportable():
    for name in ("rcnn", "fast_rcnn"):
        card = cnnkit.model_card(name)
        assert card.task == "detection"
        with pytest.raises(ConfigError, match="cannot be exported"):
            check_exportable(card)


@pytest.mark.parametrize(
    "model, options, run_options",
    [
        # with an EMA of weights, the SVMs are fitted on the EMA copy: the one evaluated and saved
        ("rcnn", {"warp_size": 32, "svm_images": 4}, {"ema_decay": 0.5}),
        ("fast_rcnn", {"batch_size_per_image": 16}, {}),
    ],
)
def test_trains_in_one_command_then_loads_predicts_and_evaluates(tmp_path, model, options, run_options):
    run = cnnkit.train(
        recipe="none",
        task="detection",
        model=model,
        backbone="mobilenet_v3_small",
        data={"name": "mnist-det", "train_size": 4, "val_size": 2, "batch_size": 2},
        epochs=1,
        augment=[],
        progress=False,
        plots=False,
        output_dir=str(tmp_path / model),
        model_kwargs={
            "representation_size": 16,
            "proposals": {"workers": 1, "cache": str(tmp_path)},
            **options,
        },
        **run_options,
    )
    assert 0.0 <= run.metrics["map50"] <= 1.0 and run.metrics["images"] == 2
    predictor = cnnkit.load(run.dir)
    if model == "rcnn":  # its SVMs were fitted after the (only) epoch, and saved
        assert bool(predictor.model.fitted)
    blank, (digits, _) = torch.zeros(1, 50, 70, dtype=torch.uint8), MNISTDetection("val", size=1)[0]
    answers = predictor.predict([blank, digits], conf=0.0)
    assert all(set(d) == {"label", "score", "box"} for a in answers for d in a["detections"])
    predictor.model.proposals = SelectiveSearch(
        min_size=200, cache=False, workers=1
    )  # keeps no box of 128 px
    assert [a["detections"] for a in predictor.predict([blank, digits], conf=0.0)] == [[], []]
    assert cnnkit.evaluate(run.dir)["map50"] == pytest.approx(run.metrics["map50"])


def test_early_stopping_is_refused_for_a_model_with_a_final_stage(tmp_path):
    with pytest.raises(ConfigError, match="early_stopping_patience: rcnn fits its last stage"):
        cnnkit.train(
            recipe="none",
            task="detection",
            model="rcnn",
            backbone="mobilenet_v3_small",
            data={"name": "mnist-det", "train_size": 4, "val_size": 2, "batch_size": 2},
            epochs=2,
            early_stopping_patience=1,
            progress=False,
            output_dir=str(tmp_path / "run"),
            model_kwargs={"representation_size": 16, "proposals": PROPOSALS},
        )
