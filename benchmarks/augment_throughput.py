"""Images per second of cnnkit.augment's batched pipeline vs torchvision.transforms.v2 applied per sample.

Same transforms on both sides: RandomResizedCrop + HorizontalFlip + ColorJitter(0.4, 0.4, 0.4, 0.1) +
RandomErasing. torchvision runs the way a DataLoader runs it: one sample at a time, then the batch is
stacked. Timings are best-of-N, the two sides interleaved, in one run; the printed ratios are torchvision's
time over ours, by wall clock and by process CPU time (steadier on a shared machine; equal to wall time
with one thread on an idle one).

Cases: (a) CPU, 256 uint8 3x40x40 images cropped to 32; (b) CPU, 64 uint8 3x256x256 cropped to 224;
(c) the batched pipeline on CUDA (images already on the GPU) vs torchvision per sample on the CPU.

Usage: python benchmarks/augment_throughput.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision.transforms.v2 as T

from cnnkit.augment import ColorJitter, Compose, HorizontalFlip, RandomErasing, RandomResizedCrop


def ours(size: int) -> Compose:
    return Compose(
        [RandomResizedCrop(size), HorizontalFlip(), ColorJitter(0.4, 0.4, 0.4, 0.1), RandomErasing()]
    )


def theirs(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.1),
            T.RandomErasing(),
        ]
    )


def best_times(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]
) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) seconds of each function, runs interleaved so load changes hit both sides alike."""
    for fn in fns.values():
        fn()
    sync()
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def compare(name: str, batch: int, side: int, crop: int, repeats: int, device: str = "cpu") -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=gen)
    pipeline, reference = ours(crop), theirs(crop)
    on_device = images.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = best_times(
        {
            "cnnkit": lambda: pipeline(on_device),
            "torchvision": lambda: torch.stack([reference(img) for img in images]),
        },
        repeats,
        sync,
    )
    (w_ours, c_ours), (w_tv, c_tv) = best["cnnkit"], best["torchvision"]
    print(
        f"({name}) {batch} x 3x{side}x{side} -> {crop}, cnnkit on {device}: "
        f"cnnkit {batch / w_ours:7.0f} img/s ({w_ours * 1e3:6.1f} ms wall, {c_ours * 1e3:6.1f} ms cpu), "
        f"torchvision per sample on cpu {batch / w_tv:6.0f} img/s ({w_tv * 1e3:6.1f} ms wall, {c_tv * 1e3:6.1f} ms cpu); "
        f"ratio {w_tv / w_ours:5.1f}x wall, {c_tv / c_ours:5.1f}x cpu time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1, as a DataLoader worker)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    compare("a", 256, 40, 32, args.repeats)
    compare("b", 64, 256, 224, args.repeats)
    if torch.cuda.is_available():
        compare("c", 64, 256, 224, args.repeats, "cuda")
    else:
        print("(c) skipped: no CUDA")


if __name__ == "__main__":
    main()
