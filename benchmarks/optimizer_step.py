"""Optimizer step: PyTorch's fused update against its per-tensor loop, as :func:`cnnkit.engine.optim.build_optimizer`
builds them (``fused=None``, the default, against ``fused=False``).

Part 1 times ``optimizer.step()`` alone on gradients of fixed random values, for models with few and many
parameter tensors. Part 2 times whole training steps (forward, CE + Dice, backward, step) of the
``unetplusplus`` and ``unet`` recipes' models at the recipes' first size (64x64, batch 16), where the step's
fixed costs weigh most. The two variants alternate within a round and every figure is the median over the
rounds of the per-round ratio ``loop / fused`` (above 1: fused is faster), so both see the same stretch of a
shared machine.

    python benchmarks/optimizer_step.py [--rounds 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the cnnkit command sets it (see cnnkit.cli)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit.engine.optim import build_optimizer  # noqa: E402
from cnnkit.tasks.segmentation.task import SegmentationTask  # noqa: E402

SEGMENTERS = {  # the recipes' models (cnnkit/recipes/unet.yaml, unetplusplus.yaml)
    "unet": {"score_stages": [3, 2, 1]},
    "unetplusplus": {"full_resolution": "block", "deep_supervision": True, "score_stages": [3, 2, 1]},
}


def segmenter(name: str) -> nn.Module:
    return cnnkit.create_model(
        name, backbone="mobilenet_v3_large", in_chans=1, num_classes=11, **SEGMENTERS[name]
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_time(optimizer: torch.optim.Optimizer, device: torch.device, repeats: int) -> float:
    """Median seconds of ``optimizer.step()`` over ``repeats`` calls (after two warm-up calls)."""
    times = []
    for i in range(repeats + 2):
        sync(device)
        tick = time.perf_counter()
        optimizer.step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - tick)
    return statistics.median(times)


def alternate(
    loop: Callable[[], float], fused: Callable[[], float], rounds: int
) -> tuple[float, float, float]:
    """Median seconds of ``loop()`` and of ``fused()``, called in turn (the first one alternating each round),
    and the median of the per-round ratios ``loop / fused``."""
    times: dict[Callable[[], float], list[float]] = {loop: [], fused: []}
    ratios = []
    for r in range(rounds):
        for measure in (loop, fused) if r % 2 == 0 else (fused, loop):
            times[measure].append(measure())
        ratios.append(times[loop][-1] / times[fused][-1])
    return statistics.median(times[loop]), statistics.median(times[fused]), statistics.median(ratios)


def optimizer_only(
    model: nn.Module, name: str, device: torch.device, rounds: int
) -> tuple[float, float, float]:
    """Median step seconds (loop, fused) and the median per-round ratio, for ``name`` on ``model``'s
    parameters with gradients set once."""
    pair = [copy.deepcopy(model).to(device) for _ in range(2)]
    for net in pair:
        generator = torch.Generator().manual_seed(0)
        for p in net.parameters():
            p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(device)
    loop = build_optimizer(pair[0], name, 1e-3, 1e-4, fused=False)
    fused = build_optimizer(pair[1], name, 1e-3, 1e-4)
    assert fused.defaults.get("fused"), "the default build did not fuse"
    return alternate(lambda: step_time(loop, device, 10), lambda: step_time(fused, device, 10), rounds)


def training_steps(
    name: str, device: torch.device, rounds: int, size: int = 64, batch: int = 16
) -> tuple[float, float, float]:
    """Median seconds of a whole training step (loop, fused) of a recipe's segmenter, and the median ratio."""
    task = SegmentationTask(None, [str(d) for d in range(10)], mean=[0.1307], std=[0.3081], loss="ce+dice")
    torch.manual_seed(0)
    base = segmenter(name)
    pair = [copy.deepcopy(base).to(device, memory_format=torch.channels_last) for _ in range(2)]
    optimizers = [
        build_optimizer(pair[0], "adamw", 1e-3, 1e-4, fused=False),
        build_optimizer(pair[1], "adamw", 1e-3, 1e-4),
    ]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=generator).to(device, memory_format=torch.channels_last)
    y = torch.randint(0, 11, (batch, size, size), generator=generator).to(device)

    def one(net: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        sync(device)
        tick = time.perf_counter()
        loss = task.criterion(net(x), y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        return time.perf_counter() - tick

    for net, optimizer in zip(pair, optimizers):
        net.train()
        for _ in range(2):
            one(net, optimizer)

    def median_of_three(i: int) -> float:
        return statistics.median(one(pair[i], optimizers[i]) for _ in range(3))

    return alternate(lambda: median_of_three(0), lambda: median_of_three(1), rounds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, rounds {args.rounds}"
    )
    print("1. optimizer.step() alone (median ms; ratio loop / fused, median of rounds)")
    models = {
        "lenet5": cnnkit.create_model("lenet5"),
        "resnet18": cnnkit.create_model("resnet18"),
        "mobilenet_v3_large": cnnkit.create_model("mobilenet_v3_large"),
        "unetplusplus (recipe's)": segmenter("unetplusplus"),
    }
    for label, model in models.items():
        tensors = sum(1 for p in model.parameters() if p.requires_grad)
        for name in ("sgd", "adamw"):
            loop, fused, ratio = optimizer_only(model, name, device, args.rounds)
            print(
                f"  {label:24s} {tensors:4d} tensors  {name:5s}  loop {loop * 1e3:7.2f}  fused {fused * 1e3:7.2f}  {ratio:5.2f}x"
            )
    print("2. whole training step, AdamW, 16 x 1x64x64, channels_last (median ms; ratio loop / fused)")
    for name in SEGMENTERS:
        loop, fused, ratio = training_steps(name, device, args.rounds)
        print(f"  {name:24s} loop {loop * 1e3:7.1f}  fused {fused * 1e3:7.1f}  {ratio:5.3f}x")


if __name__ == "__main__":
    main()
