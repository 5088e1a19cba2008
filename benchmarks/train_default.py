"""The main job's target: `cnnkit train` with no arguments, timed end to end (start-up included).

Runs the command as a user would, in a fresh temporary directory, and prints the wall time and the test
accuracy it reports (goal: >= 98.5 % on the MNIST-5k test split in <= 60 s on 2 CPU cores).

    python benchmarks/train_default.py [--repeat 1] [extra key=value overrides...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as cwd:
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "cnnkit", "train", *args.overrides],
                cwd=cwd, capture_output=True, text=True, check=True,
            )  # fmt: skip
            wall = time.perf_counter() - start
        accuracy = float(re.search(r"test accuracy ([0-9.]+)", out.stdout).group(1))
        verdict = "ok" if accuracy >= 0.985 and wall <= 60 else "MISSED"
        print(
            f"run {i + 1}: test accuracy {accuracy:.4f}, wall {wall:.1f} s (goal >= 0.985 in <= 60 s: {verdict})"
        )


if __name__ == "__main__":
    main()
