"""CPU inference: torchvision eager vs fx fuse, channels_last, cnnkit's optimized model and onnxruntime.

For each model and batch size every path runs on the same input, in interleaved rounds (one call of each
path per round, so machine noise hits all alike); a path's figure is its best round, reported as images/s
and as the ratio over torchvision eager. All PyTorch paths run under ``torch.inference_mode``.

Paths:
    eager     torchvision model as it is (the baseline)
    fx_fuse   torch.fx.experimental.optimization.fuse(torchvision model)
    ch_last   torchvision model and input in torch.channels_last
    cnnkit    cnnkit.export.optimize_for_inference(cnnkit model with the torchvision state_dict), its layout
              chosen by measurement on the benchmark batch (channels_last="auto"; printed as cl / contig)
    ort       onnxruntime session (default threads unless --threads) on the fused cnnkit model's ONNX file

    python benchmarks/inference.py                       # resnet18 mobilenet_v2 efficientnet_b0 convnext_tiny
    python benchmarks/inference.py resnet18 --rounds 20 --batch 1
    python benchmarks/inference.py --threads 1           # one thread for torch and onnxruntime alike

On a loaded machine, multi-threaded runs measure scheduling stalls as much as the model (a thread pool is
only as fast as its slowest, descheduled thread); ``--threads 1`` gives steadier ratios there.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from collections.abc import Callable

import onnxruntime
import torch
import torchvision
from torch.fx.experimental.optimization import fuse as fx_fuse

import cnnkit
from cnnkit.export import best_call_times, export_onnx, fuse, optimize_for_inference

MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny"]
PATHS = ["eager", "fx_fuse", "ch_last", "cnnkit", "ort"]


def build_paths(
    name: str, example: torch.Tensor, onnx_dir: str, options: onnxruntime.SessionOptions
) -> dict[str, Callable[[torch.Tensor], object]]:
    """One callable per path, all computing the same function (checked against eager)."""
    reference = torchvision.models.get_model(name, weights=None).eval()
    state = reference.state_dict()
    channels_last = torchvision.models.get_model(name, weights=None).eval()
    channels_last.load_state_dict(state)
    channels_last = channels_last.to(memory_format=torch.channels_last)
    ours = cnnkit.create_model(name).eval()
    ours.load_state_dict(state)
    path = export_onnx(fuse(ours), os.path.join(onnx_dir, f"{name}.onnx"), example[:1], dynamic_batch=True)
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    paths = {
        "eager": reference,
        "fx_fuse": fx_fuse(reference),
        "ch_last": lambda x: channels_last(x.contiguous(memory_format=torch.channels_last)),
        "cnnkit": optimize_for_inference(ours, example_input=example),  # layout chosen on this batch
        "ort": lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]),
    }
    with torch.inference_mode():
        expected = reference(example)
        for key, run in paths.items():
            diff = (run(example) - expected).abs().max().item()
            assert diff < 1e-3, f"{name} {key} differs from eager by {diff}"
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--threads", type=int, help="intra-op threads of torch and onnxruntime (default: each one's default)"
    )
    args = parser.parse_args()
    options = onnxruntime.SessionOptions()
    if args.threads:
        torch.set_num_threads(args.threads)
        options.intra_op_num_threads = args.threads
    ort_threads = options.intra_op_num_threads or "0 = default, one per physical core"
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), torchvision "
        f"{torchvision.__version__}, onnxruntime {onnxruntime.__version__} (intra_op_num_threads "
        f"{ort_threads}), "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"input {args.size}x{args.size}, best of {args.rounds} interleaved rounds; "
        "ratio = images/s over eager"
    )
    print(
        f"{'model':16s} {'batch':>5s} {'eager img/s':>11s} "
        + " ".join(f"{p:>8s}" for p in PATHS)
        + "  layout  fastest"
    )
    with tempfile.TemporaryDirectory() as onnx_dir:
        for name in args.models:
            for batch in args.batch:
                x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
                paths = build_paths(name, x, onnx_dir, options)
                seconds = best_call_times(
                    {k: functools.partial(run, x) for k, run in paths.items()}, args.rounds
                )
                ratios = {key: seconds["eager"] / s for key, s in seconds.items()}
                fastest = max(ratios, key=ratios.get)
                print(
                    f"{name:16s} {batch:5d} {batch / seconds['eager']:11.1f} "
                    + " ".join(f"{ratios[p]:7.2f}x" for p in PATHS)
                    + f"  {'cl' if paths['cnnkit'].channels_last else 'contig':6s}  {fastest}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
