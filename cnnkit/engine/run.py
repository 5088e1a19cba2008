"""From a config to a finished run directory: ``train`` (with encoder pretraining and phases), ``resume``.

``train(...)`` builds the run (:mod:`cnnkit.engine.build`), trains, and leaves in the run directory:
``config.yaml``, ``metrics.csv``, ``last.safetensors`` + state, ``best.safetensors``, ``trainer_state.json``
and the plots. ``resume(run_dir)`` continues an interrupted run exactly where it stopped. Loading a trained
run for evaluation and prediction is :mod:`cnnkit.engine.inference`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from dataclasses import dataclass
from typing import Any

import torch

from cnnkit.engine.build import build_data, build_model, build_trainer
from cnnkit.engine.callbacks import CheckpointCallback
from cnnkit.engine.checkpoint import load_checkpoint
from cnnkit.engine.config import TrainConfig, apply_overrides, load_config, resolve, save_config
from cnnkit.engine.distributed import DistributedContext
from cnnkit.engine.loggers import require_installed
from cnnkit.engine.trainer import Callback, seed_everything
from cnnkit.errors import DataError
from cnnkit.models.registry import model_card


def default_run_dir(config: TrainConfig) -> pathlib.Path:
    """``output_dir`` if set, else ``runs/<task>/<name>`` (``<name>`` defaults to the model; ``-2``, ``-3``...
    appended when taken)."""
    if config.output_dir:
        return pathlib.Path(config.output_dir)
    base = pathlib.Path("runs") / config.task / (config.name or config.model)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@dataclass
class Run:
    """A finished run.

    Attributes:
        dir: the run directory.
        metrics: the last epoch's validation metrics.
        best: the checkpoint of the best epoch (``best.safetensors``; ``last`` when no epoch was scored).
        best_value: the best value of the run's metric.
        history: one row of ``metrics.csv`` per epoch.
        seconds: wall time, pretraining included.
    """

    dir: pathlib.Path
    metrics: dict[str, Any]
    best: pathlib.Path
    best_value: float | None
    history: list[dict[str, Any]]
    seconds: float
    summary: str = ""


def train(
    config: TrainConfig | str | pathlib.Path | None = None,
    *,
    callbacks: list[Callback] | None = None,
    resume_from: pathlib.Path | None = None,
    **values: Any,
) -> Run:
    """Train as a config says, the Python twin of ``cnnkit train``.

    Args:
        config: a :class:`TrainConfig`, the path of a YAML config, or ``None`` (defaults and recipe).
        callbacks: extra :class:`Callback` s.
        resume_from: a run directory whose ``last`` checkpoint to continue (see :func:`resume`).
        **values: config keys as ``cnnkit train`` takes them: ``epochs=3``, nested ones as
            ``optim={"lr": 1e-3}`` or ``**{"optim.lr": 1e-3}``, ``data="mnist-det"``, ``recipe="unet"``.

    Returns:
        :class:`Run` with the directory, the last metrics and the best checkpoint.

    Example:
        >>> run = train(model="lenet5", epochs=1, progress=False, plots=False, output_dir=tmp)  # doctest: +SKIP
        >>> run.best.name
        'best.safetensors'
    """
    if isinstance(config, TrainConfig):
        config = resolve(apply_overrides(config, values))
    else:
        config = load_config(config, values=values)
    require_installed(config.logger)  # a missing tracker stops the run before its directory exists
    start = time.perf_counter()
    threads = config.threads if config.threads is not None else auto_threads(config)
    if threads is not None:
        torch.set_num_threads(threads)
    dist = DistributedContext.from_env(config.device)
    if resume_from is not None:
        run_dir = pathlib.Path(resume_from)
    else:
        run_dir = default_run_dir(config)
        if dist is not None and dist.world_size > 1:
            # Every rank must agree on the directory: rank 0 decides, the others take its choice.
            run_dir = _broadcast_path(run_dir, dist)
    data = None
    if config.pretrain and config.weights is None:
        # Build the run's data and model once before pretraining, so that a bad dataset or model option
        # stops the run now, not after the minutes of pretraining (building the data does not draw from
        # the random generators, and the model is built again, seeded, below).
        data = build_data(config)
        build_model(config, data.classes, data.in_chans)
        config = _pretrain(config, run_dir / "pretrain", callbacks)
    seed_everything(config.seed + (dist.rank if dist else 0))
    if dist is None or dist.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    trainer = build_trainer(config, run_dir, dist, list(callbacks or []), data)
    if resume_from is not None:
        model_state, training_state, meta = load_checkpoint(run_dir / "last.safetensors")
        trainer._unwrapped().load_state_dict(model_state)
        trainer.load_state_dict(training_state, meta)
    try:
        history = trainer.fit()
    finally:
        if dist is not None:
            dist.close()
    checkpoint = next(cb for cb in trainer.callbacks if isinstance(cb, CheckpointCallback))
    best = run_dir / ("best.safetensors" if (run_dir / "best.safetensors").is_file() else "last.safetensors")
    return Run(
        run_dir,
        trainer.metrics,
        best,
        checkpoint.best,
        history,
        time.perf_counter() - start,
        trainer.task.summary(trainer.metrics, checkpoint.best) if trainer.metrics else "finished",
    )


def _pretrain(config: TrainConfig, run_dir: pathlib.Path, callbacks: list[Callback] | None) -> TrainConfig:
    """Train ``config.pretrain`` into ``run_dir`` (the first step of a recipe: encoder pretraining) and
    return ``config`` with its best checkpoint as ``weights``; a finished pretraining there is reused."""
    best = run_dir / "best.safetensors"
    if not best.is_file():
        values = {"seed": config.seed, "device": config.device, "progress": config.progress, "plots": False}
        pre = load_config(None, values={"recipe": "none", **values, **config.pretrain})
        train(dataclasses.replace(pre, output_dir=str(run_dir)), callbacks=callbacks)
    return dataclasses.replace(config, weights=str(best))


def auto_threads(config: TrainConfig) -> int | None:
    """One intra-op thread for tiny models on the CPU (under 100 M MACs per image), else torch's default.

    Their ops are too small to split: the default LeNet-5 job took 25.4 s with two threads and 21.1 s with
    one on a 2-core machine.
    """
    on_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    macs = model_card(config.model).macs  # None for task models, whose size depends on their backbone
    if not on_cpu or macs is None:
        return None
    return 1 if macs < 100_000_000 else None


def _broadcast_path(path: pathlib.Path, dist: DistributedContext) -> pathlib.Path:
    import torch.distributed as tdist

    holder = [str(path)]
    tdist.broadcast_object_list(holder, src=0)
    return pathlib.Path(holder[0])


def resume(run_dir: str | pathlib.Path, overrides: list[str] | tuple[str, ...] = ()) -> Run:
    """Continue the run in ``run_dir`` from ``last.safetensors`` (``overrides`` may extend ``epochs``).

    Raises:
        DataError: no run (config or checkpoint) in ``run_dir``.
    """
    from cnnkit.engine.config import config_from_dict, parse_override, read_config_file

    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "last.safetensors").is_file():
        raise DataError(f"{run_dir} is not a run directory with config.yaml and last.safetensors to resume")
    config = config_from_dict(read_config_file(run_dir / "config.yaml"))
    config = apply_overrides(config, dict(parse_override(text) for text in overrides))
    config = dataclasses.replace(config, output_dir=str(run_dir))
    return train(config, resume_from=run_dir)
