"""benchmarks/gpu_check.py without a GPU: it says so and exits 0 (with one, it measures; see its docs)."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU from torch: the no-CUDA path
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("gpu_check: no CUDA GPU visible (torch ") and line.endswith("; nothing measured")
    assert done.stderr == ""
