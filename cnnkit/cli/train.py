"""``cnnkit train [CONFIG.yaml] [key=value ...] [--resume RUN_DIR]``."""

from __future__ import annotations

import argparse
import pathlib

from cnnkit.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a model (default: LeNet-5 on the bundled MNIST-5k)",
        description=(
            "Train a model. With no arguments: LeNet-5 on the bundled MNIST-5k (about a minute on a CPU). "
            "Settings come from defaults, then an optional YAML file, then key=value overrides, e.g. "
            "`cnnkit train model=resnet18 data=imagefolder:PATH epochs=5 optim.lr=0.01`. Prints the final "
            "test accuracy and, on the last line, the run directory."
        ),
    )
    parser.add_argument(
        "args", nargs="*", metavar="CONFIG|KEY=VALUE", help="a YAML config file and/or overrides"
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    parser.set_defaults(func=run)


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The optional config file (first argument without ``=``) and the ``key=value`` overrides."""
    config, overrides = None, []
    for i, arg in enumerate(args):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0:
            config = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}: overrides are key=value, e.g. epochs=5")
    return config, overrides


def run(args: argparse.Namespace) -> int:
    """Train (or resume), print the result and the run directory."""
    from cnnkit.engine.config import load_config
    from cnnkit.engine.run import resume, train

    config_path, overrides = split_args(args.args)
    if args.resume:
        if config_path:
            raise ConfigError("--resume takes the run's own config; pass only key=value overrides")
        result = resume(pathlib.Path(args.resume), overrides)
    else:
        result = train(load_config(config_path, overrides))
    print(result_line(result.metrics, result.best, result.seconds))
    print(result.run_dir)
    return 0


def result_line(metrics: dict, best: float | None, seconds: float) -> str:
    """One line with a run's final validation metrics (per task) and the best value of its chosen metric."""
    best_text = f" (best {best:.4f})" if best is not None else ""
    if "accuracy" in metrics:
        head = f"test accuracy {metrics['accuracy']:.4f}{best_text}, top-5 {metrics['top5']:.4f}"
    elif "mask_map" in metrics:
        head = (
            f"mask mAP {metrics['mask_map']:.4f}{best_text}, mask mAP@.5 {metrics['mask_map50']:.4f}, "
            f"box mAP@.5 {metrics['map50']:.4f}"
        )
    elif "map" in metrics:
        head = f"mAP@[.5:.95] {metrics['map']:.4f}{best_text}, mAP@.5 {metrics['map50']:.4f}"
    elif "miou" in metrics:
        head = f"mIoU {metrics['miou']:.4f}{best_text}, Dice {metrics['dice']:.4f}"
    else:
        head = "finished"
    return f"{head}, in {seconds:.1f} s"
