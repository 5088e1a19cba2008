"""RandomErasing and Cutout: the sampled rectangle, and nothing else, is filled."""

import torch
import torchvision.transforms.v2.functional as TF

from cnnkit.augment import Cutout, RandomErasing


def test_random_erasing_matches_torchvision_erase(generator):
    x = torch.randint(1, 256, (8, 3, 30, 40), dtype=torch.uint8, generator=generator)
    t = RandomErasing(p=0.7, value=(0, 128, 255))
    params = t.sample(x, generator)
    y, _ = t.apply(x, None, params)
    fill = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1)
    erased = 0
    for i in range(8):
        x1, y1, x2, y2 = params["rects"][i].tolist()
        ref = TF.erase(x[i], y1, x1, y2 - y1, x2 - x1, fill.expand(3, y2 - y1, x2 - x1))
        assert torch.equal(y[i], ref)
        if x2 > x1:
            erased += 1
            area = (x2 - x1) * (y2 - y1) / (30 * 40)
            assert 0.02 - 0.01 <= area <= 0.33 + 0.01
    assert 0 < erased < 8


def test_random_erasing_random_value_is_replayable(generator):
    x = torch.zeros(4, 3, 20, 20)
    t = RandomErasing(p=1.0, value="random")
    params = t.sample(x, generator)
    a, _ = t.apply(x, None, params)
    b, _ = t.apply(x, None, params)
    assert torch.equal(a, b) and a.std() > 0


def test_cutout_square_may_hang_over_the_border():
    x = torch.full((2, 1, 10, 10), 9, dtype=torch.uint8)
    t = Cutout(4)
    params = {"rects": torch.tensor([[0, 0, 2, 2], [3, 3, 7, 7]]), "seeds": None}
    y, _ = t.apply(x, None, params)
    assert int((y[0] == 0).sum()) == 4 and int((y[1] == 0).sum()) == 16
    drawn = t.sample(torch.zeros(64, 1, 10, 10), torch.Generator().manual_seed(0))["rects"]
    sides = drawn[:, 2:] - drawn[:, :2]
    assert (sides <= 4).all() and (sides == 4).any() and (sides < 4).any()


def test_erasing_keeps_targets():
    x = torch.rand(1, 3, 8, 8)
    target = [{"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([2])}]
    _, out = RandomErasing(p=1.0)(x, target)
    assert out is target
