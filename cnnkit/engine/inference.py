"""Use a trained model: load a run or checkpoint, evaluate it on a dataset, predict images.

``load(path)`` gives a :class:`Predictor` whose ``predict(images)`` returns what ``cnnkit predict --json``
prints; ``evaluate(path)`` returns what ``cnnkit eval --json`` prints. Both go through the run's task
(:class:`cnnkit.tasks.base.Task`): its input geometry (:meth:`~cnnkit.tasks.base.Task.preprocess`), its
normalisation and its post-processing into the original image's pixels.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit.engine.build import build_data, build_model, build_task, eval_loader
from cnnkit.engine.checkpoint import read_metadata
from cnnkit.engine.config import TrainConfig, config_from_dict
from cnnkit.errors import DataError
from cnnkit.tasks.base import PredictOptions, Task

ImageLike = Any
"""A path, a PIL image, a ``(H, W)`` / ``(H, W, C)`` uint8 array, or a ``(C, H, W)`` tensor (uint8, or float
in ``[0, 1]``)."""


def resolve_checkpoint(path: str | pathlib.Path) -> pathlib.Path:
    """A run directory gives its ``best.safetensors`` (else ``last``); a file is taken as it is.

    Raises:
        DataError: no checkpoint there.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path}: no best.safetensors or last.safetensors in this directory")
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    return path


def load_run_model(path: str | pathlib.Path) -> tuple[nn.Module, dict[str, Any], TrainConfig]:
    """Rebuild a trained model from a checkpoint (or run directory) and its stored config.

    Returns:
        ``(model in eval mode, checkpoint metadata, config)``.

    Raises:
        DataError: no checkpoint, one not written by ``cnnkit train``, or one that does not fit its model.
    """
    from safetensors.torch import load_file

    checkpoint = resolve_checkpoint(path)
    meta = read_metadata(checkpoint)
    if "config" not in meta:
        raise DataError(f"{checkpoint} was not written by `cnnkit train` (no config in its metadata)")
    config = config_from_dict(meta["config"])
    model = build_model(config, list(meta["classes"]), meta["input"]["channels"])
    try:
        model.load_state_dict(load_file(str(checkpoint), device="cpu"))
    except RuntimeError as err:  # missing, unexpected or differently shaped parameters
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
        raise DataError(
            f"{checkpoint} does not fit the model its config builds (written by another cnnkit version?): {detail}"
        ) from err
    return model.eval(), meta, config


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """A trained model ready to predict images: what ``cnnkit predict`` runs.

    Args:
        model: the trained model (eval mode).
        task: its task object (normalisation, pre- and post-processing).
        input_size: the side the model was trained at (images are resized / letterboxed to it).
        channels: image channels the model takes (images are converted to them).
        checkpoint: the checkpoint it was loaded from.
        config: the run's config.
        device: where it runs (default CUDA when available).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        input_size: int,
        channels: int,
        checkpoint: pathlib.Path,
        config: TrainConfig,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = _device(device)
        self.model = model.eval().to(self.device)
        self.task = task
        self.input_size = input_size
        self.channels = channels
        self.checkpoint = checkpoint
        self.config = config

    @property
    def classes(self) -> list[str]:
        """The model's class names."""
        return self.task.classes

    def _read(self, image: ImageLike) -> torch.Tensor:
        """One input as a ``(C, H, W)`` uint8 tensor with the model's channels."""
        from cnnkit.data import read_image
        from cnnkit.data.wrappers import image_mode

        mode = image_mode(self.channels)
        if isinstance(image, str | pathlib.Path):
            return read_image(image, mode=mode)
        if not isinstance(image, torch.Tensor | np.ndarray):
            try:  # a PIL image
                image = np.asarray(image.convert("L" if mode == "GRAY" else "RGB"))
            except AttributeError:
                raise DataError(
                    f"cannot predict a {type(image).__name__}: give paths, PIL images, arrays or tensors"
                ) from None
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3):
                raise DataError(f"an image array must be (H, W) or (H, W, C), got shape {image.shape}")
            array = image if image.ndim == 3 else image[..., None]
            image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        if image.ndim != 3:
            raise DataError(f"an image tensor must be (C, H, W), got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return _to_channels(image.to(torch.uint8), self.channels)

    @torch.no_grad()
    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        *,
        topk: int = 5,
        conf: float = 0.25,
        output: str | pathlib.Path | None = None,
        batch_size: int = 16,
    ) -> list[dict[str, Any]]:
        """Predict images; the same dicts as ``cnnkit predict --json``.

        Args:
            images: one image or a list (paths, PIL images, uint8 arrays or tensors, see :data:`ImageLike`).
            topk: classes per image (classification).
            conf: lowest detection score kept (detection).
            output: a folder to write each image's picture into (boxes drawn, masks overlaid), named after
                the image; ``None`` writes none.
            batch_size: images per forward pass.

        Returns:
            Per image ``{"image": path or index, ...}`` with the task's answer: ``"topk"`` (classes and
            probabilities), ``"detections"`` (label, score, box in the original pixels) or ``"classes"``
            (fraction of the pixels per class), and ``"output"`` when a picture was written.

        Raises:
            DataError: an unreadable or corrupt image, or an input of the wrong shape.
        """
        from cnnkit.data import write_png

        if isinstance(images, str | pathlib.Path) or not isinstance(images, Sequence):
            images = [images]
        options = PredictOptions(topk=topk, score_threshold=conf)
        out_dir = pathlib.Path(output) if output is not None else None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            originals = [self._read(image) for image in chunk]
            prepared = [self.task.preprocess(image, self.input_size) for image in originals]
            batch = torch.stack([x for x, _ in prepared]).to(self.device)
            outputs = self.model(self.task.normalize(batch))
            predictions = self.task.postprocess(outputs, [info for _, info in prepared], options)
            for offset, (source, original, prediction) in enumerate(zip(chunk, originals, predictions)):
                name = str(source) if isinstance(source, str | pathlib.Path) else start + offset
                item: dict[str, Any] = {"image": name}
                if out_dir is not None:
                    drawn = self.task.draw(original, prediction.cpu())
                    if drawn is not None:
                        stem = pathlib.Path(source).stem if isinstance(name, str) else f"image{name}"
                        item["output"] = str(out_dir / f"{stem}.png")
                        write_png(drawn, item["output"], overwrite=True)
                item.update(prediction.to_dict(self.classes))
                results.append(item)
        return results


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """A ``(C, H, W)`` uint8 image with ``channels`` channels (grey <-> RGB, alpha dropped)."""
    if image.shape[0] == channels:
        return image
    if channels == 1:
        rgb = image[:3].float() if image.shape[0] >= 3 else image[:1].float().expand(3, -1, -1)
        grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        return grey.round().clamp(0, 255).to(torch.uint8)[None]
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1).contiguous()
    return image[:channels].contiguous()


def _task_for(config: TrainConfig, model: nn.Module, meta: dict[str, Any]) -> Task:
    spec = meta["input"]
    return build_task(
        dataclasses.replace(config, augment=[]), model, list(meta["classes"]), spec["mean"], spec["std"]
    )


def load(path: str | pathlib.Path, device: str | torch.device | None = None) -> Predictor:
    """A :class:`Predictor` for a run directory or a ``cnnkit train`` checkpoint.

    Raises:
        DataError: no checkpoint there, or one ``cnnkit train`` did not write.
    """
    model, meta, config = load_run_model(path)
    spec = meta["input"]
    return Predictor(
        model,
        _task_for(config, model, meta),
        spec["size"],
        spec["channels"],
        resolve_checkpoint(path),
        config,
        device,
    )


@torch.no_grad()
def evaluate(
    path: str | pathlib.Path, data: str | None = None, device: str | torch.device | None = None
) -> dict[str, Any]:
    """Evaluate a trained model on its run's validation split, or on another dataset.

    Args:
        path: a run directory or checkpoint.
        data: another ``data=`` name of the run's task (``coco:PATH``...): its validation split is used,
            with the run's image size and channels.
        device: where to run (default CUDA when available).

    Returns:
        The task evaluator's metrics (classification: accuracy, top-5, per class, confusion; detection: COCO
        mAP, per class, PR curves; segmentation: mIoU, per-class IoU and Dice) plus ``classes``, ``task``
        and ``checkpoint``: the dict ``cnnkit eval --json`` prints.

    Raises:
        DataError: a dataset whose classes differ from the model's.
    """
    model, meta, config = load_run_model(path)
    if data is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, name=data))
    dataset = build_data(config)
    classes = list(meta["classes"])
    if data is not None and list(dataset.classes) != classes:
        raise DataError(
            f"{data}: its classes {list(dataset.classes)} differ from the model's {classes}; "
            "evaluate on data with the same classes"
        )
    task = _task_for(config, model, meta)
    target = _device(device)
    model.to(target)
    evaluator = task.evaluator()
    for batch in eval_loader(config, dataset.val, task).epoch(0):
        images, targets = task.prepare(batch, train=False, device=target)
        evaluator.update(model(images), targets)
    metrics = evaluator.compute()
    metrics["classes"] = classes
    metrics["task"] = config.task
    metrics["checkpoint"] = str(resolve_checkpoint(path))
    return metrics
