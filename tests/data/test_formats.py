"""COCO / YOLO / VOC / mask folders: round trips of a generated set, and every error path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools.coco import COCO

from cnnkit.data import (
    MaskFolder,
    MNISTDetection,
    MNISTSegmentation,
    read_coco,
    read_voc,
    read_yolo,
    write_coco,
    write_mask_folder,
    write_voc,
    write_yolo,
)
from cnnkit.data.yolo import YOLOSplit, read_dataset_yaml
from cnnkit.errors import DataError


@pytest.fixture(scope="module")
def detection():
    return MNISTDetection("val", size=6, image_size=64, digits=(0, 3), scale=(0.75, 1.5), seed=1)


def assert_same_items(original, read_back, box_atol=0.0):
    assert len(read_back) == len(original)
    for i in range(len(original)):
        image, target = original[i]
        image2, target2 = read_back[i]
        assert torch.equal(image2, image)
        assert torch.equal(target2["labels"], target["labels"])
        assert target2["boxes"].dtype == torch.float32
        torch.testing.assert_close(target2["boxes"], target["boxes"], atol=box_atol, rtol=0)


def test_fixture_has_empty_and_multi_object_items(detection):
    counts = [len(detection[i][1]["labels"]) for i in range(len(detection))]
    assert 0 in counts and max(counts) >= 2


def test_coco_round_trip(detection, tmp_path):
    write_coco(detection, tmp_path / "ann.json", tmp_path / "images")
    data = read_coco(tmp_path / "ann.json", tmp_path / "images", mode="GRAY")
    assert data.classes == detection.classes and data.category_ids == list(range(1, 11))
    assert data.image_ids == list(range(1, 7))
    assert_same_items(detection, data)


def test_yolo_round_trip(detection, tmp_path):
    write_yolo(detection, tmp_path / "yolo")
    data = read_yolo(tmp_path / "yolo", mode="GRAY")
    assert data.classes == detection.classes
    assert_same_items(detection, data, box_atol=1e-3)


def test_yolo_dataset_yaml_is_the_standard_form(detection, tmp_path):
    root = write_yolo({"train": detection, "val": detection, "test": detection}, tmp_path / "set")
    described = yaml.safe_load((root / "data.yaml").read_text())
    assert described == {
        "path": str(root.resolve()),
        "train": "train/images",
        "val": "val/images",
        "test": "test/images",
        "nc": 10,
        "names": dict(enumerate(detection.classes)),
    }
    splits, names = read_dataset_yaml(root / "data.yaml")
    assert names == detection.classes and list(splits) == ["train", "val", "test"]
    assert splits["val"] == YOLOSplit(root / "val" / "images", root / "val" / "labels")
    assert_same_items(detection, read_yolo(splits["val"], names, mode="GRAY"), box_atol=1e-3)
    with pytest.raises(DataError, match="already exists"):
        write_yolo({"train": detection, "val": detection}, root)
    with pytest.raises(DataError, match="train and val"):
        write_yolo({"train": detection}, tmp_path / "half")
    # moved with its YAML: the stale absolute path falls back to the YAML's folder
    moved = root.rename(tmp_path / "moved")
    assert read_dataset_yaml(moved / "data.yaml")[0]["train"].images == moved / "train" / "images"


def test_yolo_dataset_yaml_other_layout_and_errors(detection, tmp_path):
    # the images/<split> + labels/<split> layout, a relative path and names as a list
    write_yolo(detection, tmp_path / "tmp")
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "labels").mkdir()
    (tmp_path / "tmp" / "images").rename(tmp_path / "ds" / "images" / "train")
    (tmp_path / "tmp" / "labels").rename(tmp_path / "ds" / "labels" / "train")
    (tmp_path / "cfg").mkdir()
    spec = {"path": "../ds", "train": "images/train", "val": "images/train", "names": ["a"] * 10}
    (tmp_path / "cfg" / "d.yaml").write_text(yaml.safe_dump(spec))
    splits, names = read_dataset_yaml(tmp_path / "cfg" / "d.yaml")
    assert splits["train"].labels == (tmp_path / "cfg" / "../ds/labels/train")
    assert_same_items(detection, read_yolo(splits["train"], names, mode="GRAY"), box_atol=1e-3)
    (tmp_path / "cfg" / "d.yaml").write_text(yaml.safe_dump({**spec, "val": "images/val"}))
    with pytest.raises(DataError, match="val: image folder .* not found"):
        read_dataset_yaml(tmp_path / "cfg" / "d.yaml")
    (tmp_path / "cfg" / "d.yaml").write_text(yaml.safe_dump({**spec, "val": ["images/train"]}))
    with pytest.raises(DataError, match="expected one image folder"):
        read_dataset_yaml(tmp_path / "cfg" / "d.yaml")


def test_voc_round_trip(detection, tmp_path):
    write_voc(detection, tmp_path / "voc")
    xml = (tmp_path / "voc" / "Annotations" / "000000.xml").read_text()
    assert "<xmin>" in xml and "<width>64</width>" in xml
    assert_same_items(detection, read_voc(tmp_path / "voc", detection.classes, mode="GRAY"))


def test_coco_instance_masks_round_trip(tmp_path):
    seg = MNISTSegmentation("val", size=3, image_size=48, digits=(2, 3), scale=(0.75, 1.2), seed=1)
    write_coco(seg, tmp_path / "ann.json", tmp_path / "images")
    data = read_coco(tmp_path / "ann.json", tmp_path / "images", with_masks=True, mode="GRAY")
    for i in range(len(seg)):
        _, target = seg[i]
        _, target2 = data[i]
        assert target2["masks"].dtype == torch.uint8
        assert torch.equal(target2["masks"], target["masks"])
        assert int(target["masks"].sum()) > 0


def test_coco_polygon_and_rle_match_pycocotools(tmp_path):
    Image.new("RGB", (20, 16)).save(tmp_path / "a.png")
    rle = {"size": [16, 20], "counts": [5 * 16 + 3, 4, 12, 4, 320 - 5 * 16 - 3 - 20]}
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "width": 20, "height": 16}],
        "categories": [{"id": 3, "name": "thing"}, {"id": 9, "name": "other"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 9,
                "bbox": [2, 1, 10, 8],
                "iscrowd": 0,
                "segmentation": [[2, 1, 12, 1, 12, 9, 2, 9]],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 3,
                "bbox": [5, 3, 2, 4],
                "iscrowd": 0,
                "segmentation": rle,
            },
            {
                "id": 3,
                "image_id": 7,
                "category_id": 3,
                "bbox": [0, 0, 20, 16],
                "iscrowd": 1,
                "segmentation": rle,
            },
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    image, target = read_coco(tmp_path / "ann.json", tmp_path, with_masks=True)[0]
    assert image.shape == (3, 16, 20)
    assert target["labels"].tolist() == [1, 0]  # crowd left out; ids 3, 9 -> labels 0, 1
    assert target["boxes"].tolist() == [[2, 1, 12, 9], [5, 3, 7, 7]]
    oracle = COCO(str(tmp_path / "ann.json"))
    for j, ann_id in enumerate((1, 2)):
        expected = oracle.annToMask(oracle.anns[ann_id])
        assert np.array_equal(target["masks"][j].numpy(), expected)
    assert int(target["masks"][1].sum()) == 8


def test_mask_folder_round_trip_and_bad_values(tmp_path):
    seg = MNISTSegmentation("train", size=2, image_size=40, digits=(1, 2), scale=(0.75, 1.0), seed=5)
    write_mask_folder(seg, tmp_path / "img", tmp_path / "msk")
    data = MaskFolder(tmp_path / "img", tmp_path / "msk", classes=seg.classes, mode="GRAY")
    for i in range(2):
        image, target = data[i]
        assert torch.equal(image, seg[i][0]) and torch.equal(target["mask"], seg[i][1]["mask"])
        assert target["mask"].dtype == torch.int64
    Image.fromarray(np.full((40, 40), 12, dtype=np.uint8)).save(tmp_path / "msk" / "000001.png")
    with pytest.raises(
        DataError, match=r"000001.png: mask values \[12\] are out of range: expected 0 \(background\), 1..10"
    ):
        data[1]
    (tmp_path / "msk" / "000000.png").unlink()
    with pytest.raises(DataError, match="000000.png: mask file not found"):
        MaskFolder(tmp_path / "img", tmp_path / "msk", classes=seg.classes)


def test_writers_refuse_to_overwrite(detection, tmp_path):
    write_coco(detection, tmp_path / "ann.json", tmp_path / "images")
    (tmp_path / "ann.json").write_text("mine")
    with pytest.raises(DataError, match="ann.json: already exists"):
        write_coco(detection, tmp_path / "ann.json", tmp_path / "images")
    assert (tmp_path / "ann.json").read_text() == "mine"
    write_yolo(detection, tmp_path / "y")
    with pytest.raises(DataError, match="data.yaml: already exists"):
        write_yolo(detection, tmp_path / "y")
    write_voc(detection, tmp_path / "v")
    with pytest.raises(DataError, match="000000.png: already exists"):
        write_voc(detection, tmp_path / "v")
    write_voc(detection, tmp_path / "v", overwrite=True)


# --- error paths ---------------------------------------------------------------------------------


def small_coco(tmp_path, **annotation):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    ann = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0, **annotation}
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [ann],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json"


def test_coco_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json: COCO annotation file not found"):
        read_coco(tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_coco(tmp_path / "bad.json", tmp_path)
    (tmp_path / "bad.json").write_text('{"images": [{"id": 1}], "annotations": [], "categories": []}')
    with pytest.raises(DataError, match=r"bad.json: every entry of 'images' needs \['id', 'file_name'\]"):
        read_coco(tmp_path / "bad.json", tmp_path)
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(
        DataError, match=r"bad.json: not a COCO file; missing keys \['annotations', 'categories'\]"
    ):
        read_coco(tmp_path / "bad.json", tmp_path)
    with pytest.raises(DataError, match=r"annotation id 5\): category_id 4 is out of range"):
        read_coco(small_coco(tmp_path, category_id=4), tmp_path)
    with pytest.raises(DataError, match=r"annotation id 5\): bbox must be"):
        read_coco(small_coco(tmp_path, bbox=[1, 2, 3]), tmp_path)
    bad_rle = {"size": [20, 30], "counts": [10, 5]}
    with pytest.raises(DataError, match=r"annotation id 5\): RLE counts sum to 15, not height \* width"):
        read_coco(small_coco(tmp_path, segmentation=bad_rle), tmp_path, with_masks=True)
    with pytest.raises(DataError, match=r"annotation id 5\): polygon segmentation must be"):
        read_coco(small_coco(tmp_path, segmentation=[[1, 2, 3, 4]]), tmp_path, with_masks=True)
    wrong_size = read_coco(
        small_coco(tmp_path, segmentation={"size": [10, 60], "counts": [600]}), tmp_path, with_masks=True
    )
    with pytest.raises(DataError, match=r"RLE size \[10, 60\] is not the image's \[20, 30\]"):
        wrong_size[0]
    data = read_coco(small_coco(tmp_path, bbox=[25, 2, 7, 4]), tmp_path)
    with pytest.raises(
        DataError,
        match=r"ann.json \(image id 1\): box 0 \[25.0, 2.0, 32.0, 6.0\] \(xyxy px\) lies outside the 30x20 image",
    ):
        data[0]
    within_tolerance = read_coco(small_coco(tmp_path, bbox=[25, 2, 5.5, 4]), tmp_path)[0][1]["boxes"]
    assert within_tolerance.tolist() == [[25, 2, 30, 6]]
    (tmp_path / "a.png").unlink()
    with pytest.raises(
        DataError, match=r"a.png: image file not found \(listed in .*ann.json \(image id 1\)\)"
    ):
        read_coco(tmp_path / "ann.json", tmp_path)


def test_coco_declared_size_and_corrupt_image(tmp_path):
    path = small_coco(tmp_path)
    Image.new("RGB", (31, 20)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="image is 31x20 but .*declares 30x20"):
        read_coco(path, tmp_path)[0]
    (tmp_path / "a.png").write_bytes(b"garbage")
    data = read_coco(path, tmp_path, skip_corrupt=True)
    assert len(data) == 0 and data.skipped == 1 and data.skipped_files == [tmp_path / "a.png"]


def yolo_root(tmp_path, line):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "x.png")
    (tmp_path / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n\n" + line + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "line, problem",
    [
        ("1 0.5 0.5 0.2", "expected 5 columns 'class cx cy w h', got 4"),
        ("1 0.5 0.5 0.2 0.2 0.9", "expected 5 columns 'class cx cy w h', got 6"),
        ("a 0.5 0.5 0.2 0.2", "class 'a' is not an integer"),
        ("3 0.5 0.5 0.2 0.2", r"class 3 is out of range \[0, 3\)"),
        ("-1 0.5 0.5 0.2 0.2", r"class -1 is out of range \[0, 3\)"),
        ("1 0.5 zero 0.2 0.2", "coordinates must be numbers"),
        ("1 1.00001 0.5 0.2 0.2", r"cx = 1.00001 is outside \[0, 1\]"),
        ("1 0.5 0.5 nan 0.2", r"w = nan is outside \[0, 1\]"),
        ("1 0.5 0.5 0.2 -0.01", r"h = -0.01 is outside \[0, 1\]"),
    ],
)
def test_yolo_bad_line_names_file_and_line(tmp_path, line, problem):
    root = yolo_root(tmp_path, line)
    with pytest.raises(DataError, match=rf"labels/x.txt:3: {problem}"):
        read_yolo(root, classes=["a", "b", "c"])


def test_yolo_tolerances_boxes_and_names(tmp_path):
    root = yolo_root(tmp_path, "2 1.0000005 0.5 0.5 0.2")  # within 1e-6; right edge at 1.25 W: outside
    with pytest.raises(DataError, match="data.yaml: YOLO data.yaml not found"):
        read_yolo(root)
    (root / "data.yaml").write_text("names: {0: a, 1: b, 2: c}\n")
    data = read_yolo(root)
    assert data.classes == ["a", "b", "c"]
    with pytest.raises(
        DataError,
        match=r"labels/x.txt: box 1 \[30.0, 8.0, 50.0, 12.0\] \(xyxy px\) lies outside the 40x20 image",
    ):
        data[0]
    (root / "labels" / "x.txt").write_text("2 0.9 0.5 0.2 0.2\n")  # edge 0.1 px past 40 px: clipped
    image, target = read_yolo(root)[0]
    assert target["labels"].tolist() == [2]
    torch.testing.assert_close(target["boxes"], torch.tensor([[32.0, 8.0, 40.0, 12.0]]))
    (root / "labels" / "x.txt").unlink()
    assert read_yolo(root)[0][1]["boxes"].shape == (0, 4)


def test_voc_errors(tmp_path):
    with pytest.raises(DataError, match="Annotations: VOC Annotations folder not found"):
        read_voc(tmp_path, ["a"])
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "JPEGImages" / "p.jpg")
    xml = "<annotation><filename>p.jpg</filename><object><name>{name}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>{xmax}</xmax><ymax>4</ymax></bndbox></object></annotation>"
    (tmp_path / "Annotations" / "p.xml").write_text(xml.format(name="dgo", xmax=5))
    with pytest.raises(
        DataError,
        match=r"p.xml \(object 0\): class 'dgo' is not in classes \['dog', 'cat'\]; did you mean 'dog'",
    ):
        read_voc(tmp_path, ["dog", "cat"])
    (tmp_path / "Annotations" / "p.xml").write_text(xml.format(name="dog", xmax=12))
    with pytest.raises(
        DataError, match=r"p.xml: box 0 \[0.0, 0.0, 12.0, 4.0\] \(xyxy px\) lies outside the 10x10 image"
    ):
        read_voc(tmp_path, ["dog", "cat"])[0]
    (tmp_path / "Annotations" / "p.xml").write_text("<annotation><filename>p.jpg")
    with pytest.raises(DataError, match="p.xml: not valid XML"):
        read_voc(tmp_path, ["dog"])
    with pytest.raises(DataError, match="Main/val.txt: VOC image set list not found"):
        read_voc(tmp_path, ["dog"], image_set="val")
