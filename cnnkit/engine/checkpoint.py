"""Checkpoints: model weights in safetensors, training state in a companion file, written atomically.

Layout in a run directory::

    last.safetensors          model weights (+ metadata: step, epoch, the companion state file's name)
    best.safetensors          weights of the best epoch by the chosen metric
    state-<step>.pt           optimizer, scheduler, AMP scaler, EMA, RNG states (torch.save of tensors and
                              plain containers only; read back with ``torch.load(weights_only=True)``)
    trainer_state.json        a human-readable copy of the trainer state of ``last``

Every file is written to a temporary name in the same directory, flushed and fsync'ed, then moved into
place with ``os.replace`` (atomic on POSIX). The weights file is the commit point: it is replaced last and
names the state file it pairs with, and old state files are deleted only after the commit, so a crash or
``kill -9`` at any moment leaves ``last`` either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from cnnkit.errors import DataError


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | pathlib.Path, write: Any) -> None:
    """Write a file atomically: ``write(tmp_path)`` fills a temporary file, which then replaces ``path``."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


StateOrModel = nn.Module | Mapping[str, torch.Tensor]


def model_state(model: StateOrModel, copy_tensors: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict as contiguous CPU tensors (DDP/compiled wrappers unwrapped).

    Args:
        model: a module, or a state_dict already.
        copy_tensors: clone tensors that would otherwise share memory with the live model (needed when the
            write happens later, while training goes on).
    """
    if isinstance(model, nn.Module):
        model = getattr(model, "module", model)
        model = getattr(model, "_orig_mod", model)
        model = model.state_dict()
    out = {}
    for k, v in model.items():
        cpu = v.detach().cpu().contiguous()
        out[k] = cpu.clone() if copy_tensors and cpu.data_ptr() == v.data_ptr() else cpu
    return out


def save_weights(
    path: str | pathlib.Path, model: StateOrModel, metadata: Mapping[str, Any] | None = None
) -> None:
    """Atomically save a model's weights as safetensors; ``metadata`` values are stored as JSON strings."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    state = model_state(model)
    # safetensors refuses tensors that share memory; clone the (rare) tied ones.
    seen: dict[int, str] = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            state[key] = tensor.clone()
        seen[ptr] = key
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def read_metadata(path: str | pathlib.Path) -> dict[str, Any]:
    """The JSON metadata stored by :func:`save_weights`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:
        raise DataError(f"{path} is not a readable safetensors checkpoint ({err})") from err
    return {k: json.loads(v) for k, v in meta.items()}


def save_checkpoint(
    run_dir: str | pathlib.Path,
    model: StateOrModel,
    training_state: Mapping[str, Any],
    metadata: Mapping[str, Any],
    name: str = "last",
) -> pathlib.Path:
    """Save ``<name>.safetensors`` + its companion state file atomically; returns the weights path.

    Args:
        run_dir: the run directory.
        model: the model whose weights are saved, or its state_dict.
        training_state: tensors and plain containers (optimizer, scheduler, scaler, EMA, RNG states).
        metadata: JSON-serialisable trainer state (must include ``step``); also written to
            ``trainer_state.json`` for ``last``.
        name: ``"last"`` or ``"best"``.
    """
    run_dir = pathlib.Path(run_dir)
    step = int(metadata["step"])
    state_name = f"state-{name}-{step:08d}.pt"
    atomic_write(run_dir / state_name, lambda tmp: torch.save(dict(training_state), tmp))
    weights = run_dir / f"{name}.safetensors"
    save_weights(weights, model, {**metadata, "state_file": state_name})  # the commit point
    for old in run_dir.glob(f"state-{name}-*.pt"):
        if old.name != state_name:
            old.unlink()
    if name == "last":
        text = json.dumps({**metadata, "state_file": state_name}, indent=1)
        atomic_write(run_dir / "trainer_state.json", lambda tmp: pathlib.Path(tmp).write_text(text))
    return weights


def load_checkpoint(
    weights_path: str | pathlib.Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint: (model state_dict, training state, metadata).

    The training state is read with ``torch.load(weights_only=True)``.

    Raises:
        DataError: missing or unreadable files.
    """
    from safetensors.torch import load_file

    weights_path = pathlib.Path(weights_path)
    meta = read_metadata(weights_path)
    state_file = weights_path.parent / meta.get("state_file", "")
    training: dict[str, Any] = {}
    if meta.get("state_file"):
        if not state_file.is_file():
            raise DataError(f"{weights_path} names its training state {state_file.name}, which is missing")
        try:
            training = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DataError(f"cannot read training state {state_file}: {err}".splitlines()[0]) from err
    return load_file(str(weights_path), device="cpu"), training, meta


class BackgroundWriter:
    """Writes checkpoints on one background thread, in order, so training does not wait for the disk.

    :meth:`snapshot` copies what a save needs (weights, training state, metadata) at the moment it is
    called; :meth:`submit` queues a write of such a snapshot. An error in a write is raised by the next
    :meth:`submit` or :meth:`wait`. Writes stay atomic (see the module docs): a crash loses at most the
    queued ones, never the previous checkpoint.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-checkpoint")
        self._pending: list[Future] = []

    @staticmethod
    def snapshot(model: StateOrModel, training_state: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
        """Copies of the weights and of the training state, safe to write while training continues."""
        return model_state(model, copy_tensors=True), copy.deepcopy(dict(training_state or {}))

    def submit(self, write: Callable[[], Any]) -> None:
        """Queue ``write()``; first re-raise the error of any finished write."""
        self._reap(block=False)
        self._pending.append(self._pool.submit(write))

    def wait(self) -> None:
        """Block until every queued write is done; re-raise the first error."""
        self._reap(block=True)

    def _reap(self, block: bool) -> None:
        still = []
        for future in self._pending:
            if block or future.done():
                future.result()
            else:
                still.append(future)
        self._pending = still
