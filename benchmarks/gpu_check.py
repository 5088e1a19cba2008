"""One short run on a CUDA GPU that measures the device paths (AMP, channels_last, NCCL) and prints one table.

Checks, in order (about 5 minutes on one recent GPU; each check reports its own error as a row, so one
failure does not hide the others):

train      each task's recipe model (lenet5, yolo, unet, mask_rcnn; the recipe's pretraining and phases left
           out), 50 optimizer steps from scratch with ``amp=true channels_last=true`` through ``cnnkit.train``:
           images/s over steps 11-50, and whether the loss fell (mean of the last 10 steps below the mean of
           the first 10)
augment    cnnkit.augment's batched pipeline on the GPU against torchvision.transforms.v2 applied per sample
           on the GPU (RandomResizedCrop + flip + ColorJitter + RandomErasing): 256 x 3x40x40 -> 32 and
           64 x 3x256x256 -> 224; goal >= 20x
inference  ``optimize_for_inference`` (fused, layout measured) against torchvision eager, both under fp16
           autocast and ``torch.inference_mode``, batch 64 at 224x224, best of 10 interleaved rounds
ddp        with two GPUs or more: ``torchrun --nproc_per_node=2 -m cnnkit train`` (NCCL) for one epoch

Without CUDA it says so and exits 0, measuring nothing.

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --skip train ddp
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROW = "| {check} | {setting} | {figure} | {goal} | {status} |"
RECIPES = ("lenet5", "yolo", "unet", "mask_rcnn")
INFERENCE_MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny")
STEPS = 50


def row(check: str, setting: str, figure: str, goal: str = "", status: str = "") -> str:
    return ROW.format(check=check, setting=setting, figure=figure, goal=goal, status=status)


def failed(check: str, setting: str, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return row(check, setting, f"error: {type(err).__name__}: {first}"[:160], status="FAIL")


def best_seconds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each function over interleaved rounds, the GPU synchronised around each call."""
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def check_training(recipe: str, root: Path) -> str:
    import cnnkit
    from cnnkit.engine.config import load_config
    from cnnkit.engine.trainer import Callback

    class StepClock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_step_end(self, trainer, loss) -> None:
            self.losses.append(loss.item())  # synchronises: the step is done
            self.times.append(time.perf_counter())

    batch = load_config(None, values={"recipe": recipe}).data.batch_size
    clock = StepClock()
    cnnkit.train(
        recipe=recipe,
        pretrain={},
        phases=[],
        epochs=1,
        amp=True,
        channels_last=True,
        device="cuda",
        progress=False,
        plots=False,
        data={"train_size": STEPS * batch, "val_size": batch},
        output_dir=str(root / recipe),
        callbacks=[clock],
    )
    steps = len(clock.times)
    rate = (steps - 10) * batch / (clock.times[-1] - clock.times[9])
    first, last = sum(clock.losses[:10]) / 10, sum(clock.losses[-10:]) / 10
    falls = last < first
    return row(
        "train",
        f"{recipe}, AMP + channels_last, batch {batch}, {steps} steps",
        f"{rate:,.0f} img/s; loss {first:.3f} -> {last:.3f}",
        "loss falls",
        "ok" if falls and steps == STEPS else "FAIL",
    )


def check_augment(batch: int, side: int, crop: int) -> str:
    import torchvision.transforms.v2 as T

    from cnnkit.augment import ColorJitter, Compose, HorizontalFlip, RandomErasing, RandomResizedCrop

    ours = Compose(
        [RandomResizedCrop(crop), HorizontalFlip(), ColorJitter(0.4, 0.4, 0.4, 0.1), RandomErasing()]
    )
    theirs = T.Compose(
        [
            T.RandomResizedCrop(crop),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.4, 0.4, 0.4, 0.1),
            T.RandomErasing(),
        ]
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=generator).cuda()
    best = best_seconds(
        {"cnnkit": lambda: ours(images), "torchvision": lambda: torch.stack([theirs(i) for i in images])}, 7
    )
    ratio = best["torchvision"] / best["cnnkit"]
    return row(
        "augment",
        f"{batch} x 3x{side}x{side} -> {crop}, both on the GPU",
        f"cnnkit {batch / best['cnnkit']:,.0f} img/s, torchvision {batch / best['torchvision']:,.0f} img/s: "
        f"{ratio:.1f}x",
        ">= 20x",
        "ok" if ratio >= 20 else "below goal",
    )


def check_inference(name: str) -> str:
    import torchvision

    import cnnkit
    from cnnkit.export import optimize_for_inference

    reference = torchvision.models.get_model(name, weights=None).eval().cuda()
    ours = cnnkit.create_model(name).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(64, 3, 224, 224, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        fast = optimize_for_inference(ours.cuda(), example_input=x)
        with torch.inference_mode():
            difference = (fast(x).float() - reference(x).float()).abs().max().item()
            best = best_seconds({"eager": lambda: reference(x), "cnnkit": lambda: fast(x)}, 10)
    ratio = best["eager"] / best["cnnkit"]
    layout = "channels_last" if fast.channels_last else "contiguous"
    return row(
        "inference",
        f"{name}, batch 64, fp16 autocast, cnnkit {layout}",
        f"eager {64 / best['eager']:,.0f} img/s, cnnkit {ratio:.2f}x (max |diff| {difference:.2g})",
        ">= 1x",
        "ok" if ratio >= 1.0 else "slower",
    )


def check_ddp(root: Path) -> str:
    out = root / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        "cnnkit",
        "train",
        "epochs=1",
        "data.train_size=2048",
        "data.val_size=256",
        "device=cuda",
        "amp=true",
        "progress=false",
        "plots=false",
        f"output_dir={out}",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return row(
            "ddp",
            "torchrun 2 x NCCL, lenet5, 1 epoch",
            f"exit {done.returncode}: {tail[0][:120]}",
            status="FAIL",
        )
    ok = (out / "best.safetensors").is_file()
    lines = done.stdout.strip().splitlines()
    summary = lines[-2] if ok and len(lines) >= 2 else "no checkpoint"  # the run's last metrics line
    return row(
        "ddp",
        "torchrun 2 x NCCL, lenet5, 1 epoch",
        f"{seconds:.1f} s with start-up; {summary}",
        "runs",
        "ok" if ok else "FAIL",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("train", "augment", "inference", "ddp"),
        help="checks to leave out",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU visible (torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
            "nothing measured"
        )
        return 0
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    print(
        f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    )
    print()
    print(ROW.format(check="check", setting="setting", figure="result", goal="goal", status="status"))
    print("| --- | --- | --- | --- | --- |")
    checks: list[tuple[str, str, Callable[[], str]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "train" not in args.skip:
            checks += [("train", r, lambda r=r: check_training(r, root)) for r in RECIPES]
        if "augment" not in args.skip:
            checks += [
                ("augment", f"{b}x{s}->{c}", lambda b=b, s=s, c=c: check_augment(b, s, c))
                for b, s, c in ((256, 40, 32), (64, 256, 224))
            ]
        if "inference" not in args.skip:
            checks += [("inference", m, lambda m=m: check_inference(m)) for m in INFERENCE_MODELS]
        if "ddp" not in args.skip:
            if torch.cuda.device_count() >= 2:
                checks.append(("ddp", "2 GPUs", lambda: check_ddp(root)))
            else:
                print(row("ddp", "2-process NCCL", "skipped: one GPU", status="skipped"), flush=True)
        for check, setting, run in checks:
            try:
                print(run(), flush=True)
            except Exception as err:  # report and go on: one broken path should not hide the others
                print(failed(check, setting, err), flush=True)
            finally:
                torch.cuda.empty_cache()
    print()
    print(f"gpu_check: {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
