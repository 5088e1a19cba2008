"""DetectionTask / DetectionEvaluator: preparation, COCO box and mask mAP against pycocotools by hand."""

import pytest
import torch
from pycocotools import mask as mask_utils

from cnnkit.tasks.detection.metrics import encode_masks, evaluate_coco, predictions_to_coco, targets_to_coco
from cnnkit.tasks.detection.task import DetectionEvaluator, DetectionTask


def _square_masks(boxes, size=32):
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = 1
    return masks


def _targets():
    boxes = [[[2, 2, 12, 12], [16, 16, 30, 28]], [[4, 8, 20, 24]]]
    labels = [[0, 1], [1]]
    return [
        {
            "boxes": torch.tensor(b, dtype=torch.float32),
            "labels": torch.tensor(lab),
            "masks": _square_masks(b),
            "image_size": torch.tensor([32, 32]),
        }
        for b, lab in zip(boxes, labels)
    ]


def test_evaluator_perfect_predictions_score_one_for_boxes_and_masks():
    targets = _targets()

    def postprocess(outputs, image_size):
        assert image_size == (32, 32)
        return [
            {
                "boxes": t["boxes"],
                "scores": torch.ones(len(t["boxes"])),
                "labels": t["labels"],
                "masks": t["masks"].float(),
            }
            for t in outputs
        ]

    evaluator = DetectionEvaluator(postprocess, ["a", "b"], masks=True)
    evaluator.update(targets, targets)
    result = evaluator.compute()
    assert result["map"] == pytest.approx(1.0) and result["mask_map"] == pytest.approx(1.0)
    assert result["images"] == 2 and [c["name"] for c in result["mask_per_class"]] == ["a", "b"]


def test_mask_map_equals_pycocotools_on_rle_by_hand():
    targets = _targets()
    # One prediction per object, the mask shifted by 4 pixels: IoU below 0.5 for the small square only.
    preds = []
    for t in targets:
        shifted = torch.roll(t["masks"], shifts=4, dims=2)
        preds.append(
            {
                "boxes": t["boxes"],
                "scores": torch.tensor([0.9] * len(t["boxes"])),
                "labels": t["labels"],
                "masks": shifted,
            }
        )
    gt = targets_to_coco(targets, [(32, 32)] * 2, ["a", "b"])
    dets = predictions_to_coco(preds)
    result = evaluate_coco(gt, dets, "segm")
    ious = [
        mask_utils.iou([d["segmentation"]], [a["segmentation"]], [0])[0, 0]
        for d, a in zip(dets, gt["annotations"])
    ]
    assert ious[0] < 0.5 < min(ious[1:])  # small square (10 px wide) keeps IoU 0.43, the others keep > 0.5
    assert result["map50"] == pytest.approx(0.5)  # class a: AP 0; class b: both found, AP 1
    assert gt["annotations"][0]["area"] == 100.0  # the mask's pixel count


def test_encode_masks_round_trip():
    masks = _square_masks([[1, 2, 5, 9], [0, 0, 32, 32]])
    decoded = mask_utils.decode([{**r, "counts": r["counts"].encode()} for r in encode_masks(masks)])
    assert torch.equal(torch.from_numpy(decoded).permute(2, 0, 1), masks)


def test_prepare_records_image_size_and_normalizes():
    task = DetectionTask(torch.nn.Identity(), ["a"], mean=(0.5,), std=(0.5,))
    images = torch.full((2, 1, 20, 30), 255, dtype=torch.uint8)
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    x, t = task.prepare((images, targets), train=False, device=torch.device("cpu"))
    assert x.dtype == torch.float32 and x.eq(1.0).all()
    assert [tt["image_size"].tolist() for tt in t] == [[20, 30], [20, 30]]
