"""RandomAffine against torchvision's affine, and box/mask consistency."""

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cnnkit.augment.affine import RandomAffine
from cnnkit.errors import ConfigError


def test_matches_torchvision_affine_per_sample():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(4, 3, 40, 50, generator=g) * 255).round().to(torch.uint8)
    t = RandomAffine(degrees=25, translate=(0.1, 0.2), scale=(0.8, 1.2), interpolation="bilinear")
    params = t.sample(images, g)
    params["translate"] = params["translate"].round()  # torchvision takes integer shifts
    out, _ = t.apply(images, None, params)
    assert out.dtype == torch.uint8
    for i in range(4):
        ref = TF.affine(
            images[i],
            angle=float(params["angle"][i]),
            translate=[int(params["translate"][i, 0]), int(params["translate"][i, 1])],
            scale=float(params["scale"][i]),
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
        )
        diff = (out[i].int() - ref.int()).abs()[:, 3:-3, 3:-3]
        assert diff.max() <= 1


def test_per_sample_parameters_and_replay():
    images = torch.zeros(8, 1, 16, 16)
    t = RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.9, 1.1))
    p1 = t.sample(images, torch.Generator().manual_seed(1))
    p2 = t.sample(images, torch.Generator().manual_seed(1))
    assert len(set(p1["angle"].tolist())) == 8
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_boxes_follow_masks():
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 20:36, 10:30] = 1
    target = {"labels": torch.tensor([3]), "boxes": torch.tensor([[10.0, 20.0, 30.0, 36.0]]), "masks": mask}
    images = mask[None].float()
    t = RandomAffine(degrees=0, translate=(0.2, 0.2), scale=(0.7, 1.3))
    out, targets = t(images, [target], torch.Generator().manual_seed(3))
    ys, xs = targets[0]["masks"][0].nonzero(as_tuple=True)
    mask_box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    assert (targets[0]["boxes"][0] - mask_box).abs().max() <= 1.0


def test_bad_arguments():
    with pytest.raises(ConfigError, match="translate"):
        RandomAffine(10, translate=(0.5, 2.0))
    with pytest.raises(ConfigError, match="scale"):
        RandomAffine(10, scale=(1.2, 0.8))
