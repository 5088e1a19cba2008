"""Use a trained model: load a run, a checkpoint or an exported ONNX file, evaluate it on a dataset, predict
images.

``load(path)`` gives a :class:`Predictor` whose ``predict(images)`` returns what ``cnnkit predict --json``
prints; ``evaluate(path)`` returns what ``cnnkit eval --json`` prints. Both go through the run's task
(:class:`cnnkit.tasks.base.Task`): its input geometry (:meth:`~cnnkit.tasks.base.Task.preprocess`), its
normalisation and its post-processing into the original image's pixels.

An ONNX file written by ``cnnkit export RUN --format onnx`` carries in its metadata what this needs
(:func:`export_metadata`): ``load("model.onnx")`` gives an :class:`OnnxPredictor`, the same task object around
an onnxruntime session instead of the PyTorch model, so both runtimes share one pre- and post-processing.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit.analysis.fuse import fuse as fold_batchnorms
from cnnkit.engine.build import build_data, build_model, build_task, eval_loader, phase_configs, task_class
from cnnkit.engine.checkpoint import read_metadata
from cnnkit.engine.config import TrainConfig, config_from_dict
from cnnkit.engine.trainer import to_channels_last
from cnnkit.errors import ConfigError, DataError
from cnnkit.models.registry import list_models
from cnnkit.tasks.base import ImageInfo, PredictOptions, Task

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


def trained_config(values: dict[str, Any]) -> TrainConfig:
    """The config a run's weights were last trained under, from the config stored with them: its last
    phase's (progressive resizing ends at its largest image size), so that evaluation and prediction read
    the data the way the weights last saw it."""
    return phase_configs(config_from_dict(values))[-1]


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
    config = trained_config(meta["config"])
    if config.data.image_size:
        meta["input"]["size"] = config.data.image_size
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
        channels_last: hold the model's 4-d weights in ``torch.channels_last`` and convert each input batch to
            that layout in :meth:`forward` (oneDNN then runs the convolutions without reordering the
            activations; see ``docs/deploy.md``). Outputs equal the contiguous ones within float rounding.
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
        channels_last: bool = False,
    ) -> None:
        self.device = _device(device)
        self.model = model.eval().to(self.device)
        self.channels_last = channels_last
        if channels_last:  # in place: the task holds this same module
            self.model.to(memory_format=torch.channels_last)
        self.task = task
        self.input_size = input_size
        self.channels = channels
        self.checkpoint = checkpoint
        self.config = config

    @property
    def classes(self) -> list[str]:
        """The model's class names."""
        return self.task.classes

    def forward(self, images: torch.Tensor) -> Any:
        """The model's raw outputs for a normalised batch (what :meth:`Task.postprocess` and the task's
        evaluator take).

        Shape:
            - images: ``(B, C, size, size)`` float32 on :attr:`device`
            - Output: the model's, e.g. ``(B, K)`` logits or a list of detection maps
        """
        if self.channels_last:
            images = to_channels_last(images)
        return self.model(images)

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
        attention: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict images; the same dicts as ``cnnkit predict --json``.

        Args:
            images: one image or a list (paths, PIL images, uint8 arrays or tensors, see :data:`ImageLike`).
            topk: classes per image (classification).
            conf: lowest detection score kept (detection).
            output: a folder to write each image's picture into (boxes drawn, masks overlaid), named after
                the image; ``None`` writes none.
            batch_size: images per forward pass.
            attention: also write each image's attention-gate coefficient maps (a model with
                ``attention_at_input``, e.g. ``attention_unet``), deepest gate first, each over the image in
                the original pixels, as ``NAME_attention.png`` in ``output``.

        Returns:
            Per image ``{"image": path or index, ...}`` with the task's answer: ``"topk"`` (classes and
            probabilities), ``"detections"`` (label, score, box in the original pixels) or ``"classes"``
            (fraction of the pixels per class), ``"output"`` when a picture was written and
            ``"attention"`` when the gates' picture was.

        Raises:
            DataError: an unreadable or corrupt image, or an input of the wrong shape.
            ConfigError: ``attention`` without ``output`` or for a model without attention gates.
        """
        from cnnkit.data import write_png

        if isinstance(images, str | pathlib.Path) or not isinstance(images, Sequence):
            images = [images]
        if attention:
            self._check_attention(output)
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
            outputs = self.forward(self.task.normalize(batch))
            infos = [info for _, info in prepared]
            predictions = self.task.postprocess(outputs, infos, options)
            gates = torch.stack(self.model.attention_at_input(), 1)[:, :, 0].cpu() if attention else None
            for offset, (source, original, prediction) in enumerate(zip(chunk, originals, predictions)):
                name = str(source) if isinstance(source, str | pathlib.Path) else start + offset
                item: dict[str, Any] = {"image": name}
                stem = pathlib.Path(source).stem if isinstance(name, str) else f"image{name}"
                if out_dir is not None:
                    drawn = self.task.draw(original, prediction.cpu())
                    if drawn is not None:
                        item["output"] = str(out_dir / f"{stem}.png")
                        write_png(drawn, item["output"], overwrite=True)
                if gates is not None:
                    item["attention"] = str(out_dir / f"{stem}_attention.png")
                    write_png(_gate_overlays(original, gates[offset], infos[offset]), item["attention"], True)
                item.update(prediction.to_dict(self.classes))
                results.append(item)
        return results

    def _check_attention(self, output: str | pathlib.Path | None) -> None:
        """The errors of ``predict(attention=True)``: a folder to write into and a model with gates."""
        if output is None:
            raise ConfigError("attention maps are pictures: give an output folder")
        if not callable(getattr(self.model, "attention_at_input", None)):
            gated = ", ".join(list_models("*attention*", task=self.task.name)) or "none"
            raise ConfigError(
                f"{type(self.model).__name__} has no attention gates to draw (models with them: {gated})"
            )


def _gate_overlays(image: torch.Tensor, gates: torch.Tensor, info: ImageInfo) -> torch.Tensor:
    """An image's attention-gate maps, each restored to the original pixels and blended over it, in a row.

    Shape:
        - image: ``(C, H, W)`` uint8; gates: ``(G, h, w)`` over the model input; output: ``(3, H, G * W')``
    """
    from cnnkit.tasks import plots

    maps = info.restore(gates, mode="bilinear")
    return plots.side_by_side([plots.overlay_heatmap(image, heat) for heat in maps])


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


METADATA_PREFIX = "cnnkit."
"""Prefix of the keys :func:`export_metadata` writes into an ONNX file's ``metadata_props``."""


def task_options(config: TrainConfig) -> dict[str, Any]:
    """Every option of a run's task object: the task class's defaults, then the config's own keys
    (:meth:`~cnnkit.tasks.base.Task.config_options`), then ``task_kwargs`` (e.g. a detector's
    ``score_threshold``, ``iou_threshold`` and ``max_detections``)."""
    cls = task_class(config)
    base = set(inspect.signature(Task.__init__).parameters)
    defaults = {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if name not in base and p.default is not inspect.Parameter.empty
    }
    return {**defaults, **cls.config_options(config), **config.task_kwargs}


def output_structure(outputs: Any) -> str:
    """How a model returns its outputs: ``"tensor"`` (one), ``"list"`` or ``"tuple"`` (several, e.g. a YOLO
    detector's maps per level), so that the outputs of an exported file can be handed back in that form."""
    if isinstance(outputs, torch.Tensor):
        return "tensor"
    if isinstance(outputs, list | tuple) and all(isinstance(o, torch.Tensor) for o in outputs):
        return type(outputs).__name__
    raise ConfigError(f"cannot export a model whose outputs are a {type(outputs).__name__}")


def export_metadata(meta: dict[str, Any], outputs: str) -> dict[str, str]:
    """What a file exported from a run needs to predict on its own, as ONNX ``metadata_props``.

    Every key starts with :data:`METADATA_PREFIX` and every value is a JSON text:

    ================  ===========================================================================
    key               value
    ================  ===========================================================================
    ``task``          the task's registry name (``classification``, ``detection``...)
    ``model``         the registered model (``yolo``, ``unet``, ``lenet5``...)
    ``classes``       class names, label order (no background)
    ``input``         ``{"channels", "size", "mean", "std"}``: images are converted to ``channels``,
                      brought to ``size x size`` by the task's pre-processing (letterbox for
                      detection and segmentation, shorter side + centre crop for classification),
                      scaled to ``[0, 1]`` and normalised with ``mean`` / ``std``
    ``task_options``  the task object's options (:func:`task_options`): post-processing settings
    ``outputs``       ``"tensor"``, ``"list"`` or ``"tuple"`` (:func:`output_structure`)
    ``config``        the run's resolved config (what rebuilds the task and its model)
    ``version``       the cnnkit version that wrote the file
    ================  ===========================================================================

    Args:
        meta: the checkpoint's metadata (``config``, ``classes``, ``input``), as ``cnnkit train`` writes it.
        outputs: the model's :func:`output_structure`.

    Returns:
        ``{"cnnkit.task": '"detection"', ...}``.
    """
    import cnnkit

    config = trained_config(meta["config"])
    values = {
        "task": config.task,
        "model": config.model,
        "classes": list(meta["classes"]),
        "input": meta["input"],
        "task_options": task_options(config),
        "outputs": outputs,
        "config": meta["config"],
        "version": cnnkit.__version__,
    }
    return {f"{METADATA_PREFIX}{key}": json.dumps(value) for key, value in values.items()}


def read_export_metadata(custom: dict[str, str], path: pathlib.Path) -> dict[str, Any]:
    """The values :func:`export_metadata` wrote, from a file's ``metadata_props`` (``custom``).

    Raises:
        DataError: the file holds no cnnkit metadata (not exported from a run by ``cnnkit export``).
    """
    values = {
        key[len(METADATA_PREFIX) :]: json.loads(text)
        for key, text in custom.items()
        if key.startswith(METADATA_PREFIX)
    }
    missing = {"config", "classes", "input", "outputs"} - set(values)
    if missing:
        raise DataError(
            f"{path}: no cnnkit metadata ({', '.join(sorted(missing))}) in this ONNX file; predict with a file "
            "written by `cnnkit export RUN --format onnx` from a trained run"
        )
    return values


class OnnxPredictor(Predictor):
    """A :class:`Predictor` that runs an exported ONNX file with onnxruntime (CPU): same reading of images,
    same task object for pre-processing, normalisation and post-processing, so its answers are those of the
    PyTorch path within float rounding.

    The task is rebuilt from the file's metadata (:func:`export_metadata`) with a model built from the
    stored config and randomly initialised. Its weights never run (onnxruntime computes the forward), but a
    task's post-processing may read its model's non-learned state: :meth:`DetectionTask.decode
    <cnnkit.tasks.detection.task.DetectionTask.decode>` calls the detector's ``postprocess``, which decodes
    against anchors and strides computed from the config. Rebuilding the model keeps one decoding
    implementation for both runtimes and keeps the engine ignorant of which task it serves; storing each
    task's decoding state in the file instead would need a format per model.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads (default: torch's, so that both runtimes use as many).

    Raises:
        ConfigError: onnxruntime is not installed.
        DataError: the file is unreadable or holds no cnnkit metadata.
    """

    def __init__(self, path: str | pathlib.Path, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(
                "predicting with an ONNX file needs onnxruntime: pip install 'cnnkit[export]'"
            ) from None
        path = pathlib.Path(path)
        if not path.is_file():
            raise DataError(f"ONNX file not found: {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors on a bad file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(f"{path}: not a readable ONNX file ({first})") from None
        self.metadata = read_export_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        config = trained_config(self.metadata["config"])
        spec = self.metadata["input"]
        classes = list(self.metadata["classes"])
        decoder = build_model(config, classes, spec["channels"]).eval()
        self.device = torch.device("cpu")
        self.model = None
        self.channels_last = False
        self.task = _task_for(config, decoder, self.metadata)
        self.input_size = spec["size"]
        self.channels = spec["channels"]
        self.checkpoint = path
        self.config = config
        self.structure = self.metadata["outputs"]
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        batch = graph_input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def _check_attention(self, output: str | pathlib.Path | None) -> None:
        """Attention maps are intermediate values of the PyTorch model; the file computes only logits."""
        raise ConfigError(
            f"{self.checkpoint.name} computes only the logits: draw attention maps with the run (PyTorch)"
        )

    def forward(self, images: torch.Tensor) -> Any:
        """The file's outputs for a normalised batch, in the form the PyTorch model returns them.

        A file exported with a fixed batch (no ``--dynamic-batch``) runs in chunks of that batch, the last
        one padded with zeros.

        Shape:
            - images: ``(B, C, size, size)`` float32
            - Output: a tensor or a list/tuple of tensors, each with ``B`` rows
        """
        x = images.detach().float().cpu().contiguous().numpy()
        step = self.fixed_batch or len(x)
        chunks = []
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            if len(chunk) < step:
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            rows = min(step, len(x) - start)
            chunks.append([y[:rows] for y in self.session.run(None, {self.input_name: chunk})])
        outputs = [torch.from_numpy(np.concatenate(parts)) for parts in zip(*chunks)]
        if self.structure == "tensor":
            return outputs[0]
        return tuple(outputs) if self.structure == "tuple" else outputs


def load(
    path: str | pathlib.Path,
    device: str | torch.device | None = None,
    *,
    fuse: bool = True,
    channels_last: bool = True,
) -> Predictor:
    """A :class:`Predictor` for a run directory, a ``cnnkit train`` checkpoint or an ONNX file exported
    from a run (an :class:`OnnxPredictor`, on the CPU).

    A run or checkpoint is prepared for inference the way detector toolkits do at predict time (ultralytics
    fuses Conv + BN in ``predict``): with ``fuse`` every BatchNorm that directly follows a convolution or a
    linear layer is folded into it (:func:`cnnkit.export.fuse`: a copy that keeps the model's class, so its
    methods and attributes, e.g. a detector's ``postprocess`` or the attention U-Net's
    ``attention_at_input``, work as before; a model that does not trace as a whole is folded child by
    child), and with ``channels_last`` the weights and inputs use that memory layout. Outputs equal the
    unfused, contiguous model's within float rounding. The predictor's :attr:`~Predictor.model` and its
    task's model are that one prepared module; the run's files are unchanged (``cnnkit export`` reads them
    itself), and ``load_run_model(path)`` gives the model as trained.

    Args:
        path: a run directory, a checkpoint or an ``.onnx`` file.
        device: where a PyTorch model runs (default CUDA when available).
        fuse: fold BatchNorms into the layers before them (``False``: the model as trained).
        channels_last: run in ``torch.channels_last`` (``False``: contiguous). Both switches are ignored
            for an ONNX file (onnxruntime runs the exported graph, folded at export).

    Raises:
        DataError: no checkpoint there, one ``cnnkit train`` did not write, or an ONNX file without cnnkit
            metadata.
        ConfigError: an ONNX file with onnxruntime missing.
    """
    if pathlib.Path(path).suffix == ".onnx":
        return OnnxPredictor(path)
    model, meta, config = load_run_model(path)
    if fuse:
        model = fold_batchnorms(model)
    spec = meta["input"]
    return Predictor(
        model,
        _task_for(config, model, meta),
        spec["size"],
        spec["channels"],
        resolve_checkpoint(path),
        config,
        device,
        channels_last=channels_last,
    )


@torch.no_grad()
def evaluate(
    path: str | pathlib.Path | Predictor, data: str | None = None, device: str | torch.device | None = None
) -> dict[str, Any]:
    """Evaluate a trained model on its run's validation split, or on another dataset.

    Args:
        path: a run directory, a checkpoint, an ONNX file exported from a run, or a loaded :class:`Predictor`.
        data: another ``data=`` name of the run's task (``coco:PATH``...): its validation split is used,
            with the run's image size and channels.
        device: where to run (default CUDA when available; an ONNX file runs on the CPU).

    Returns:
        The task evaluator's metrics (classification: accuracy, top-5, per class, confusion; detection: COCO
        mAP, per class, PR curves; segmentation: mIoU, per-class IoU and Dice) plus ``classes``, ``task``
        and ``checkpoint``: the dict ``cnnkit eval --json`` prints.

    Raises:
        DataError: a dataset whose classes differ from the model's.
    """
    predictor = path if isinstance(path, Predictor) else load(path, device)
    config = predictor.config
    if data is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, name=data))
    dataset = build_data(config)
    classes = predictor.classes
    if data is not None and list(dataset.classes) != classes:
        raise DataError(
            f"{data}: its classes {list(dataset.classes)} differ from the model's {classes}; "
            "evaluate on data with the same classes"
        )
    task = predictor.task
    evaluator = task.evaluator()
    for batch in eval_loader(config, dataset.val, task).epoch(0):
        images, targets = task.prepare(batch, train=False, device=predictor.device)
        evaluator.update(predictor.forward(images), targets)
    metrics = evaluator.compute()
    metrics["classes"] = classes
    metrics["task"] = config.task
    metrics["checkpoint"] = str(predictor.checkpoint)
    return metrics
