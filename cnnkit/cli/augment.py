"""``cnnkit augment --preview``: write a grid of original and augmented samples with boxes and masks."""

from __future__ import annotations

import argparse
import pathlib

import torch

from cnnkit.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cnnkit augment``."""
    parser = subparsers.add_parser(
        "augment",
        help="preview an augmentation pipeline on real photos or generated sets",
        description="Write a grid image: originals on one row, their augmented versions (boxes and masks "
        "drawn) on the next.",
    )
    parser.add_argument("--preview", action="store_true", help="write the preview grid (the only action)")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML list of transforms (default: crop, flip, rotate, jitter, erase)",
    )
    parser.add_argument(
        "--dataset", default="photos", metavar="NAME", help="photos | mnist-det | mnist-seg (default photos)"
    )
    parser.add_argument(
        "--out",
        default="augment_preview.png",
        metavar="PNG",
        help="output image (default augment_preview.png)",
    )
    parser.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the pipeline, augment ``--n`` samples of ``--dataset`` and save the grid to ``--out``."""
    from PIL import Image

    from cnnkit.augment import load_transform
    from cnnkit.augment.preview import dataset_samples, default_pipeline, preview_grid

    if not args.preview:
        raise ConfigError("nothing to do: pass --preview to write a preview grid")
    pipeline = load_transform(args.config) if args.config else None
    images, targets, classes = dataset_samples(args.dataset, args.n, args.seed)
    if pipeline is None:
        pipeline = default_pipeline(images.shape[-1], hue=images.shape[1] == 3)
    augmented, augmented_targets = pipeline(images, targets, torch.Generator().manual_seed(args.seed))
    grid = preview_grid(images, targets, augmented, augmented_targets, classes)
    out = pathlib.Path(args.out)
    try:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out)
    except ValueError as err:
        raise ConfigError(f"cannot write {out}: {err}") from None
    print(f"wrote {out}: {args.n} samples of {args.dataset}, originals above augmented")
    return 0
