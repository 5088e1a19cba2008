from collections import OrderedDict

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TorchvisionP6P7

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.layers import FPN


def _maps(channels, sizes, generator):
    return [torch.randn(2, c, s, s, generator=generator) for c, s in zip(channels, sizes)]


def test_shapes_over_resnet18_features():
    backbone = cnnkit.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    fpn = FPN(backbone.feature_info.channels(), 32, extra_blocks="pool")
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 64, 64))
        pyramid = fpn(features)
    assert fpn.num_levels == 5
    assert [tuple(p.shape) for p in pyramid] == [(1, 32, s, s) for s in (16, 8, 4, 2, 1)]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({}, None),
        ({"extra_blocks": "pool"}, LastLevelMaxPool()),
        ({"extra_blocks": "p6p7"}, TorchvisionP6P7(16, 16)),
        ({"extra_blocks": "p6p7", "p6p7_in_channels": 24}, TorchvisionP6P7(24, 16)),
    ],
)
def test_equals_torchvision_with_its_state_dict(ours, theirs, generator):
    channels = [4, 8, 24]
    reference = FeaturePyramidNetwork(channels, 16, extra_blocks=theirs).eval()
    fpn = FPN(channels, 16, **ours).eval()
    fpn.load_state_dict(reference.state_dict())  # strict: same names, same shapes
    features = _maps(channels, (15, 8, 4), generator)  # odd size: nearest upsampling to 15 from 8
    expected = list(reference(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
    got = fpn(features)
    assert len(got) == len(expected) == fpn.num_levels
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_equals_torchvision_with_norm(generator):
    channels = [4, 8]
    reference = FeaturePyramidNetwork(channels, 8, norm_layer=torch.nn.BatchNorm2d).eval()
    fpn = FPN(channels, 8, norm_layer=torch.nn.BatchNorm2d).eval()
    state = reference.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var", "1.weight")):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    fpn.load_state_dict(state)
    features = _maps(channels, (8, 4), generator)
    expected = list(reference(OrderedDict((str(i), f) for i, f in enumerate(features))).values())
    for a, b in zip(fpn(features), expected):
        torch.testing.assert_close(a, b)


def test_top_down_by_hand():
    fpn = FPN([1, 1], 1)
    with torch.no_grad():
        for block in (*fpn.inner_blocks, *fpn.layer_blocks):
            block[0].weight.zero_()
            block[0].bias.zero_()
        for inner in fpn.inner_blocks:
            inner[0].weight.fill_(1.0)  # identity lateral
        for layer in fpn.layer_blocks:
            layer[0].weight[0, 0, 1, 1] = 1.0  # identity 3x3
    fine = torch.zeros(1, 1, 4, 4)
    coarse = torch.arange(4.0).reshape(1, 1, 2, 2)
    p0, p1 = fpn([fine, coarse])
    torch.testing.assert_close(p1, coarse)
    # nearest upsampling repeats each coarse value over a 2x2 block
    expected = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(p0, expected)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="extra_blocks"):
        FPN([4], 8, extra_blocks="p6")
    with pytest.raises(ConfigError, match="in_channels_list"):
        FPN([], 8)
    with pytest.raises(ConfigError, match="got 1"):
        FPN([4, 8], 8)([torch.zeros(1, 4, 2, 2)])


def test_pan_bottom_up_path_shapes_and_wiring():
    from cnnkit.layers import PAN

    torch.manual_seed(0)
    pan = PAN([8, 16, 32], 12).eval()
    # odd sizes, and a coarsest map rounded down (13 -> 7 by the stride-2 conv, but 6 given): resized
    features = [torch.randn(2, 8, 25, 27), torch.randn(2, 16, 13, 14), torch.randn(2, 32, 6, 7)]
    with torch.no_grad():
        outputs = pan(features)
        fpn_maps = pan.fpn(features)
    assert [tuple(o.shape) for o in outputs] == [(2, 12, 25, 27), (2, 12, 13, 14), (2, 12, 6, 7)]
    torch.testing.assert_close(outputs[0], fpn_maps[0])  # N_0 = P_0
    with torch.no_grad():
        expected = pan.fuse[0](pan.down[0](fpn_maps[0]) + fpn_maps[1])
    torch.testing.assert_close(outputs[1], expected)
    # the finest map reaches the coarsest level through the bottom-up path
    x = [f.clone().requires_grad_() for f in features]
    pan(x)[2].sum().backward()
    assert x[0].grad.abs().sum() > 0
