"""The same parameters give the same result on a GPU as on the CPU (run where CUDA is available)."""

import pytest
import torch

from cnnkit import augment

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize(
    "transform",
    [
        augment.RandomResizedCrop(24, antialias=False),
        augment.HorizontalFlip(),
        augment.RandomRotation(30, interpolation="bilinear"),
        augment.ColorJitter(0.4, 0.4, 0.4, 0.1),
        augment.RandomErasing(p=1.0),
        augment.RandAugment(),
        augment.AutoAugment(),
        augment.CutMix(num_classes=4),
    ],
    ids=lambda t: type(t).__name__,
)
def test_cuda_matches_cpu(transform, generator):
    images = torch.randint(0, 256, (6, 3, 32, 40), dtype=torch.uint8, generator=generator)
    targets = [
        {"boxes": torch.tensor([[3.0, 4.0, 20.0, 25.0]]), "labels": torch.tensor([i % 4])} for i in range(6)
    ]
    params = transform.sample(images, generator)
    cpu, cpu_targets = transform.apply(images, targets, params)
    gpu_targets = [{k: v.cuda() for k, v in t.items()} for t in targets]
    gpu, gpu_targets = transform.apply(images.cuda(), gpu_targets, params)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    assert (gpu.cpu().int() - cpu.int()).abs().float().mean() < 0.05
    for a, b in zip(cpu_targets, gpu_targets):
        torch.testing.assert_close(b["boxes"].cpu(), a["boxes"], atol=1e-3, rtol=0)
