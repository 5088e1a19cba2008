"""Experiment trackers as trainer callbacks: TensorBoard and MLflow (``logger=tensorboard``, ``logger=mlflow``,
``logger=[tensorboard,mlflow]``).

Both log what ``metrics.csv`` holds, under the same names, so that a run reads the same in every tool:

=================  ===============================================  =============================================
                   TensorBoard (:class:`TensorBoardLogger`)         MLflow (:class:`MlflowLogger`)
=================  ===============================================  =============================================
where              ``RUN/tensorboard/`` (event files)               ``mlflow.tracking_uri`` (default a SQLite
                                                                    store beside the run directory)
every step         ``train/loss``, ``train/lr``                     -
every epoch        ``epoch/<column>`` for each number of the        ``<column>`` for each number of the epoch's
                   epoch's ``metrics.csv`` row (``train_loss``,     row, at step = epoch
                   ``lr``, validation ``loss``, ``accuracy``...),
                   at the optimizer step the epoch ended on;
                   ``predictions``: the task's picture of the
                   validation samples (classes, boxes or masks)
at the end         the run's PNG plots as images                    checkpoints (``checkpoints/``), plots
                                                                    (``plots/``), ``config.yaml``,
                                                                    ``metrics.csv``
once               -                                                the resolved config as parameters (dotted
                                                                    keys: ``optim.lr``, ``data.name``)
=================  ===============================================  =============================================

Only the main process (rank 0 under DDP) writes. A resumed run goes on in the same TensorBoard folder (events
past the resume step are purged, so a rewound Ctrl-C leaves no duplicate points) and the same MLflow run
(its id is kept in ``RUN/mlflow_run.json``). The libraries are optional extras (``pip install
'cnnkit[tensorboard]'``, ``'cnnkit[mlflow]'``); naming a missing one stops the run before it starts with a
:class:`~cnnkit.errors.ConfigError` that says what to install.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time
from typing import Any

import torch

from cnnkit.engine.callbacks import draw_predictions
from cnnkit.engine.config import LOGGERS, TrainConfig, config_to_dict
from cnnkit.engine.trainer import Callback, Trainer
from cnnkit.errors import ConfigError

_AXES = ("epoch", "step")
"""Columns of a ``metrics.csv`` row that are its position, not a measurement."""

MAX_PARAM_LENGTH = 6000
"""Longest parameter value an MLflow store accepts (since MLflow 2.x); longer values are cut."""


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise _missing_extra("tensorboard") from None
    return SummaryWriter


def _import_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise _missing_extra("mlflow") from None


def _missing_extra(name: str) -> ConfigError:
    return ConfigError(f"logger={name} needs the {name} package: pip install 'cnnkit[{name}]'")


def require_installed(names: list[str]) -> None:
    """Check that the package of every tracker in ``names`` imports (before a run creates its directory).

    Raises:
        ConfigError: one is missing; the message names the extra to install.
    """
    imports = {"tensorboard": _summary_writer, "mlflow": _import_mlflow}
    for name in names:
        imports[name]()


def epoch_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The measurements of one ``metrics.csv`` row: every number but its position (epoch, step)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key not in _AXES and isinstance(value, int | float) and not isinstance(value, bool)
    }


def _plots(run_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(run_dir.glob("*.png"))


def _pixels(path: pathlib.Path) -> Any:
    """A PNG as an ``(H, W, 3)`` uint8 array."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class TensorBoardLogger(Callback):
    """Write TensorBoard event files into ``run_dir / "tensorboard"`` (open with
    ``tensorboard --logdir RUN/tensorboard``).

    Scalars: ``train/loss`` and ``train/lr`` after every optimizer step; ``epoch/<column>`` for every number
    of the epoch's ``metrics.csv`` row after every epoch, at the step the epoch ended on (one x-axis for
    all). Images: after every ``images_every`` epochs, ``predictions``, the task's picture of the evaluated
    model on the same validation samples as ``predictions.png`` (top classes, drawn boxes or mask overlays),
    so TensorBoard's slider shows them improve; when the run ends, its PNG plots (curves, confusion matrix
    or PR curves, predictions) under ``plots/``.

    Args:
        run_dir: the run directory.
        images_every: epochs between two ``predictions`` images (0: none).

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, run_dir: pathlib.Path, images_every: int = 1) -> None:
        self._writer_class = _summary_writer()
        self.log_dir = pathlib.Path(run_dir) / "tensorboard"
        self.images_every = images_every
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_main:
            # a resumed run overwrites what an interrupted one logged past its checkpoint
            purge = trainer.step if trainer.step > 0 else None
            self.writer = self._writer_class(str(self.log_dir), purge_step=purge)

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss.item(), trainer.step)
            self.writer.add_scalar("train/lr", trainer.lr, trainer.step)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        row = trainer.history[-1]
        for key, value in epoch_scalars(row).items():
            self.writer.add_scalar(f"epoch/{key}", value, row["step"])
        if self.images_every and trainer.epoch % self.images_every == 0:
            with tempfile.TemporaryDirectory() as folder:
                path = pathlib.Path(folder) / "predictions.png"
                if draw_predictions(trainer, path):
                    self.writer.add_image("predictions", _pixels(path), row["step"], dataformats="HWC")
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is None:
            return
        for path in _plots(self.log_dir.parent):
            self.writer.add_image(f"plots/{path.stem}", _pixels(path), trainer.step, dataformats="HWC")
        self._close()

    def on_interrupt(self, trainer: Trainer) -> None:
        self._close()

    def on_nonfinite(self, trainer: Trainer) -> None:
        self._close()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def flatten_config(config: TrainConfig) -> dict[str, str]:
    """The resolved config as MLflow parameters: one dotted key per value (``optim.lr``,
    ``model_kwargs.fpn_channels``), lists and empty mappings as JSON, strings as they are.

    Returns:
        ``{dotted key: text}`` with every text at most :data:`MAX_PARAM_LENGTH` characters.
    """
    flat: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, inner in value.items():
                walk(inner, f"{key}.{name}" if key else str(name))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[key] = text[:MAX_PARAM_LENGTH]

    walk(config_to_dict(config), "")
    return flat


def default_tracking_uri(run_dir: pathlib.Path) -> str:
    """``sqlite:///<folder holding the run directory>/mlflow.db`` (absolute)."""
    return f"sqlite:///{(pathlib.Path(run_dir).resolve().parent / 'mlflow.db').as_posix()}"


class MlflowLogger(Callback):
    """Record a run in MLflow: the resolved config as parameters, every epoch's ``metrics.csv`` numbers
    as metrics (step = epoch), and when it ends the checkpoints, plots, ``config.yaml`` and ``metrics.csv``
    as artifacts.

    The experiment is ``config.mlflow.experiment`` (default: the task's name), created when missing; with a
    SQLite store its artifacts go into ``mlartifacts/`` beside the database file, not into the working
    directory. The MLflow run is named after the run directory, tagged with its path and the cnnkit version,
    and ends ``FINISHED``, ``KILLED`` (Ctrl-C) or ``FAILED`` (a NaN loss). Open the default store with
    ``mlflow ui --backend-store-uri sqlite:///runs/classification/mlflow.db``.

    Args:
        config: the run's resolved config.
        run_dir: the run directory.

    Raises:
        ConfigError: the ``mlflow`` package is not installed.
    """

    def __init__(self, config: TrainConfig, run_dir: pathlib.Path) -> None:
        _import_mlflow()
        self.config = config
        self.run_dir = pathlib.Path(run_dir)
        self.tracking_uri = config.mlflow.tracking_uri or default_tracking_uri(self.run_dir)
        self.client: Any = None
        self.run_id: str | None = None

    @property
    def _record(self) -> pathlib.Path:
        return self.run_dir / "mlflow_run.json"

    def _artifact_location(self) -> str | None:
        prefix = "sqlite:///"
        if not self.tracking_uri.startswith(prefix):
            return None  # a server or another store chooses its own
        return (pathlib.Path(self.tracking_uri[len(prefix) :]).parent / "mlartifacts").resolve().as_uri()

    def _experiment_id(self) -> str:
        name = self.config.mlflow.experiment or self.config.task or "cnnkit"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name, artifact_location=self._artifact_location())

    def _previous_run(self) -> str | None:
        """The MLflow run an interrupted run of this directory started in this store, if any."""
        from mlflow.exceptions import MlflowException

        if not self._record.is_file():
            return None
        record = json.loads(self._record.read_text())
        if record.get("tracking_uri") != self.tracking_uri:
            return None
        try:
            return self.client.get_run(record["run_id"]).info.run_id
        except MlflowException:
            return None

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunStatus

        import cnnkit

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id = self._previous_run()
        logged: set[str] = set()
        if self.run_id is None:
            run = self.client.create_run(
                self._experiment_id(),
                run_name=self.run_dir.name,
                tags={"cnnkit.run_dir": str(self.run_dir.resolve()), "cnnkit.version": cnnkit.__version__},
            )
            self.run_id = run.info.run_id
            self._record.write_text(json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id}))
        else:
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            # parameters cannot change in MLflow: a resumed run adds only keys it did not log yet
            logged = set(self.client.get_run(self.run_id).data.params)
        params = [Param(k, v) for k, v in flatten_config(self.config).items() if k not in logged]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        row = trainer.history[-1]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["epoch"])) for k, v in epoch_scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.run_id is None:
            return
        for name in ("best.safetensors", "last.safetensors"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name), "checkpoints")
        for path in _plots(self.run_dir):
            self.client.log_artifact(self.run_id, str(path), "plots")
        for name in ("config.yaml", "metrics.csv"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self._end("FINISHED")

    def on_interrupt(self, trainer: Trainer) -> None:
        self._end("KILLED")

    def on_nonfinite(self, trainer: Trainer) -> None:
        self._end("FAILED")

    def _end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None


def build_loggers(config: TrainConfig, run_dir: pathlib.Path) -> list[Callback]:
    """The callbacks of ``config.logger`` (each name once, in :data:`~cnnkit.engine.config.LOGGERS` order).

    Raises:
        ConfigError: a tracker whose package is not installed (with the extra to install).
    """
    names = set(config.logger)
    builders = {
        "tensorboard": lambda: TensorBoardLogger(run_dir),
        "mlflow": lambda: MlflowLogger(config, run_dir),
    }
    return [builders[name]() for name in LOGGERS if name in names]
