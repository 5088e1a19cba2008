"""U-Net++ pruned at inference: held-out mIoU, MACs and CPU time of each head of one trained run.

Run: ``python benchmarks/unetplusplus_prune.py RUN_DIR [--repeats N] [--threads T]``

``RUN_DIR`` is a U-Net++ run trained with deep supervision (the ``unetplusplus`` recipe's, e.g. kept by
``python benchmarks/train_tasks.py unetplusplus --keep DIR``). For each ``k`` from 1 to ``L`` the model
answers from its head at ``X^{0,k}`` (``X^{1,k}``, upsampled, for ``k < L`` in the ``full_resolution="block"``
layout) (``model.prune = k``; the weights are the same) and this script prints:
the run's held-out mIoU through :func:`cnnkit.evaluate` (the same evaluation as ``cnnkit eval``), the MACs of
one image by :func:`cnnkit.analyze` (only the nodes the head needs are traced), and the best of ``--repeats``
forward passes of one image at the run's image size on ``--threads`` threads. ``k = L`` is the unpruned model.
"""

from __future__ import annotations

import argparse
import time

import torch

import cnnkit
from cnnkit.engine.inference import evaluate, load


def best_time(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """The fastest of ``repeats`` forward passes, in seconds (after two warm-up passes)."""
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a U-Net++ run directory trained with deep supervision")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    predictor = load(args.run, device="cpu")
    model = predictor.model
    if not getattr(model, "deep_supervision", False):
        raise SystemExit(f"{args.run}: not a U-Net++ trained with deep supervision (pruning needs its heads)")
    depth = len(model.heads)
    size = predictor.input_size
    x = torch.randn(1, predictor.channels, size, size)
    rows = []
    for k in range(1, depth + 1):
        model.prune = k
        metrics = evaluate(predictor)
        torch.set_num_threads(args.threads)
        macs = cnnkit.analyze(model, input_size=tuple(x.shape[1:])).macs
        seconds = best_time(model, x, args.repeats)
        torch.set_num_threads(max(torch.get_num_threads(), 1))
        rows.append((k, metrics["miou"], macs, seconds))
        print(
            f"prune={k}: mIoU {metrics['miou']:.4f}, {macs / 1e9:.3f} G MACs, {seconds * 1000:.1f} ms",
            flush=True,
        )
    model.prune = None
    print(
        f"\n{size}x{size}, one image, best of {args.repeats}, {args.threads} thread(s); k = {depth}: unpruned"
    )
    print("| `prune` | " + " | ".join(str(k) for k, *_ in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    print("| held-out mIoU | " + " | ".join(f"{m:.3f}" for _, m, _, _ in rows) + " |")
    print("| MACs | " + " | ".join(f"{c / 1e9:.3f} G" for _, _, c, _ in rows) + " |")
    print("| time | " + " | ".join(f"{s * 1000:.1f} ms" for *_, s in rows) + " |")


if __name__ == "__main__":
    main()
