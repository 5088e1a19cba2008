"""Forward latency of cnnkit's zoo vs the torchvision builders with the same weights (CPU, eval, batch 8).

Both models get the same state_dict; timings alternate ours/theirs so that machine noise hits both alike,
and the reported figure is the median over rounds of the per-round ratio ``ours / torchvision`` (lower is
better; goal: <= 1.03 for every model).

    python benchmarks/zoo_inference.py                 # representative models at their default size
    python benchmarks/zoo_inference.py --all           # every torchvision-compatible model
    python benchmarks/zoo_inference.py resnet50 vgg16  # chosen models
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import cnnkit
from cnnkit.models.registry import model_card

DEFAULT = [
    "alexnet",
    "vgg11",
    "resnet18",
    "resnet50",
    "densenet121",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
]


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def measure(name: str, batch: int, rounds: int, size: int | None) -> tuple[float, float, float]:
    """Median seconds per forward of (ours, torchvision) and the median per-round ratio."""
    card = model_card(name)
    theirs = torchvision.models.get_model(card.torchvision, weights=None).eval()
    ours = cnnkit.create_model(name).eval()
    ours.load_state_dict(theirs.state_dict())
    c, h, w = card.input_size
    if size:
        h = w = size
    x = torch.randn(batch, c, h, w)
    ours_t, theirs_t, ratios = [], [], []
    with torch.inference_mode():
        _time(ours, x), _time(theirs, x)  # warm-up
        for r in range(rounds):
            if r % 2 == 0:  # alternate who goes first
                a, b = _time(ours, x), _time(theirs, x)
            else:
                b, a = _time(theirs, x), _time(ours, x)
            ours_t.append(a)
            theirs_t.append(b)
            ratios.append(a / b)
    return statistics.median(ours_t), statistics.median(theirs_t), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*")
    parser.add_argument("--all", action="store_true", help="every torchvision-compatible model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--size", type=int, default=None, help="override the input side (default: the card's)"
    )
    args = parser.parse_args()
    names = args.models or (
        [n for n in cnnkit.list_models() if model_card(n).torchvision] if args.all else DEFAULT
    )
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"batch {args.batch}, {args.rounds} alternating rounds, median; ratio = cnnkit / torchvision (lower is better)"
    )
    print(f"{'model':22s} {'input':>9s} {'cnnkit ms':>10s} {'tv ms':>10s} {'ratio':>7s}")
    worst = 0.0
    for name in names:
        ours, theirs, ratio = measure(name, args.batch, args.rounds, args.size)
        worst = max(worst, ratio)
        side = args.size or model_card(name).input_size[1]
        print(f"{name:22s} {side:>9d} {ours * 1e3:10.1f} {theirs * 1e3:10.1f} {ratio:7.3f}")
    print(f"worst ratio {worst:.3f} (goal <= 1.03)")


if __name__ == "__main__":
    main()
