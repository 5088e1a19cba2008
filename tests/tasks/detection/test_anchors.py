import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from cnnkit.errors import ConfigError
from cnnkit.tasks.detection.anchors import AnchorGenerator
from cnnkit.tasks.detection.boxes import box_convert


def test_cell_anchor_shapes_and_ratios():
    cells = AnchorGenerator.cell_anchors((64.0,), (0.5, 1.0, 2.0))
    cxcywh = box_convert(cells, "xyxy", "cxcywh")
    assert cxcywh[:, :2].abs().max() == 0  # centred at the origin
    # a = h / w: 0.5 -> wide, 2 -> tall; half-extents rounded: 64 / sqrt(0.5) / 2 = 45.25 -> 45
    assert cxcywh[:, 2:].tolist() == [[90.0, 46.0], [64.0, 64.0], [46.0, 90.0]]
    areas = cxcywh[:, 2] * cxcywh[:, 3]
    assert torch.allclose(areas, torch.full((3,), 64.0**2), rtol=0.02)


def test_layout_level_y_x_type():
    gen = AnchorGenerator(sizes=((16,), (32, 64)), aspect_ratios=((1.0, 2.0), (1.0,)))
    assert gen.num_anchors_per_location() == [2, 2]
    level0, level1 = gen([(2, 3), (1, 2)], strides=[8, (16, 16)])
    assert level0.shape == (2 * 3 * 2, 4) and level1.shape == (1 * 2 * 2, 4)
    centres = box_convert(level0, "xyxy", "cxcywh")[:, :2].reshape(2, 3, 2, 2)  # y, x, type, (cx, cy)
    for y in range(2):
        for x in range(3):
            assert centres[y, x].tolist() == [[x * 8.0, y * 8.0]] * 2
    sizes = box_convert(level1, "xyxy", "cxcywh")[:, 2:]
    assert sizes.tolist() == [[32.0, 32.0], [64.0, 64.0]] * 2  # sizes vary fastest within a location


def test_offset_centres_cells_and_rectangular_stride():
    gen = AnchorGenerator(sizes=((10,),), aspect_ratios=((1.0,),), offset=0.5)
    (anchors,) = gen([(2, 2)], strides=[(4, 8)])
    centres = box_convert(anchors, "xyxy", "cxcywh")[:, :2]
    assert centres.tolist() == [[4.0, 2.0], [12.0, 2.0], [4.0, 6.0], [12.0, 6.0]]


def test_equals_torchvision():
    sizes = ((32,), (64,), (128,))
    ratios = ((0.5, 1.0, 2.0),) * 3
    ours = AnchorGenerator(sizes, ratios)
    theirs = TorchvisionAnchorGenerator(sizes, ratios)
    image = torch.zeros(1, 3, 64, 96)
    maps = [torch.zeros(1, 8, 64 // s, 96 // s) for s in (8, 16, 32)]
    expected = theirs(ImageList(image, [(64, 96)]), maps)[0]
    got = ours([tuple(m.shape[-2:]) for m in maps], strides=[8, 16, 32])
    torch.testing.assert_close(torch.cat(got), expected)


def test_level_count_must_agree():
    with pytest.raises(ConfigError, match="levels"):
        AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),) * 2)
    with pytest.raises(ConfigError, match="levels"):
        AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),))([(2, 2), (1, 1)], strides=[8, 16])


def test_anchors_in_requested_dtype():
    gen = AnchorGenerator(sizes=((32,),), aspect_ratios=((1.0,),)).to(torch.float64)
    (anchors,) = gen([(1, 1)], strides=[32], dtype=torch.float64)
    assert anchors.dtype == torch.float64
    assert math.isclose(float(anchors[0, 2] - anchors[0, 0]), 32.0)
