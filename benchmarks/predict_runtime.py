"""``predict`` through PyTorch and through onnxruntime: images/s with pre- and post-processing included.

For one model per task (two classifiers), a run directory is written with randomly initialised weights (the
time of a forward pass does not depend on the weights' values) and loaded twice: ``cnnkit.load(RUN, fuse=False,
channels_last=False)`` (the PyTorch path as trained, eager under ``torch.no_grad``) and ``cnnkit.load(RUN/model.onnx)`` (the file exported by
``cnnkit.export.onnx_for_run``, run by onnxruntime with the same task object around it). A third path,
``torch-opt``, is the PyTorch predictor with its model replaced by ``optimize_for_inference`` (folded
BatchNorms, flat graph, layout measured on the benchmark batch). ``--compile`` adds two more:
``torch-compile``, ``optimize_for_inference(compile=True)`` (``torch.compile`` with inductor's defaults:
generated C++ for the pointwise work, convolutions and matmuls left to ATen), and ``torch-frozen``, the
torch-opt module through ``torch.compile(options={"freezing": True})``: the weights become constants, so
inductor prepacks them for oneDNN and fuses the pointwise operations that follow a convolution or linear into
it (compiling takes minutes per model and batch on a small CPU; each compile's seconds are printed). A compile
that fails is reported and its path left out, never timed uncompiled. Each path predicts the same decoded
uint8 images (375x500, VOC's typical size: the task's resize / letterbox, normalisation, forward,
post-processing into the original pixels; reading files is left out), ``batch`` images per call, in
interleaved rounds; a path's figure is its best round. Ratios are over the PyTorch path; the last column is
onnxruntime over the fastest PyTorch path (the 1.3x goal of issue #22).

Detection's post-processing with random weights keeps almost no box (scores of about 1e-4 against the default
threshold of 0.25), so its figures are those of a quiet scene; decoding and NMS are the same code after both
runtimes.

    python benchmarks/predict_runtime.py                         # every model, batch 1 and 16
    python benchmarks/predict_runtime.py resnet18 --batch 8 --rounds 10
    python benchmarks/predict_runtime.py --threads 1             # one thread for torch and onnxruntime alike
    python benchmarks/predict_runtime.py resnet18 --batch 8 --compile
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

import cnnkit
from cnnkit.engine.build import build_model
from cnnkit.engine.checkpoint import save_weights
from cnnkit.engine.config import config_to_dict, load_config
from cnnkit.engine.inference import Predictor
from cnnkit.export import RELATIVE_TOLERANCE, export_run, optimize_for_inference
from cnnkit.export.formats import CACHED_ONNX

RUNS = {
    "resnet18": {"task": "classification", "model": "resnet18", "size": 224, "channels": 3, "classes": 10},
    "convnext_tiny": {
        "task": "classification",
        "model": "convnext_tiny",
        "size": 224,
        "channels": 3,
        "classes": 10,
    },
    # the shipped recipes' detectors and segmenter (cnnkit/recipes/yolo.yaml, yolo_grid.yaml, unet.yaml), at 128x128
    "yolo": {
        "task": "detection",
        "model": "yolo",
        "backbone": "mobilenet_v3_small",
        "model_kwargs": {"neck_channels": 64, "head_channels": 48},
        "size": 128,
        "channels": 1,
        "classes": 10,
    },
    "yolo_grid": {
        "task": "detection",
        "model": "yolo_grid",
        "backbone": "mobilenet_v3_large",
        "model_kwargs": {"fpn_channels": 64, "aspect_ratios": [1.0]},
        "size": 128,
        "channels": 1,
        "classes": 10,
    },
    "unet": {
        "task": "segmentation",
        "model": "unet",
        "backbone": "mobilenet_v3_large",
        "model_kwargs": {"score_stages": [3, 2, 1]},
        "size": 128,
        "channels": 1,
        "classes": 10,
    },
}
PATHS = ("torch", "torch-opt", "torch-compile", "torch-frozen", "onnxruntime")
COMPILED = ("torch-compile", "torch-frozen")


def write_run(name: str, root: Path) -> Path:
    """A run directory holding a randomly initialised model of ``RUNS[name]`` and its metadata."""
    spec = dict(RUNS[name])
    size, channels, count = spec.pop("size"), spec.pop("channels"), spec.pop("classes")
    config = load_config(None, values={**spec, "recipe": "none", "data.image_size": size})
    classes = [str(c) for c in range(count)]
    torch.manual_seed(0)
    model = build_model(config, classes, channels).eval()
    meta = {
        "config": config_to_dict(config),
        "classes": classes,
        "input": {"channels": channels, "size": size, "mean": [0.5] * channels, "std": [0.25] * channels},
    }
    run = root / name
    run.mkdir()
    save_weights(run / "best.safetensors", model, meta)
    return run


def optimized(run: Path, example: torch.Tensor, compile: str | None = None) -> Predictor | None:
    """The run's PyTorch predictor with ``optimize_for_inference(model)``, compiled as ``compile`` names
    (``None``: not compiled; one of ``COMPILED``); ``None`` when optimising or compiling fails."""
    predictor = cnnkit.load(
        run, device="cpu", fuse=False, channels_last=False
    )  # optimised from the trained model
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = optimize_for_inference(
                predictor.model, example_input=example, compile=compile == "torch-compile"
            )
            if compile == "torch-frozen":
                model.model = torch.compile(model.model, options={"freezing": True})
                model(example)  # compiles (under inference mode, which freezing needs)
    except (
        Exception
    ) as err:  # a model the fx-based optimisation or the compiler cannot take: reported, not timed
        print(f"  {run.name}: {compile or 'optimize_for_inference'} failed ({type(err).__name__}: {err})")
        return None
    failed = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    if failed:  # optimize_for_inference fell back to the uncompiled module: timing it would mislabel it
        print(f"  {run.name}: {failed[0]}")
        return None
    if compile:
        print(f"  {run.name} batch {len(example)}: {compile} compiled in {time.perf_counter() - start:.0f} s")
    predictor.model = model
    return predictor


def predictors(run: Path, batch: int, compile: bool) -> dict[str, Predictor]:
    """One predictor per path (the run's ONNX file already exported), the optimised model's layout
    measured on a batch of ``batch``."""
    # the eager model as trained: cnnkit.load's default already folds BatchNorms and runs channels_last
    plain = cnnkit.load(run, device="cpu", fuse=False, channels_last=False)
    example = torch.randn(batch, plain.channels, plain.input_size, plain.input_size)
    paths = {"torch": plain, "torch-opt": optimized(run, example)}
    for key in COMPILED if compile else ():
        paths[key] = optimized(run, example, key)
    paths["onnxruntime"] = cnnkit.load(run / CACHED_ONNX)
    return {key: predictor for key, predictor in paths.items() if predictor is not None}


def measure(
    name: str, root: Path, batches: list[int], rounds: int, compile: bool
) -> list[tuple[int, dict[str, float]]]:
    run = write_run(name, root)
    error = export_run(run, run / CACHED_ONNX)  # fused, dynamic batch, with the metadata predict reads
    assert error <= RELATIVE_TOLERANCE, f"{name}: the ONNX file differs from PyTorch by {error:.3g}"
    rows = []
    for batch in batches:
        paths = predictors(run, batch, compile)
        channels = paths["torch"].channels
        generator = torch.Generator().manual_seed(batch)
        images = [
            torch.randint(0, 256, (channels, 375, 500), dtype=torch.uint8, generator=generator)
            for _ in range(batch)
        ]
        for predictor in paths.values():  # warm-up (first-call allocations, lazy initialisation)
            predictor.predict(images, batch_size=batch)
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(rounds):
            for key, predictor in paths.items():
                start = time.perf_counter()
                predictor.predict(images, batch_size=batch)
                best[key] = min(best[key], time.perf_counter() - start)
        rows.append((batch, {key: batch / seconds for key, seconds in best.items()}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", default=list(RUNS), metavar="MODEL", help=", ".join(RUNS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="intra-op threads of torch and onnxruntime")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    args = parser.parse_args()
    unknown = [name for name in args.models if name not in RUNS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(RUNS)}")
    if args.threads:
        torch.set_num_threads(args.threads)  # OnnxPredictor takes torch's thread count
    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} threads; "
        f"best of {args.rounds} interleaved rounds; images 375x500 uint8, pre/post-processing included"
    )
    print()
    shown = [key for key in PATHS[1:] if args.compile or key not in COMPILED]
    print(
        f"| model | task | input | batch | torch img/s | {' | '.join(shown)} | onnxruntime / fastest torch |"
    )
    print(f"| --- | --- | --- | ---: | ---: |{' ---: |' * (len(shown) + 1)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = RUNS[name]
            for batch, rates in measure(name, Path(tmp), args.batch, args.rounds, args.compile):
                base = rates["torch"]
                ratios = [f"{rates[k] / base:.2f}x" if k in rates else "n/a" for k in shown]
                fastest = max(rate for key, rate in rates.items() if key != "onnxruntime")
                ratios.append(f"{rates['onnxruntime'] / fastest:.2f}x")
                print(
                    f"| {name} | {spec['task']} | {spec['channels']}x{spec['size']}x{spec['size']} | {batch} "
                    f"| {base:.1f} | {' | '.join(ratios)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
