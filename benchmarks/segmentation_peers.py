"""cnnkit's U-Net and U-Net++ against segmentation_models_pytorch's, trained alike for the same wall time.

Run (segmentation_models_pytorch, MIT, is installed only for this script; cnnkit never imports it):

    pip install segmentation-models-pytorch
    python benchmarks/segmentation_peers.py [--minutes M | --steps N] [--models unet unetplusplus]
        [--seeds K] [--head-kernel 3] [--init he] [--same-init] [--full-resolution nested]
        [--decoder-channels 16 32 64 128 256 512] [--figure PATH]

Everything but the implementation is shared, in one process:

- encoder: ResNet-18 for all four models, with the same initial weights: one torchvision ``resnet18``
  state_dict (seeded, its first conv summed over RGB for the 1-channel images) loaded into cnnkit's backbone
  and into smp's encoder, which both take torchvision's ResNet keys;
- decoder widths: smp's defaults (256, 128, 64, 32, 16 from the deepest block to the full-resolution one),
  given to cnnkit as ``decoder_channels=(16, 32, 64, 128, 256, 512)`` (finest row first), so the models
  have the same widths (``--decoder-channels`` changes cnnkit's), and the same upsampling
  (``--upsample``: nearest, smp's default, or bilinear); smp's decoders have no full-resolution skip, so
  cnnkit's models run without their input skip (``--input-skip`` puts it back: the input image concatenated
  in the full-resolution block, cnnkit's default);
- U-Net++ layout: smp nests over the encoder's stages (strides 2 to 32) and ends in one full-resolution
  block; cnnkit's ``full_resolution="block"`` is that layout and the benchmark's default
  (``--full-resolution nested``: cnnkit's default, a nested full-resolution row of five nodes). smp's dense
  nodes of a row take the encoder's width of that row and only the row's last node the decoder's, while
  cnnkit's nodes of a row share one width, so at the same ``decoder_channels`` smp's stride-2 row is wider
  (64 channels against 32): MACs are printed, and ``--decoder-channels 16 64 64 128 256 512`` gives cnnkit's
  stride-2 row smp's dense width;
- data: the generated MNIST-Seg at 128x128 (train 4,000, seed 0; held-out val 500, seed 1, as
  ``benchmarks/train_tasks.py``), no augmentation, the same batch order (seeded);
- loss: cnnkit's cross-entropy + Dice on the logits; optimiser AdamW (lr 1e-3, weight decay 1e-4, constant);
  batch 16, NHWC (the grey batches given true NHWC strides, as cnnkit's trainer does), float32, the torch
  threads of the machine;
- budget: each model trains for ``--minutes`` of its own step time; the two models of an architecture train
  in turn, one step each, so that both see the same stretch of the machine (whose speed drifts over hours);
  then each is scored on the whole held-out set with cnnkit's confusion-matrix mIoU (background included);
- seeds: ``--seeds K`` trains each library's model K times, with seeds 0 .. K-1, all 2K in turn. A seed sets
  the encoder's initial weights (shared by the two libraries at that seed), the decoder's initialisation
  and the batch order. At these budgets one seed is not enough to compare mIoU: the decoder's seed alone
  moved our U-Net's mIoU after 5 minutes from 0.101 to 0.173 (docs/benchmarks.md);
- cnnkit's defaults, or smp's: the U-Net paper ends in a 1x1 classifier and cnnkit keeps PyTorch's default
  initialisation; smp's head is 3x3 and its decoder Kaiming-initialised. ``--head-kernel 3`` and ``--init
  he`` give cnnkit's models smp's head and the same initial variance. ``--same-init`` (U-Net only; implies
  ``--head-kernel 3``) goes further: cnnkit's decoder and head start from smp's own initial weights, copied
  layer by layer, after checking that the two models then compute the same logits. The two are then one
  function from one starting point, and what is left to compare is the implementation: step time, and the
  mIoU that floating-point order alone can move. ``--steps N`` trains each model N steps instead of a wall
  time, so that both see the same batches.

It prints, per model, the steps taken, the median training step time, parameters, MACs at 128x128 and the
held-out mIoU, the ratios ours / smp, and writes a figure of held-out predictions from all models.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time
from collections.abc import Iterator

import torch
import torchvision
from torch import nn

import cnnkit
from cnnkit.data import MNISTSegmentation
from cnnkit.data.sources import GENERATED_SEEDS, MNIST_MEAN, MNIST_STD
from cnnkit.engine.trainer import to_channels_last
from cnnkit.tasks import plots
from cnnkit.tasks.segmentation import confusion_matrix, miou
from cnnkit.tasks.segmentation.losses import cross_entropy, dice_loss

NUM_CLASSES = len(MNISTSegmentation.classes) + 1
SMP_DECODER = (256, 128, 64, 32, 16)
"""smp's default decoder widths, deepest block first."""
OURS_DECODER = (16, 32, 64, 128, 256, 512)
"""The same widths in cnnkit's order: the full-resolution row, then ResNet-18's five stages (the deepest
stage has no decoder block of its own, so its entry is not used)."""


def encoder_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """One randomly initialised torchvision ResNet-18 (``seed``) as a 1-channel encoder state_dict."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    state["conv1.weight"] = state["conv1.weight"].sum(1, keepdim=True)
    return state


def build(
    name: str,
    weights: dict[str, torch.Tensor],
    upsample: str = "nearest",
    input_skip: bool = False,
    head_kernel: int = 1,
    init: str = "pytorch",
    full_resolution: str = "block",
    decoder_channels: tuple[int, ...] = OURS_DECODER,
) -> nn.Module:
    """``cnnkit:unet``, ``cnnkit:unetplusplus``, ``smp:unet`` or ``smp:unetplusplus`` with the shared encoder
    and the decoder's upsampling mode (``"nearest"``, smp's default, or ``"bilinear"``); ``input_skip`` is
    cnnkit's full-resolution skip of the input image (smp has none), ``head_kernel``, ``init``,
    ``full_resolution`` (U-Net++ only) and ``decoder_channels`` cnnkit's options of those names."""
    library, model = name.split(":")
    if library == "cnnkit":
        layout = {"full_resolution": full_resolution} if model == "unetplusplus" else {}
        net = cnnkit.create_model(
            model,
            backbone="resnet18",
            in_chans=1,
            num_classes=NUM_CLASSES,
            decoder_channels=decoder_channels,
            upsample=upsample,
            input_skip=input_skip,
            head_kernel=head_kernel,
            init=init,
            **layout,
        )
        net.backbone.load_state_dict(weights)
    else:
        import segmentation_models_pytorch as smp

        kind = {"unet": smp.Unet, "unetplusplus": smp.UnetPlusPlus}[model]
        net = kind(
            "resnet18",
            encoder_weights=None,
            in_channels=1,
            classes=NUM_CLASSES,
            decoder_channels=SMP_DECODER,
            decoder_interpolation=upsample,
        )
        net.encoder.load_state_dict(weights)
    return net.to(memory_format=torch.channels_last)


def copy_initial_weights(ours: nn.Module, theirs: nn.Module) -> float:
    """Load smp's U-Net decoder and head into cnnkit's (layer by layer: the two list the same layers in the
    same order) and return the largest difference of their logits on a random batch, in eval and in train
    mode (a different function would show here, not after training).

    Raises:
        SystemExit: the two decoders' layers do not pair up (another architecture or head kernel).
    """
    source = [*theirs.decoder.state_dict().values(), *theirs.segmentation_head[0].state_dict().values()]
    target = {
        f"{part}.{k}": v
        for part in ("decoder", "head")
        for k, v in ours.get_submodule(part).state_dict().items()
    }
    if [v.shape for v in source] != [v.shape for v in target.values()]:
        raise SystemExit(
            "--same-init: the decoders do not pair up layer by layer (it needs the U-Net, head 3x3)"
        )
    state = ours.state_dict()
    state.update({key: value.clone() for key, value in zip(target, source)})
    ours.load_state_dict(state)
    saved = [{k: v.clone() for k, v in model.state_dict().items()} for model in (ours, theirs)]
    generator = torch.Generator().manual_seed(0)
    x = to_channels_last(torch.randn(4, 1, 128, 128, generator=generator))
    gap = 0.0
    with torch.no_grad():
        for mode in (False, True):
            ours.train(mode), theirs.train(mode)
            gap = max(gap, (ours(x) - theirs(x)).abs().max().item())
    for model, state in zip((ours, theirs), saved):  # undo the BatchNorm statistics train mode updated
        model.load_state_dict(state)
    return gap


def load_split(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A generated MNIST-Seg split as normalised images ``(N, 1, 128, 128)`` and masks ``(N, 128, 128)``."""
    data = MNISTSegmentation(split, size=size, image_size=128, seed=GENERATED_SEEDS[split])
    items = [data[i] for i in range(len(data))]
    images = torch.stack([image for image, _ in items]).float() / 255
    images = (images - MNIST_MEAN[0]) / MNIST_STD[0]
    return images, torch.stack([target["mask"] for _, target in items])


def training_steps(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int, seed: int = 0
) -> Iterator[float]:
    """Train ``model`` one step per ``next()``, yielding each step's time (AdamW; the batch order of
    ``seed``; incomplete last batches skipped)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    while True:
        order = torch.randperm(len(images), generator=generator)
        for batch in order.split(batch_size):
            if len(batch) < batch_size:
                continue
            tick = time.perf_counter()
            x = to_channels_last(images[batch])
            logits = model(x)
            loss = cross_entropy(logits, masks[batch]) + dice_loss(logits, masks[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            yield time.perf_counter() - tick


def train_in_turn(
    models: list[nn.Module],
    images: torch.Tensor,
    masks: torch.Tensor,
    seconds: float,
    batch_size: int,
    seeds: list[int] | None = None,
    steps: int | None = None,
) -> list[list[float]]:
    """Train the models one step each in turn until each has spent ``seconds`` in its own steps (or, given
    ``steps``, made that many); the time of every step, per model.

    Alternating puts both models on the same stretch of the machine: its speed drifts by up to 1.4x over
    hours here, which made two models trained one after the other differ by a few percent for that
    reason alone. ``seeds`` gives each model's batch order (default 0 for all)."""
    seeds = seeds or [0] * len(models)
    runners = [training_steps(model, images, masks, batch_size, seed) for model, seed in zip(models, seeds)]
    times: list[list[float]] = [[] for _ in models]

    def more(spent: list[float]) -> bool:
        return len(spent) < steps if steps is not None else sum(spent) < seconds

    while any(more(spent) for spent in times):
        for runner, spent in zip(runners, times):
            if more(spent):
                spent.append(next(runner))
    return times


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
    """Class maps ``(N, H, W)`` of a model in eval mode."""
    model.eval()
    out = [model(to_channels_last(x)).argmax(1) for x in images.split(batch_size)]
    return torch.cat(out)


def measure(
    names: list[str],
    data: dict,
    minutes: float,
    batch_size: int,
    seeds: list[int],
    upsample: str = "nearest",
    input_skip: bool = False,
    head_kernel: int = 1,
    init: str = "pytorch",
    same_init: bool = False,
    steps: int | None = None,
    full_resolution: str = "block",
    decoder_channels: tuple[int, ...] = OURS_DECODER,
) -> list[dict]:
    """Train the models named, once per seed (all in turn, :func:`train_in_turn`), and score each; their
    figures and held-out predictions, seed by seed. ``same_init``: each seed's cnnkit model starts from
    the smp model's weights (:func:`copy_initial_weights`)."""
    runs = [(name, seed) for seed in seeds for name in names]
    models = []
    for name, seed in runs:
        weights = encoder_weights(seed)  # also seeds the decoder's initialisation that follows
        models.append(
            build(name, weights, upsample, input_skip, head_kernel, init, full_resolution, decoder_channels)
        )
    if same_init:
        for (name, seed), model, smp_model in zip(runs[::2], models[::2], models[1::2]):
            gap = copy_initial_weights(model, smp_model)
            print(f"seed {seed}: {name} starts from smp's weights; max |logits difference| {gap:.2e}")
            if gap > 1e-4:
                raise SystemExit(f"--same-init: the two models compute different functions (gap {gap:.2e})")
    # analyze first: training sets train mode
    macs = [cnnkit.analyze(model.eval(), input_size=(1, 128, 128)).macs for model in models]
    times = train_in_turn(models, *data["train"], minutes * 60, batch_size, [seed for _, seed in runs], steps)
    if same_init:
        for (_, seed), model, smp_model in zip(runs[::2], models[::2], models[1::2]):
            drift = max(
                (a - b).abs().max().item()
                for a, b in zip(model.backbone.parameters(), smp_model.encoder.parameters())
            )
            print(f"seed {seed}: after training, max |encoder weight difference| {drift:.2e}")
    results = []
    for (name, seed), model, model_macs, step_times in zip(runs, models, macs, times):
        predicted = predict(model, data["val"][0])
        matrix = confusion_matrix(predicted, data["val"][1], NUM_CLASSES)
        results.append(
            {
                "name": name,
                "seed": seed,
                "params": sum(p.numel() for p in model.parameters()),
                "macs": model_macs,
                "steps": len(step_times),
                "step_s": statistics.median(step_times[3:] or step_times),
                "miou": miou(matrix),
                "predicted": predicted[:4],
            }
        )
    return results


def report(results: list[dict], budget: str) -> None:
    """The table of every model, then ours / smp per architecture."""
    print(f"\n{budget} of training each, batch 16, 128x128, {torch.get_num_threads()} threads")
    print("| model | seed | params | MACs | steps | step (median) | held-out mIoU |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['name']} | {r['seed']} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e9:.2f} G | "
            f"{r['steps']} | {r['step_s'] * 1000:.0f} ms | {r['miou']:.3f} |"
        )
    for arch in sorted({r["name"].split(":")[1] for r in results}):
        ours = [r for r in results if r["name"] == f"cnnkit:{arch}"]
        theirs = [r for r in results if r["name"] == f"smp:{arch}"]
        if ours and theirs:
            step = statistics.median(r["step_s"] for r in ours) / statistics.median(
                r["step_s"] for r in theirs
            )
            print(
                f"{arch}: step time ours / smp {step:.2f}x (medians over seeds), "
                f"mIoU ours {spread([r['miou'] for r in ours])}, smp {spread([r['miou'] for r in theirs])}"
            )


def spread(values: list[float]) -> str:
    """``mean +- sample standard deviation (min-max, n)`` of a few figures; one figure as it is."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (
        f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f} "
        f"({min(values):.3f}-{max(values):.3f}, n={len(values)})"
    )


def figure(results: list[dict], data: dict, path: pathlib.Path) -> None:
    """Four held-out images: the true mask, then each model's prediction (the first seed's), overlaid."""
    results = [r for r in results if r["seed"] == results[0]["seed"]]
    images = data["val_raw"][:4]
    panels: list[torch.Tensor] = []
    for i, image in enumerate(images):
        panels.append(plots.overlay_mask(image, data["val"][1][i], NUM_CLASSES))
        panels += [plots.overlay_mask(image, r["predicted"][i], NUM_CLASSES) for r in results]
    names = ", ".join(r["name"] for r in results)
    plots.save_grid(panels, path, f"held-out MNIST-Seg: truth, then {names}", cols=len(results) + 1)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall time per model")
    parser.add_argument("--steps", type=int, help="train each model this many steps instead of --minutes")
    parser.add_argument("--models", nargs="+", default=["unet", "unetplusplus"])
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--seeds", type=int, default=1, help="runs of each model, seeds 0 .. K-1, all trained in turn"
    )
    parser.add_argument(
        "--upsample",
        choices=["nearest", "bilinear"],
        default="nearest",
        help="the decoders' upsampling, the same in all models (smp's default: nearest)",
    )
    parser.add_argument(
        "--input-skip", action="store_true", help="cnnkit's models keep their full-resolution input skip"
    )
    parser.add_argument(
        "--head-kernel", type=int, default=1, help="cnnkit's final classifier: 1 (its default) or 3 (smp's)"
    )
    parser.add_argument(
        "--init", choices=["pytorch", "he"], default="pytorch", help="cnnkit's decoder initialisation"
    )
    parser.add_argument(
        "--same-init",
        action="store_true",
        help="U-Net only: cnnkit's decoder and head start from smp's initial weights (head 3x3)",
    )
    parser.add_argument(
        "--full-resolution",
        choices=["block", "nested"],
        default="block",
        help="cnnkit's U-Net++ layout: one full-resolution block after the grid (smp's) or a nested row",
    )
    parser.add_argument(
        "--decoder-channels",
        type=int,
        nargs=6,
        default=OURS_DECODER,
        help="cnnkit's decoder widths, the full-resolution row first (default: smp's widths)",
    )
    parser.add_argument("--figure", type=pathlib.Path, default=pathlib.Path("segmentation_peers.png"))
    args = parser.parse_args()
    if args.same_init:
        if set(args.models) != {"unet"}:
            parser.error("--same-init pairs the U-Nets' layers only: use it with --models unet")
        args.head_kernel = 3
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        raise SystemExit(
            "this benchmark needs segmentation_models_pytorch: pip install segmentation-models-pytorch"
        ) from None
    data = {"train": load_split("train", args.train_size), "val": load_split("val", args.val_size)}
    raw = MNISTSegmentation("val", size=4, image_size=128, seed=GENERATED_SEEDS["val"])
    data["val_raw"] = [raw[i][0] for i in range(4)]
    results = []
    seeds = list(range(args.seeds))
    for arch in args.models:
        names = [f"{library}:{arch}" for library in ("cnnkit", "smp")]
        runs = measure(
            names,
            data,
            args.minutes,
            args.batch_size,
            seeds,
            args.upsample,
            args.input_skip,
            args.head_kernel,
            args.init,
            args.same_init,
            args.steps,
            args.full_resolution,
            tuple(args.decoder_channels),
        )
        for result in runs:
            print(
                f"{result['name']} seed {result['seed']}: {result['steps']} steps, "
                f"{result['step_s'] * 1000:.0f} ms/step, mIoU {result['miou']:.3f}",
                flush=True,
            )
        results += runs
    report(results, f"{args.steps} steps" if args.steps else f"{args.minutes:g} min")
    print(
        f"upsampling {args.upsample}; cnnkit's input skip {'on' if args.input_skip else 'off, as smp'}; "
        f"cnnkit's head {args.head_kernel}x{args.head_kernel}, init {args.init}, "
        f"decoder {tuple(args.decoder_channels)}, U-Net++ full-resolution row {args.full_resolution}"
        + ("; cnnkit's decoder and head from smp's initial weights" if args.same_init else "")
    )
    figure(results, data, args.figure)


if __name__ == "__main__":
    main()
