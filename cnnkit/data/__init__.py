"""Datasets and file formats: classification folders, bundled MNIST-5k, COCO / YOLO / VOC detection,
mask folders, generated MNIST-Det / MNIST-Seg / Shapes sets, and the collate function for detection targets.

Images are uint8 ``(C, H, W)``; a detection target is ``{"labels": int64 (N,), "boxes": float32 (N, 4)}``
with boxes ``xyxy`` in pixels; instance masks are ``masks`` uint8 ``(N, H, W)``, a semantic map is ``mask``
int64 ``(H, W)`` with ``0`` background and ``c + 1`` for class ``c``.
"""

from cnnkit.data.annotated import AnnotatedImages, ImageRecord
from cnnkit.data.classification import ImageFolder, MNIST5k, mnist5k_split_indices
from cnnkit.data.coco import COCODataset, read_coco, write_coco
from cnnkit.data.collate import collate_detection
from cnnkit.data.generated import MNISTDetection, MNISTSegmentation, Shapes
from cnnkit.data.image_io import DEFAULT_MAX_PIXELS, CorruptImageError, image_size, read_image, write_png
from cnnkit.data.masks import MaskFolder, read_mask, write_mask_folder
from cnnkit.data.statistics import DetectionStatistics, detection_statistics
from cnnkit.data.targets import check_boxes, check_labels
from cnnkit.data.voc import read_voc, write_voc
from cnnkit.data.yolo import YOLODataset, read_yolo, write_yolo

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "AnnotatedImages",
    "COCODataset",
    "CorruptImageError",
    "DetectionStatistics",
    "ImageFolder",
    "ImageRecord",
    "MNIST5k",
    "MNISTDetection",
    "MNISTSegmentation",
    "MaskFolder",
    "Shapes",
    "YOLODataset",
    "check_boxes",
    "check_labels",
    "collate_detection",
    "detection_statistics",
    "image_size",
    "mnist5k_split_indices",
    "read_coco",
    "read_image",
    "read_mask",
    "read_voc",
    "read_yolo",
    "write_coco",
    "write_mask_folder",
    "write_png",
    "write_voc",
    "write_yolo",
]
