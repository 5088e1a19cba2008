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
            "Settings come from defaults, then a shipped recipe (recipe=NAME, or the one of the run's model "
            "and data; recipe=none for none; see `cnnkit recipes`), then an optional YAML file, then "
            "key=value overrides, e.g. "
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
    print(f"{result.summary}, in {result.seconds:.1f} s")
    print(result.dir)
    return 0
