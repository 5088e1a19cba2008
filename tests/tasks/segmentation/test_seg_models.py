import math

import pytest
import torch
import torch.nn.functional as F

from cnnkit.errors import ConfigError
from cnnkit.tasks import create_model
from cnnkit.tasks.segmentation import FCN, BackboneUNet, DeepLabV3, UNet

SIZES = [(33, 47), (1, 1), (16, 16), (21, 8)]


@pytest.mark.parametrize("upsample", ["bilinear", "nearest", "transposed"])
def test_unet_logits_at_input_size(upsample):
    model = UNet(in_chans=2, num_classes=3, base_channels=4, depth=3, upsample=upsample).eval()
    for size in SIZES:
        assert model(torch.randn(2, 2, *size)).shape == (2, 3, *size)


def test_nearest_upsampling_repeats_each_coarse_value_over_its_cell():
    from cnnkit.tasks.segmentation.unet import UpBlock

    block = UpBlock(2, 0, 2, scale=2, upsample="nearest")
    seen = {}
    block.conv.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    block(x)
    torch.testing.assert_close(seen["x"], x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    with pytest.raises(ConfigError, match="'bilinear', 'nearest' or 'transposed', got 'cubic'"):
        UpBlock(2, 0, 2, upsample="cubic")


def test_unet_layout_follows_the_paper():
    model = UNet(in_chans=1, num_classes=2, base_channels=8, depth=4, upsample="transposed")
    # encoder widths double at every pooling; each decoder level sees upsampled + skip channels
    assert [d[1][1][0].out_channels for d in model.down] == [16, 32, 64, 128]
    assert [u.up.out_channels for u in model.up] == [64, 32, 16, 8]
    assert [u.conv[0][0].in_channels for u in model.up] == [128, 64, 32, 16]
    assert model.up[0].up.kernel_size == (2, 2) and model.up[0].up.stride == (2, 2)
    assert model.stride == 16 and model.head.out_channels == 2


def test_unet_odd_input_is_zero_padded_then_cropped():
    torch.manual_seed(0)
    model = UNet(in_chans=1, num_classes=2, base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 9, 6)
    padded = F.pad(x, (0, 2, 0, 3))  # to 12 x 8, multiples of 2**2
    torch.testing.assert_close(model(x), model(padded)[..., :9, :6])


def test_unet_skips_carry_fine_detail():
    # a pixel change reaches the output at that pixel through the full-resolution skip
    torch.manual_seed(0)
    model = UNet(in_chans=1, num_classes=1, base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 16, 16, requires_grad=True)
    model(x)[0, 0, 3, 3].backward()
    assert x.grad[0, 0, 3, 3] != 0


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_backbone_unet_sizes_and_decoder_widths(backbone):
    model = BackboneUNet(backbone, num_classes=3, in_chans=1).eval()
    channels = model.feature_info.channels()
    assert [block.conv[1].out_channels for block in model.decoder[:-1]] == channels[-2::-1]
    assert model.stride == 32
    for size in [(33, 47), (5, 3)]:
        assert model(torch.randn(1, 1, *size)).shape == (1, 3, *size)


@pytest.mark.parametrize("input_skip", [True, False])
def test_backbone_unet_input_skip_reaches_full_resolution(input_skip):
    """The last block sees the image itself (a full-resolution skip) unless input_skip=False."""
    torch.manual_seed(0)
    model = BackboneUNet("mobilenet_v3_small", num_classes=2, in_chans=1, input_skip=input_skip).eval()
    width = model.decoder[-1].conv[0][0].in_channels
    assert width == model.decoder[-2].conv[1].out_channels + (1 if input_skip else 0)
    seen = []
    model.decoder[-1].conv.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    x = torch.randn(1, 1, 31, 30)
    assert model(x).shape == (1, 2, 31, 30)
    if input_skip:  # the image, zero-padded to the stride, is the last channel the block convolves
        assert torch.equal(seen[0][:, -1, :31, :30], x[:, 0])


def test_backbone_unet_trains_every_parameter():
    model = BackboneUNet("resnet18", num_classes=2, in_chans=1, upsample="transposed")
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert "backbone.layer4.1.conv2.weight" in model.state_dict()


def test_backbone_unet_score_stages_add_upsampled_decoder_scores():
    """score_stages=(2, 1): 1x1 scores of the decoder maps that merged the stride-8 and stride-4 stages,
    upsampled bilinearly and added to the full-resolution logits (FCN's score fusion)."""
    torch.manual_seed(0)
    plain = BackboneUNet("mobilenet_v3_small", num_classes=3, in_chans=1).eval()
    fused = BackboneUNet("mobilenet_v3_small", num_classes=3, in_chans=1, score_stages=(2, 1)).eval()
    missing, unexpected = fused.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == [
        f"score_heads.{i}.{p}" for i in (1, 2) for p in ("bias", "weight")
    ]
    # block i of the decoder merges stage len(info) - 2 - i: stride 8 is block 1, stride 4 block 2
    assert [fused.score_heads[k].in_channels for k in ("1", "2")] == [
        fused.feature_info.channels()[i] for i in (2, 1)
    ]
    x = torch.randn(2, 1, 45, 51)
    maps = {}
    for i in (1, 2):
        fused.decoder[i].register_forward_hook(lambda module, args, out, i=i: maps.__setitem__(i, out))
    expected = plain(x)
    out = fused(x)
    padded_size = (64, 64)  # 45 x 51 padded to multiples of the stride, 32
    assert maps[1].shape[-2:] == (8, 8) and maps[2].shape[-2:] == (16, 16)
    for i in (1, 2):
        scores = fused.score_heads[str(i)](maps[i])
        expected = (
            expected
            + F.interpolate(scores, size=padded_size, mode="bilinear", align_corners=False)[..., :45, :51]
        )
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in fused.score_heads.values())


@pytest.mark.parametrize("stage", [4, -1, 5, -6])
def test_backbone_unet_score_stages_must_be_decoder_stages(stage):
    with pytest.raises(ConfigError, match="score_stages"):
        BackboneUNet("mobilenet_v3_small", num_classes=3, in_chans=1, score_stages=(stage,))


@pytest.mark.parametrize("skips", [0, 1, 2])
def test_fcn_logits_at_input_size(skips):
    model = FCN("resnet18", num_classes=4, in_chans=1, skips=skips).eval()
    assert len(model.skip_classifiers) == skips
    for size in [(33, 47), (7, 64)]:
        assert model(torch.randn(1, 1, *size)).shape == (1, 4, *size)


def test_fcn32s_is_bilinear_upsampling_of_1x1_scores():
    torch.manual_seed(0)
    model = FCN("resnet18", num_classes=3, in_chans=1).eval()
    assert isinstance(model.classifier[0], torch.nn.Conv2d) and model.classifier[0].kernel_size == (1, 1)
    x = torch.randn(1, 1, 40, 56)
    scores = model.classifier(model.backbone.forward_features(x))
    assert scores.shape[-2:] == (2, 2)
    expected = F.interpolate(scores, size=(40, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(x), expected)


def test_fcn_skips_start_at_zero_then_learn():
    torch.manual_seed(0)
    fcn8 = FCN("resnet18", num_classes=3, in_chans=1, skips=2).eval()
    assert [fcn8.feature_info[i]["reduction"] for i in fcn8.skip_indices] == [16, 8]
    x = torch.randn(1, 1, 64, 64)
    maps = fcn8.backbone.forward_intermediates(x)
    # skip scores start at zero (Long et al.): the output is the coarse scores upsampled 32 -> 16 -> 8 -> 1
    scores = fcn8.classifier(maps[-1])
    for size in [(4, 4), (8, 8), (64, 64)]:
        scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(fcn8(x), scores)
    fcn8(x).sum().backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in fcn8.skip_classifiers)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplab_output_stride_sets_the_backbone_map(output_stride):
    model = DeepLabV3(
        "resnet18", num_classes=3, in_chans=1, output_stride=output_stride, aspp_channels=8
    ).eval()
    x = torch.randn(2, 1, 64, 48)
    assert model.backbone.forward_features(x).shape[-2:] == (64 // output_stride, 48 // output_stride)
    assert model.classifier[0].atrous_rates == {8: (12, 24, 36), 16: (6, 12, 18)}[output_stride]
    for size in [(33, 47), (9, 9)]:
        y = model(torch.randn(2, 1, *size))
        assert y.shape == (2, 3, *size)
    odd = model.backbone.forward_features(torch.randn(1, 1, 33, 47))
    assert odd.shape[-2:] == (math.ceil(33 / output_stride), math.ceil(47 / output_stride))


def test_deeplab_rejects_other_strides():
    with pytest.raises(ConfigError, match="output_stride"):
        DeepLabV3("resnet18", num_classes=2, output_stride=32)


def test_create_model_by_name():
    assert isinstance(create_model("unet", num_classes=2, base_channels=4, depth=1), UNet)
    assert isinstance(create_model("unet", num_classes=2, backbone="resnet18"), BackboneUNet)
    fcn = create_model("fcn", num_classes=2, backbone="resnet18", skips=1)
    assert isinstance(fcn, FCN) and len(fcn.skip_classifiers) == 1
    deeplab = create_model("deeplabv3", num_classes=2, backbone="resnet18", output_stride=16)
    assert isinstance(deeplab, DeepLabV3) and deeplab.output_stride == 16
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        create_model("unte", num_classes=2)
    with pytest.raises(ConfigError, match="base_channels"):
        create_model("unet", num_classes=2, base_channel=4)
    with pytest.raises(ConfigError, match="unknown argument"):
        create_model("fcn", num_classes=2, backbone="resnet18", skipz=1)
    with pytest.raises(ConfigError, match="upsample"):
        create_model("unet", num_classes=2, upsample="bicubic")


def test_deeplabv3_on_a_dilated_mobilenet_and_clear_errors_for_other_backbones():
    model = create_model(
        "deeplabv3",
        num_classes=5,
        backbone="mobilenet_v3_small",
        in_chans=1,
        output_stride=16,
        aspp_channels=16,
    ).eval()
    assert model.feature_info[-1]["reduction"] == 16
    assert model(torch.randn(1, 1, 37, 50)).shape == (1, 5, 37, 50)
    eight = create_model(
        "deeplabv3", num_classes=5, backbone="mobilenet_v3_small", output_stride=8, aspp_channels=16
    ).eval()
    assert eight.feature_info[-1]["reduction"] == 8
    assert eight(torch.randn(1, 3, 37, 50)).shape == (1, 5, 37, 50)
    with pytest.raises(ConfigError, match="cannot trade strides for dilation"):
        create_model("deeplabv3", num_classes=5, backbone="vgg11", output_stride=16)


def test_deeplabv3plus_decoder_merges_the_stride_4_map():
    model = create_model(
        "deeplabv3plus",
        num_classes=4,
        backbone="resnet18",
        in_chans=1,
        aspp_channels=32,
        low_level_channels=8,
    ).eval()
    assert model.feature_info[model.low_level]["reduction"] == 4 and model.output_stride == 16
    assert model.project[0].out_channels == 8 and model.decoder[-1].out_channels == 4
    for size in [(33, 47), (64, 64)]:
        assert model(torch.randn(2, 1, *size)).shape == (2, 4, *size)
    with pytest.raises(ConfigError, match="no stage at reduction 3"):
        create_model("deeplabv3plus", num_classes=4, backbone="resnet18", low_level_reduction=3)


@pytest.mark.parametrize(
    "name, kwargs, scored",
    [
        ("unet", {"backbone": "mobilenet_v3_small"}, -1),
        ("fcn", {"backbone": "resnet18"}, -2),
        ("deeplabv3", {"backbone": "resnet18", "output_stride": 16}, -2),
        ("deeplabv3plus", {"backbone": "resnet18"}, -2),
    ],
)
def test_aux_head_scores_its_stage_in_training_only(name, kwargs, scored):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, aux_loss=True, **kwargs)
    x = torch.randn(2, 3, 45, 51)
    logits, aux = model.train()(x)
    assert logits.shape == aux.shape == (2, 4, 45, 51)
    info = model.feature_info
    assert model.aux_stage == len(info) + scored
    assert model.aux_classifier[0].in_channels == info[model.aux_stage]["num_chs"]
    # the aux logits are the head on that stage's map, upsampled: recompute them by hand
    model.eval()  # fixed BatchNorm statistics on both paths
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    model.training = True  # the forward's branch; every submodule stays in eval mode
    with torch.no_grad():
        padded = F.pad(x, (0, -51 % 32, 0, -45 % 32)) if name == "unet" else x
        stage_map = model.backbone.forward_intermediates(padded)[model.aux_stage]
        expected = F.interpolate(
            model.aux_classifier(stage_map), size=padded.shape[-2:], mode="bilinear", align_corners=False
        )[..., :45, :51]
        torch.testing.assert_close(model(x)[1], expected)
    assert isinstance(model.eval()(x), torch.Tensor)
    loss = sum(o.sum() for o in model.train()(x))
    loss.backward()
    assert model.aux_classifier[0].weight.grad.abs().sum() > 0


def test_aux_stage_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="aux_stage"):
        create_model("fcn", num_classes=3, backbone="resnet18", aux_loss=True, aux_stage=9)
