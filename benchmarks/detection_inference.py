"""Detector inference speed: cnnkit's YOLO-style and Faster R-CNN detectors against torchvision's
`fasterrcnn_mobilenet_v3_large_fpn`, in one run, at the same input size, random weights, CPU.

Each path runs a batch end to end, post-processing included: torchvision's model as users call it (its
transform set to the input size, `min_size = max_size = size`, so it does not resize); cnnkit's models on
normalized images, then `postprocess`. The cnnkit models use the settings of `benchmarks/train_tasks.py`
(MobileNetV3-Large backbone, as torchvision's), and once more with torchvision's own settings
(`cnnkit_frcnn_tv`: the same work, so that ratio compares the implementations). Prints images/s and the
ratio over torchvision.

    python benchmarks/detection_inference.py [--size 128] [--batch 1 8] [--rounds 10] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable

import torch
import torchvision

from cnnkit.export import best_call_times
from cnnkit.tasks.detection.faster_rcnn import FasterRCNN
from cnnkit.tasks.detection.yolo import YOLODetector

TWO_STAGE = dict(
    out_indices=(-3, -2, -1),
    fpn_channels=64,
    anchor_sizes=((16,), (32,), (64,), (128,)),
    rpn_pre_nms_top_n=(600, 300),
    rpn_post_nms_top_n=(300, 100),
    representation_size=256,
    box_batch_size_per_image=128,
    sampling_ratio=1,
)

TORCHVISION_MOBILENET = dict(
    out_indices=(-2, -1),
    fpn_channels=256,
    anchor_sizes=((32, 64, 128, 256, 512),) * 3,
    rpn_pre_nms_top_n=(2000, 150),
    rpn_post_nms_top_n=(2000, 150),
    rpn_score_threshold=0.05,
    representation_size=1024,
)
"""torchvision's fasterrcnn_mobilenet_v3_large_fpn settings (its last two stages + a pooled level, FPN 256,
five anchor sizes per level, 150 proposals at test time, 1024-wide box head): the same work as the baseline."""


def paths(num_classes: int, size: int) -> dict[str, Callable[[torch.Tensor], object]]:
    """The detectors, each a callable from a float image batch in [0, 1] to detections."""
    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1, min_size=size, max_size=size
    ).eval()
    yolo = YOLODetector("mobilenet_v3_large", num_classes, fpn_channels=64, aspect_ratios=(1.0,)).eval()
    frcnn = FasterRCNN("mobilenet_v3_large", num_classes, **TWO_STAGE).eval()
    frcnn_tv = FasterRCNN("mobilenet_v3_large", num_classes, **TORCHVISION_MOBILENET).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def ours(model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
        return lambda x: model.postprocess(model((x - mean) / std), image_size=(size, size))

    return {
        "torchvision": lambda x: reference(list(x)),
        "cnnkit_frcnn_tv": ours(frcnn_tv),
        "cnnkit_frcnn": ours(frcnn),
        "cnnkit_yolo": ours(yolo),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = paths(args.classes, args.size)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; input 3x{args.size}x{args.size}, "
        f"random weights, best of {args.rounds} interleaved rounds, post-processing included"
    )
    print(f"{'batch':>5s} " + " ".join(f"{k + ' img/s':>18s}" for k in runs) + "   ratios over torchvision")
    for batch in args.batch:
        x = torch.rand(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        best = best_call_times({k: functools.partial(run, x) for k, run in runs.items()}, args.rounds)
        rates = {k: batch / t for k, t in best.items()}
        ratios = ", ".join(f"{k} {rates[k] / rates['torchvision']:.2f}x" for k in runs if k != "torchvision")
        print(f"{batch:5d} " + " ".join(f"{rates[k]:18.1f}" for k in runs) + f"   {ratios}")


if __name__ == "__main__":
    main()
