"""DDP on CPU: `torchrun --nproc_per_node=2 -m cnnkit train ...` (gloo, two processes)."""

import json
import subprocess
import sys

import torch

from cnnkit.data.sampler import EpochSampler
from cnnkit.engine.checkpoint import load_checkpoint


def test_sampler_shards_one_permutation():
    shards = [EpochSampler(10, 2, seed=3, rank=r, world_size=2).indices(epoch=1) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(torch.cat(shards).tolist()) == list(range(10))


def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cnnkit", "train",
        "data.train_size=256", "data.val_size=100", "data.batch_size=32", "epochs=2", "plots=false",
        "progress=false", f"output_dir={run}",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **_env()}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("test accuracy")]
    assert len(lines) >= 1
    _, _, meta = load_checkpoint(run / "last.safetensors")
    # 256 samples over 2 ranks of 32 per batch: 4 steps per epoch on each rank.
    assert meta["step"] == 8 and meta["epoch"] == 2
    state = json.loads((run / "trainer_state.json").read_text())
    # Metrics are reduced over both ranks: each evaluates 50 images, the totals cover all 100.
    assert state["history"][-1]["samples"] == 100
    assert sorted(p.name for p in run.glob("state-*.pt")) == ["state-last-00000008.pt"]


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
