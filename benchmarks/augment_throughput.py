"""Images per second of cnnkit.augment's batched pipeline vs torchvision.transforms.v2 applied per sample.

Same transforms on both sides: RandomResizedCrop + HorizontalFlip + ColorJitter(0.4, 0.4, 0.4, 0.1) +
RandomErasing. torchvision runs the way a DataLoader runs it: one sample at a time, then the batch is
stacked. Timings are best-of-N, interleaved, in one run; the printed ratio is ours / torchvision.

Cases: (a) CPU, 256 uint8 3x40x40 images cropped to 32; (b) CPU, 64 uint8 3x256x256 cropped to 224;
(c) the batched pipeline on CUDA (images already on the GPU) vs torchvision per sample on the CPU.

Usage: python benchmarks/augment_throughput.py [--repeats 7] [--threads N]
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


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(name: str, batch: int, side: int, crop: int, repeats: int, device: str = "cpu") -> None:
    images = torch.randint(
        0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    pipeline, reference = ours(crop), theirs(crop)
    on_device = images.to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t_ours = best_time(lambda: pipeline(on_device), repeats, sync)
    t_tv = best_time(lambda: torch.stack([reference(img) for img in images]), repeats)
    print(
        f"({name}) {device:4s} {batch} x 3x{side}x{side} -> {crop}: cnnkit {batch / t_ours:9.0f} img/s ({t_ours * 1e3:7.1f} ms), "
        f"torchvision per sample (cpu) {batch / t_tv:8.0f} img/s ({t_tv * 1e3:7.1f} ms), ratio {t_tv / t_ours:5.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
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
