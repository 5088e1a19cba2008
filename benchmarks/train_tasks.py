"""Detection and segmentation targets: train each shipped recipe with `cnnkit train recipe=NAME` and check its
held-out metric.

The recipes are the files in `cnnkit/recipes/` (`cnnkit recipes` lists them; pretraining and progressive
resizing are part of the file). Each runs as one `cnnkit train recipe=NAME` command in a fresh temporary
directory, timed end to end (start-up and pretraining included); the last epoch's metric is read from the run's
`metrics.csv` and compared with the recipe's target, and with its further `targets` (e.g. the `yolo` recipe's
mAP@.75 and mAP@.5) (budget 15 minutes on 2 CPU cores each).

    python benchmarks/train_tasks.py [RECIPE ...] [--list] [--keep DIR] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from cnnkit.engine.recipes import get_recipe, list_recipes

BUDGET_S = 15 * 60
TARGETED = [r.name for r in list_recipes() if "target" in r.measured]
"""The recipes with a target (the generated sets' detectors and segmenters)."""


def run_recipe(name: str, extra: list[str], keep: pathlib.Path | None) -> dict:
    """Train one recipe; return its metric, target, wall time and verdict."""
    recipe = get_recipe(name)
    metric, target = recipe.measured["metric"], recipe.measured.get("target")
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        args = [f"recipe={name}", "progress=false", f"output_dir={name}", *extra]
        # a cache of its own: selective-search proposals (R-CNN, Fast R-CNN) are computed within the time
        env = {**os.environ, "CNNKIT_CACHE_DIR": cwd}
        out = subprocess.run(
            [sys.executable, "-m", "cnnkit", "train", *args], cwd=cwd, capture_output=True, text=True, env=env
        )
        if out.returncode != 0:
            raise SystemExit(f"{name}: cnnkit train {' '.join(args)} failed:\n{out.stderr[-2000:]}")
        wall = time.perf_counter() - start
        run_dir = pathlib.Path(cwd) / name
        history = _read_metrics(run_dir / "metrics.csv")
        if keep is not None:
            shutil.copytree(run_dir, keep / name, dirs_exist_ok=True)
    final = history[-1][metric]
    others = {key: (history[-1][key], goal) for key, goal in recipe.measured.get("targets", {}).items()}
    ok = (target is None or final >= target) and all(v >= goal for v, goal in others.values())
    ok = ok and wall <= BUDGET_S
    return {
        "recipe": name,
        "metric": metric,
        "value": final,
        "target": target,
        "seconds": wall,
        "ok": ok,
        "curve": [row[metric] for row in history],
        "others": others,
    }


def _read_metrics(path: pathlib.Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` (one per epoch) as numbers."""
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="*", help=f"default: all of {', '.join(TARGETED)}")
    parser.add_argument("--list", action="store_true", help="print the recipes' commands and exit")
    parser.add_argument("--keep", type=pathlib.Path, help="copy each run directory here")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra overrides for every run"
    )
    args = parser.parse_args()
    names = args.recipes or TARGETED
    for name in names:
        get_recipe(name)  # an unknown name fails here, before any training
    if args.list:
        for name in names:
            print(f"{name}: cnnkit train recipe={name}  ({get_recipe(name).description})")
        return
    for name in names:
        r = run_recipe(name, args.set, args.keep)
        verdict = "ok" if r["ok"] else "MISSED"
        target = f"target >= {r['target']:.2f}" if r["target"] is not None else "no target"
        curve = ", ".join(f"{v:.3f}" for v in r["curve"])
        others = "".join(f", {k} {v:.4f} (>= {goal:.2f})" for k, (v, goal) in r["others"].items())
        print(
            f"{r['recipe']:14s} {r['metric']} {r['value']:.4f} ({target}){others} in {r['seconds'] / 60:.1f} min "
            f"(budget 15): {verdict}  [per epoch: {curve}]",
            flush=True,
        )


if __name__ == "__main__":
    main()
