"""Benchmark the NumPy reference convolution: the page's loop vs the vectorized GEMM vs torch.

Run: ``python benchmarks/reference_conv.py [--repeats N] [--threads T] [--dtypes float32 float64]``

For each of the three shapes of issue 3 and each dtype (the same dtype for all three implementations), it
times ``cnnkit.reference.conv2d_forward_loop`` (the page's loop), ``cnnkit.reference.conv2d_forward``
(strided view + one GEMM) and ``torch.nn.functional.conv2d`` on the CPU, best of ``N`` runs each with
``time.perf_counter``, and prints the speed-up loop/vectorized and the ratio vectorized/torch (below 1 means
the NumPy version is faster). Every implementation runs on the full tensors. The largest absolute
difference from torch is printed as a check. Goals: loop/vectorized >= 10, vectorized/torch <= 2.

NumPy's BLAS and torch both use ``T`` threads (default 1: one core each, which measures the algorithms
rather than how they share a busy machine; ``--threads 0`` keeps the libraries' defaults). BLAS reads its
thread count when NumPy is first imported, so the script sets it before importing NumPy and torch.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

# (batch, c_in, size, c_out, kernel, stride, padding)
SHAPES = [
    (8, 64, 56, 64, 3, 1, 1),
    (8, 3, 224, 64, 7, 2, 3),
    (32, 16, 32, 32, 3, 1, 1),
]
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Return the fastest of ``repeats`` wall-clock runs of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(repeats: int, dtypes: list[str]) -> None:
    """Time the three implementations on every shape and dtype and print the table."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from cnnkit.reference import conv2d_forward, conv2d_forward_loop

    blas_threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"numpy {np.__version__} (BLAS threads: {blas_threads}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), CPU"
    )
    print(f"{os.cpu_count()} CPU cores, load average {load} at start; best of {repeats} runs; times in ms")
    header = (
        f"{'shape (N,C,H,W) -> C_out kxk s p':<36}{'dtype':<9}{'loop':>9}{'vectorized':>12}{'torch':>9}"
        f"{'loop/vec':>10}{'vec/torch':>11}{'max|diff|':>11}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        for batch, c_in, size, c_out, kernel, stride, padding in SHAPES:
            x = rng.standard_normal((batch, c_in, size, size)).astype(dtype)
            w = (rng.standard_normal((c_out, c_in, kernel, kernel)) / np.sqrt(c_in * kernel**2)).astype(dtype)
            b = rng.standard_normal(c_out).astype(dtype)
            tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
            with torch.no_grad():
                expected = F.conv2d(tx, tw, tb, stride, padding).numpy()
                t_torch = best_time(lambda: F.conv2d(tx, tw, tb, stride, padding), repeats)  # noqa: B023
            got = conv2d_forward(x, w, b, stride, padding)
            t_vec = best_time(lambda: conv2d_forward(x, w, b, stride, padding), repeats)  # noqa: B023
            t_loop = best_time(lambda: conv2d_forward_loop(x, w, b, stride, padding), repeats)  # noqa: B023
            name = f"{batch}x{c_in}x{size}x{size} -> {c_out} {kernel}x{kernel} s{stride} p{padding}"
            print(
                f"{name:<36}{dtype:<9}{t_loop * 1e3:>9.1f}{t_vec * 1e3:>12.1f}{t_torch * 1e3:>9.1f}"
                f"{t_loop / t_vec:>10.1f}{t_vec / t_torch:>11.2f}{np.abs(got - expected).max():>11.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per implementation; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="threads for BLAS and torch; 0 = defaults")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    args = parser.parse_args()
    if args.threads > 0:
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(args.threads)
    run(args.repeats, args.dtypes)


if __name__ == "__main__":
    main()
