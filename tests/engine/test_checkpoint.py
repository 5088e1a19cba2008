"""Atomic checkpoints: a kill -9 at any moment during saving leaves a consistent `last`."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import torch
from torch import nn

from cnnkit.engine.checkpoint import load_checkpoint, read_metadata, save_checkpoint, save_weights


def test_save_and_load_roundtrip(tmp_path):
    model = nn.Linear(4, 3)
    save_checkpoint(tmp_path, model, {"opt": {"lr": torch.tensor(0.5)}}, {"step": 7, "epoch": 1})
    state, training, meta = load_checkpoint(tmp_path / "last.safetensors")
    torch.testing.assert_close(state["weight"], model.weight.detach())
    assert meta["step"] == 7 and training["opt"]["lr"].item() == 0.5
    assert (tmp_path / "trainer_state.json").exists()
    save_checkpoint(tmp_path, model, {}, {"step": 8, "epoch": 1})
    assert sorted(p.name for p in tmp_path.glob("state-*.pt")) == ["state-last-00000008.pt"]


def test_tied_weights_are_saved(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    save_weights(tmp_path / "w.safetensors", model, {"step": 1})
    assert read_metadata(tmp_path / "w.safetensors")["step"] == 1


WRITER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from cnnkit.engine.checkpoint import save_checkpoint
    run = sys.argv[1]
    model = nn.Linear(1024, 2048)
    step = 0
    print("ready", flush=True)
    while True:
        step += 1
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(run, model, {"step": torch.tensor(step), "blob": torch.full((2_000_000,), step)}, {"step": step})
    """
)


def test_kill_during_save_never_breaks_last(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run = tmp_path / "run"
    run.mkdir()
    for delay in (0.4, 0.55, 0.7, 0.85, 1.0):
        proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (run / "last.safetensors").exists():
            continue
        state, training, meta = load_checkpoint(run / "last.safetensors")
        step = meta["step"]
        # Weights, training state and metadata all belong to the same save.
        assert training["step"].item() == step
        assert torch.all(state["weight"] == step)
        assert torch.all(training["blob"] == step)
    assert (run / "last.safetensors").exists(), "no checkpoint completed in 3.5 s of saving"
