"""Tasks and their models: the task contract (:mod:`cnnkit.tasks.base`), classification, detection (and
instance segmentation) and semantic segmentation.

Importing this package registers the built-in tasks (:func:`register_task`) and their models (in the one
model registry of :mod:`cnnkit.models.registry`, each card naming its task), so ``create_model``,
``list_models`` and ``model_card`` re-exported here see every model.
"""

from __future__ import annotations

from cnnkit.models.registry import create_model, list_models, model_card, register_model
from cnnkit.tasks.base import (
    ImageInfo,
    Prediction,
    PredictOptions,
    Task,
    get_task,
    list_tasks,
    register_task,
    resolve_task,
)
from cnnkit.tasks.classification import ClassificationTask, TopK
from cnnkit.tasks.detection import (  # noqa: F401 (registers the detectors)
    anchor_free,
    fast_rcnn,
    faster_rcnn,
    mask_rcnn,
    rcnn,
    yolo,
)
from cnnkit.tasks.detection.task import Detections, DetectionTask, InstanceSegmentationTask
from cnnkit.tasks.segmentation import ClassMap, SegmentationTask

__all__ = [
    "ClassMap",
    "ClassificationTask",
    "DetectionTask",
    "Detections",
    "ImageInfo",
    "InstanceSegmentationTask",
    "PredictOptions",
    "Prediction",
    "SegmentationTask",
    "Task",
    "TopK",
    "create_model",
    "get_task",
    "list_models",
    "list_tasks",
    "model_card",
    "register_model",
    "register_task",
    "resolve_task",
]
