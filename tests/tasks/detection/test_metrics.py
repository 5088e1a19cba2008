import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnnkit.data import MNISTDetection
from cnnkit.errors import DataError
from cnnkit.tasks.detection.metrics import (
    SUMMARY_KEYS,
    dataset_to_coco,
    evaluate_coco,
    plot_pr_curves,
    predictions_to_coco,
    targets_to_coco,
)

# COCO's 101-point interpolation: AP = mean over r in {0, .01, ..., 1} of max precision at recall >= r
TWO_OF_THREE_AP = (51 * 1.0 + 50 * 2 / 3) / 101


def gt_dict(boxes_per_image, labels_per_image=None, crowd_per_image=None, num_classes=1):
    targets = []
    for i, boxes in enumerate(boxes_per_image):
        n = len(boxes)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels_per_image[i] if labels_per_image else [0] * n, dtype=torch.int64),
        }
        if crowd_per_image is not None:
            target["iscrowd"] = torch.tensor(crowd_per_image[i], dtype=torch.int64)
        targets.append(target)
    classes = [f"c{k}" for k in range(num_classes)]
    return targets_to_coco(targets, [(200, 200)] * len(targets), classes), targets


def det(image_id, box_xyxy, score, category_id=1):
    x1, y1, x2, y2 = box_xyxy
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": score,
    }


A, B, FAR = [10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 160.0, 140.0], [0.0, 150.0, 20.0, 190.0]


def test_perfect_detections_give_one():
    gt, targets = gt_dict([[A, B], [B]])
    preds = [
        {"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]} for t in targets
    ]
    result = evaluate_coco(gt, predictions_to_coco(preds))
    for key in ("map", "map50", "map75", "mar_100"):
        assert result[key] == pytest.approx(1.0)
    # A is 40x40 (medium), B is 60x40 (medium): no small or large ground truth
    assert result["map_medium"] == pytest.approx(1.0)
    assert result["map_small"] == -1 and result["map_large"] == -1
    assert set(SUMMARY_KEYS) <= result.keys()


def test_hand_case_tp_fp_tp():
    gt, _ = gt_dict([[A, B]])
    # by score: TP (P=1, R=.5), FP (P=.5, R=.5), TP (P=2/3, R=1)
    detections = [det(1, A, 0.9), det(1, FAR, 0.8), det(1, B, 0.7)]
    result = evaluate_coco(gt, detections)
    assert result["map50"] == pytest.approx(TWO_OF_THREE_AP)
    assert result["map"] == pytest.approx(TWO_OF_THREE_AP)  # exact boxes: the same at every IoU threshold
    precision = result["pr_curves"]["precision"][0]
    assert precision == pytest.approx([1.0] * 51 + [2 / 3] * 50)
    assert result["pr_curves"]["recall"] == pytest.approx([r / 100 for r in range(101)])


def test_one_tp_then_fp_is_perfect_but_fp_first_halves_ap():
    gt, _ = gt_dict([[A]])
    assert evaluate_coco(gt, [det(1, A, 0.9), det(1, FAR, 0.5)])["map50"] == pytest.approx(1.0)
    assert evaluate_coco(gt, [det(1, A, 0.5), det(1, FAR, 0.9)])["map50"] == pytest.approx(0.5)


def test_localisation_between_thresholds():
    gt, _ = gt_dict([[[0.0, 0.0, 100.0, 100.0]]])
    # IoU 0.58: a true positive at thresholds .50 and .55, a miss at the 8 thresholds from .60 on
    result = evaluate_coco(gt, [det(1, [0.0, 0.0, 100.0, 58.0], 0.9)])
    assert result["map50"] == pytest.approx(1.0)
    assert result["map75"] == 0.0
    assert result["map"] == pytest.approx(2 / 10)


def test_empty_detections_and_empty_images():
    gt, _ = gt_dict([[A], []])
    result = evaluate_coco(gt, [])
    assert result["map"] == 0.0 and result["map50"] == 0.0
    # an image without ground truth: a detection there is a false positive
    assert evaluate_coco(gt, [det(1, A, 0.5), det(2, A, 0.9)])["map50"] == pytest.approx(0.5)
    assert evaluate_coco(gt, [det(1, A, 0.9), det(2, A, 0.5)])["map50"] == pytest.approx(1.0)
    no_objects, _ = gt_dict([[], []])
    assert evaluate_coco(no_objects, [det(1, A, 0.9)])["map"] == -1


def test_crowd_regions_are_neither_objects_nor_false_positives():
    gt, _ = gt_dict([[A, B]], crowd_per_image=[[0, 1]])
    # B is a crowd: not needed for full recall, and a detection on it is not a false positive
    assert evaluate_coco(gt, [det(1, A, 0.8)])["map50"] == pytest.approx(1.0)
    assert evaluate_coco(gt, [det(1, B, 0.9), det(1, A, 0.8)])["map50"] == pytest.approx(1.0)
    plain, _ = gt_dict([[A, B]])
    assert evaluate_coco(plain, [det(1, A, 0.8)])["map50"] == pytest.approx(51 / 101)


def test_many_classes_per_class_ap_equals_single_class_cocoeval(generator):
    num_classes = 12
    boxes, labels = [], []
    for _ in range(6):
        xy = torch.randint(0, 150, (3, 2), generator=generator).float()
        wh = torch.randint(8, 50, (3, 2), generator=generator).float()
        boxes.append(torch.cat([xy, xy + wh], 1).tolist())
        labels.append(torch.randint(0, num_classes, (3,), generator=generator).tolist())
    gt, targets = gt_dict(boxes, labels, num_classes=num_classes)
    preds = []
    for t in targets:
        noisy = t["boxes"] + torch.randn(t["boxes"].shape, generator=generator) * 4
        wrong = (t["labels"] + torch.randint(0, 2, t["labels"].shape, generator=generator)) % num_classes
        preds.append({"boxes": noisy, "scores": torch.rand(len(noisy), generator=generator), "labels": wrong})
    detections = predictions_to_coco(preds)
    result = evaluate_coco(gt, detections)
    assert len(result["per_class"]) == num_classes
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        for entry in result["per_class"]:
            single = COCOeval(coco_gt, coco_dt, iouType="bbox")
            single.params.catIds = [entry["category_id"]]
            single.evaluate()
            single.accumulate()
            single.summarize()
            assert entry["ap"] == pytest.approx(single.stats[0], abs=1e-9)
            assert entry["ap50"] == pytest.approx(single.stats[1], abs=1e-9)
    valid = [c["ap"] for c in result["per_class"] if c["ap"] > -1]
    assert result["map"] == pytest.approx(sum(valid) / len(valid))
    assert 0 < result["map"] < 1


def test_converters():
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 4.0, 8.0]]), "labels": torch.tensor([2])}]
    gt = targets_to_coco(targets, [(10, 20)], ["a", "b", "c"])
    assert gt["images"] == [{"id": 1, "width": 20, "height": 10, "file_name": "000000.png"}]
    assert gt["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 6.0], "area": 18.0, "iscrowd": 0}
    ]
    assert [c["name"] for c in gt["categories"]] == ["a", "b", "c"]
    preds = [
        {
            "boxes": torch.tensor([[1.0, 2.0, 4.0, 8.0]]),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([0]),
        }
    ]
    assert predictions_to_coco(preds, image_ids=[7]) == [
        {"image_id": 7, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}
    ]
    with pytest.raises(DataError, match="out of range"):
        targets_to_coco(targets, [(10, 20)], ["a"])


def test_dataset_to_coco_and_ground_truth_scores_one():
    dataset = MNISTDetection(size=3, image_size=64, seed=1)
    gt = dataset_to_coco(dataset)
    assert len(gt["images"]) == 3 and len(gt["categories"]) == 10
    assert len(gt["annotations"]) == sum(len(dataset[i][1]["labels"]) for i in range(3))
    preds = [{**t, "scores": torch.ones(len(t["labels"]))} for _, t in (dataset[i] for i in range(3))]
    assert evaluate_coco(gt, predictions_to_coco(preds))["map"] == pytest.approx(1.0)


def test_bad_input():
    gt, _ = gt_dict([[A]])
    with pytest.raises(DataError, match="image ids"):
        evaluate_coco(gt, [det(5, A, 0.9)])
    with pytest.raises(DataError, match="missing key"):
        evaluate_coco({"images": []}, [])


def test_annotations_without_area_or_crowd_flag_get_defaults():
    gt = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "annotations": [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    assert evaluate_coco(gt, [det(1, A, 0.9)])["map"] == pytest.approx(1.0)
    assert "area" not in gt["annotations"][0]  # the caller's dict is left alone


def test_plot_pr_curves_writes_png(tmp_path):
    gt, _ = gt_dict([[A, B]])
    result = evaluate_coco(gt, [det(1, A, 0.9), det(1, FAR, 0.8), det(1, B, 0.7)])
    path = plot_pr_curves(result, tmp_path / "pr.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
