"""U-Net++ and Attention U-Net: sizes, hand-counted parameters and MACs, the nested wiring, pruning, deep
supervision, the attention gates, torch.fx, ONNX and a tiny training run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import cnnkit
from cnnkit.cli import main
from cnnkit.errors import ConfigError
from cnnkit.export import check_export, export_onnx, fuse
from cnnkit.geometry import conv_params
from cnnkit.tasks import create_model
from cnnkit.tasks.segmentation import AttentionGate, AttentionUNet, UNet, UNetPlusPlus
from cnnkit.tasks.segmentation.unet import he_init

CLASSIC = dict(base_channels=4, depth=3)
MODELS = [
    ("unetplusplus", CLASSIC),
    ("unetplusplus", dict(CLASSIC, deep_supervision=True, prune=2, upsample="transposed")),
    ("unetplusplus", dict(backbone="resnet18", decoder_channels=(8, 8, 16, 16, 32), score_stages=(3, 1))),
    # segmentation_models_pytorch's layout: nested over the stages, one full-resolution block
    (
        "unetplusplus",
        dict(backbone="resnet18", full_resolution="block", deep_supervision=True, score_stages=(2,)),
    ),
    ("attention_unet", CLASSIC),
    ("attention_unet", dict(backbone="mobilenet_v3_small", score_stages=(3, 2, 1))),
    # the U-Net itself, with the encoder of the peer benchmark (its padding once branched on the size)
    ("unet", dict(backbone="resnet18", decoder_channels=(8, 8, 16, 16, 32, 32))),
    ("unet", dict(base_channels=4, depth=2)),
]


def double_conv_params(c_in: int, c_out: int) -> int:
    """Two 3x3 conv (no bias) -> BN (weight and bias) of :class:`DoubleConv`."""
    return conv_params(c_in, c_out, 3, bias=False) + conv_params(c_out, c_out, 3, bias=False) + 4 * c_out


def double_conv_macs(c_in: int, c_out: int, size: int) -> int:
    """MACs of a :class:`DoubleConv` on ``size x size`` maps: ``H W C_out (C_in + C_out) k^2``."""
    return size * size * c_out * (c_in + c_out) * 9


@pytest.mark.parametrize(("name", "options"), MODELS)
def test_logits_at_the_input_size_for_odd_sizes(name, options):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=2, **options).eval()
    for size in [(37, 45), (1, 1), (16, 16), (21, 8)]:
        assert model(torch.randn(2, 2, *size)).shape == (2, 3, *size)


def own_convs(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    """The model's convolutions outside its backbone, large enough for their weights' std to be measured."""
    return [
        m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Conv2d) and not n.startswith("backbone") and m.weight.numel() >= 2000
    ]


@pytest.mark.parametrize(("name", "options"), MODELS)
def test_own_convolutions_start_at_the_papers_he_variance_and_the_backbone_keeps_its_init(name, options):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=2, init="he", **options)
    backbone = getattr(model, "backbone", None)
    before = {k: v.clone() for k, v in backbone.state_dict().items()} if backbone is not None else {}
    convs = own_convs(model)
    assert convs
    for conv in convs:
        fan_in = conv.weight[0].numel()
        # U-Net paper, section 3: std sqrt(2 / N), N the incoming nodes (PyTorch's default: sqrt(1 / (3 N)))
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.15)
        if conv.bias is not None:
            assert not conv.bias.any()
    # drawing again re-draws the model's own layers and leaves the encoder classifier's initialisation alone
    own = convs[0].weight.clone()
    he_init(model)
    assert not torch.equal(own, convs[0].weight)
    if backbone is not None:
        assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


@pytest.mark.parametrize(("name", "options"), MODELS)
def test_by_default_the_layers_keep_pytorchs_init_and_an_unknown_init_is_named(name, options):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=2, **options)  # init="pytorch"
    convs = own_convs(model)
    assert convs
    for conv in convs:
        fan_in = conv.weight[0].numel()
        # PyTorch's default: U(-1/sqrt(N), 1/sqrt(N)), std sqrt(1 / (3 N)), 0.41x the paper's
        assert conv.weight.std().item() == pytest.approx(math.sqrt(1 / (3 * fan_in)), rel=0.15)
        if conv.bias is not None:
            assert conv.bias.any()
    with pytest.raises(ConfigError, match="init must be one of 'he', 'pytorch', got 'kaiming'"):
        create_model(name, num_classes=3, in_chans=2, init="kaiming", **options)


def final_heads(model: torch.nn.Module) -> list[torch.nn.Conv2d]:
    """The classifiers that give the full-resolution logits (U-Net++: one per supervised ``X^{0,j}``)."""
    return list(model.heads) if isinstance(model, UNetPlusPlus) else [model.head]


@pytest.mark.parametrize(("name", "options"), MODELS)
def test_a_3x3_head_is_centred_on_its_pixel_and_only_the_final_heads_change(name, options):
    torch.manual_seed(0)
    narrow = create_model(name, num_classes=3, in_chans=2, **options).eval()
    wide = create_model(name, num_classes=3, in_chans=2, head_kernel=3, **options).eval()
    heads = final_heads(wide)
    assert all(head.kernel_size == (3, 3) and head.padding == (1, 1) for head in heads)
    extra = sum(8 * head.in_channels * head.out_channels for head in heads)
    assert sum(p.numel() for p in wide.parameters()) - sum(p.numel() for p in narrow.parameters()) == extra
    # a 3x3 kernel holding the 1x1 weights at its centre and zeros around is the 1x1 head, at every pixel
    state = narrow.state_dict()
    for key, value in wide.state_dict().items():
        if value.shape != state[key].shape:
            value = torch.zeros_like(value)
            value[..., 1:2, 1:2] = state[key]
            state[key] = value
    wide.load_state_dict(state)
    x = torch.randn(2, 2, 37, 45)
    torch.testing.assert_close(wide(x), narrow(x))
    for bad in (2, 0, 1.5):
        with pytest.raises(ConfigError, match=f"head_kernel must be a positive odd integer.*got {bad}"):
            create_model(name, num_classes=3, in_chans=2, head_kernel=bad, **options)


@pytest.mark.parametrize("name", ["unetplusplus", "attention_unet"])
def test_odd_input_is_zero_padded_to_the_stride_then_cropped(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, in_chans=1, **CLASSIC).eval()
    x = torch.randn(1, 1, 9, 6)
    padded = F.pad(x, (0, 2, 0, 7))  # to 16 x 8, multiples of 2**3
    torch.testing.assert_close(model(x), model(padded)[..., :9, :6])


def test_unetplusplus_parameter_count_by_hand():
    """Encoder as the U-Net's; node X^{i,j} is a DoubleConv on w_{i+1} + j * w_i channels to w_i (eq. 1);
    a 1x1 head per level with deep supervision."""
    model = UNetPlusPlus(in_chans=1, num_classes=2, base_channels=4, depth=2, deep_supervision=True)
    w = [4, 8, 16]
    encoder = double_conv_params(1, 4) + double_conv_params(4, 8) + double_conv_params(8, 16)
    nodes = {(i, j): double_conv_params(w[i + 1] + j * w[i], w[i]) for j in (1, 2) for i in range(3 - j)}
    heads = 2 * conv_params(4, 2, 1)
    assert sorted(model.nodes) == ["x0_1", "x0_2", "x1_1"]
    assert nodes == {(0, 1): 592, (1, 1): 2336, (0, 2): 736}  # e.g. 12*4*9 + 4*4*9 + 4*4
    assert sum(p.numel() for p in model.parameters()) == encoder + sum(nodes.values()) + heads == 8296
    single = UNetPlusPlus(in_chans=1, num_classes=2, base_channels=4, depth=2)
    assert sum(p.numel() for p in single.parameters()) == 8296 - conv_params(4, 2, 1)


def test_attention_unet_is_the_unet_plus_its_gates():
    """Each gate: W_x (kernel = stride = 2, no bias) C_x -> C_x / 2, W_g (1x1) C_g -> C_x / 2, psi 1x1 -> 1."""
    unet = UNet(in_chans=1, num_classes=2, base_channels=4, depth=2)
    model = AttentionUNet(in_chans=1, num_classes=2, base_channels=4, depth=2)
    # gate of the skip of row i (channels w_i), gated by the map of row i + 1 (w_{i+1})
    gates = [
        conv_params(c_x, c_x // 2, 2, bias=False)
        + conv_params(c_g, c_x // 2, 1)
        + conv_params(c_x // 2, 1, 1)
        for c_x, c_g in [(8, 16), (4, 8)]
    ]
    assert gates == [128 + 68 + 5, 32 + 18 + 3]
    unet_params = sum(p.numel() for p in unet.parameters())
    assert sum(p.numel() for p in model.parameters()) == unet_params + sum(gates) == 7550 + 254
    missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all(key.startswith("gates.") for key in missing)
    assert len(missing) == 2 * 5  # per gate: w_x.weight, w_g.weight / bias, psi.weight / bias
    assert model.gates["0"].w_x.kernel_size == model.gates["0"].w_x.stride == (2, 2)


def test_nested_nodes_concatenate_the_upsampled_node_below_and_all_nodes_of_their_row():
    """X^{i,j} = H([U(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}]), checked on the tensors each block receives."""
    torch.manual_seed(0)
    model = UNetPlusPlus(in_chans=1, num_classes=2, base_channels=4, depth=3).eval()
    outputs, inputs = {}, {}
    encoder = [model.stem, *model.down]
    for i, block in enumerate(encoder):
        block.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__((i, 0), out))
    for key, node in model.nodes.items():
        i, j = map(int, key[1:].split("_"))
        node.register_forward_hook(lambda m, args, out, ij=(i, j): outputs.__setitem__(ij, out))
        node.conv.register_forward_pre_hook(lambda m, args, ij=(i, j): inputs.__setitem__(ij, args[0]))
    model(torch.randn(1, 1, 32, 24))
    assert sorted(inputs) == [(i, j) for i in range(3) for j in range(1, 4 - i)]
    widths = [4, 8, 16, 32]
    for (i, j), seen in inputs.items():
        below = F.interpolate(outputs[i + 1, j - 1], scale_factor=2, mode="bilinear", align_corners=False)
        expected = torch.cat([below, *(outputs[i, k] for k in range(j))], dim=1)
        assert seen.shape[1] == widths[i + 1] + j * widths[i]
        assert seen.shape[-2:] == (32 // 2**i, 24 // 2**i)
        torch.testing.assert_close(seen, expected, rtol=0, atol=0)


def test_backbone_unetplusplus_rows_are_the_input_and_the_stages():
    model = UNetPlusPlus(in_chans=1, num_classes=2, backbone="resnet18", deep_supervision=True)
    # a full-resolution row whose X^{0,0} is the image, then resnet18's stages (reductions 2 ... 32)
    assert model.rows.skip_channels == (1, 64, 64, 128, 256, 512)
    assert model.rows.widths == (32, 64, 64, 128, 256, 512)
    assert model.rows.scales == (2, 2, 2, 2, 2) and model.stride == 32
    assert model.levels == 5 and len(model.heads) == 5 and len(model.nodes) == 15
    # X^{0,3}: upsampled X^{1,2} (64) + the image (1) + X^{0,1} and X^{0,2} (32 each)
    assert model.nodes["x0_3"].conv[0][0].in_channels == 64 + 1 + 2 * 32
    assert "backbone.layer4.1.conv2.weight" in model.state_dict()
    without = UNetPlusPlus(in_chans=1, num_classes=2, backbone="resnet18", input_skip=False)
    assert without.nodes["x0_3"].conv[0][0].in_channels == 64 + 2 * 32


def test_block_layout_nests_over_the_stages_then_one_full_resolution_block():
    """full_resolution="block": the grid of rows 1..L (resnet18's stages), then X^{0,L} = H([U(X^{1,L-1}),
    X^{0,0}]); the L - 1 nested full-resolution nodes and their heads' widths are gone."""
    options = dict(in_chans=1, num_classes=2, backbone="resnet18", deep_supervision=True)
    nested = UNetPlusPlus(**options)
    block = UNetPlusPlus(**options, full_resolution="block")
    assert block.rows == nested.rows and block.levels == 5
    assert sorted(nested.nodes) == sorted([*block.nodes, "x0_1", "x0_2", "x0_3", "x0_4"])
    assert len(block.nodes) == 4 * 5 // 2 + 1
    # X^{0,5}: X^{1,4} (64 channels) upsampled, then the image; out the full-resolution row's 32
    assert block.nodes["x0_5"].conv[0][0].in_channels == 64 + 1
    assert nested.nodes["x0_5"].conv[0][0].in_channels == 64 + 1 + 4 * 32
    # the heads of levels 1..4 classify X^{1,k} (64 channels), the last X^{0,5} (32)
    assert [head.in_channels for head in block.heads] == [64, 64, 64, 64, 32]
    without = UNetPlusPlus(**options, full_resolution="block", input_skip=False)
    assert without.nodes["x0_5"].conv[0][0].in_channels == 64
    grid = without.eval().grid(without.pad(torch.randn(1, 1, 32, 32)), without.levels)
    assert sorted(k for k, v in grid.items() if k[0] == 0) == [(0, 0), (0, 5)] and grid[0, 0] is None
    assert grid[0, 5].shape == (1, 32, 32, 32) and grid[1, 4].shape == (1, 64, 16, 16)


def test_block_layout_prunes_to_the_stride_two_row_upsampled():
    torch.manual_seed(0)
    model = UNetPlusPlus(
        in_chans=1, num_classes=3, backbone="resnet18", deep_supervision=True, full_resolution="block"
    ).eval()
    x = torch.randn(1, 1, 45, 38)
    heads = model.forward_heads(x)
    padded = model.pad(x)
    called = set()
    for key, node in model.nodes.items():
        node.register_forward_hook(lambda m, args, out, key=key: called.add(key))
    model.prune = 2
    pruned = model(x)
    torch.testing.assert_close(pruned, heads[1], rtol=0, atol=0)
    assert called == {"x1_1", "x2_1", "x1_2"}  # i + j <= 3 on rows 1.., no full-resolution block
    coarse = model.heads[1](model.grid(padded, 2)[1, 2])
    assert coarse.shape[-2:] == (padded.shape[-2] // 2, padded.shape[-1] // 2)
    expected = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(pruned, expected[..., :45, :38])
    called.clear()
    model.prune = 4  # the whole nested grid, but not the full-resolution block
    torch.testing.assert_close(model(x), heads[3], rtol=0, atol=0)
    assert called == set(model.nodes) - {"x0_5"}
    called.clear()
    model.prune = None
    torch.testing.assert_close(model(x), heads[-1], rtol=0, atol=0)
    assert called == set(model.nodes)


def test_block_layout_needs_a_downsampled_first_stage():
    with pytest.raises(ConfigError, match="needs a backbone whose first stage is downsampled"):
        UNetPlusPlus(in_chans=1, base_channels=4, depth=2, full_resolution="block")
    with pytest.raises(ConfigError, match="'nested' or 'block', got 'flat'"):
        UNetPlusPlus(in_chans=1, backbone="resnet18", full_resolution="flat")


def test_pruned_model_answers_with_the_kth_head_and_runs_fewer_macs():
    torch.manual_seed(0)
    model = UNetPlusPlus(in_chans=1, num_classes=2, base_channels=4, depth=3, deep_supervision=True).eval()
    x = torch.randn(2, 1, 29, 35)
    heads = model.forward_heads(x)
    assert len(heads) == 3
    widths, size = [4, 8, 16, 32], 32
    macs = []
    for k in (1, 2, 3):
        model.prune = k
        torch.testing.assert_close(model(x), heads[k - 1], rtol=0, atol=0)
        # by hand: encoder rows 0..k, the nodes with i + j <= k, the 1x1 head of X^{0,k}
        encoder = double_conv_macs(1, 4, size) + sum(
            double_conv_macs(widths[i - 1], widths[i], size >> i) for i in range(1, k + 1)
        )
        nodes = sum(
            double_conv_macs(widths[i + 1] + j * widths[i], widths[i], size >> i)
            for j in range(1, k + 1)
            for i in range(k + 1 - j)
        )
        expected = encoder + nodes + size * size * 2 * 4
        macs.append(cnnkit.analyze(model, (1, 1, size, size)).macs)
        assert macs[-1] == expected
    assert macs == [1_003_520, 2_551_808, 4_984_832]  # k = 1: 184320 + 221184 + 589824 + 8192
    model.prune = None
    torch.testing.assert_close(model(x), heads[-1], rtol=0, atol=0)


def test_pruning_a_backbone_unetplusplus_skips_decoder_nodes():
    torch.manual_seed(0)
    model = UNetPlusPlus(
        in_chans=1, num_classes=2, backbone="mobilenet_v3_small", deep_supervision=True
    ).eval()
    x = torch.randn(1, 1, 45, 38)
    heads = model.forward_heads(x)
    assert model.levels == len(heads) == 5
    called = set()
    for key, node in model.nodes.items():
        node.register_forward_hook(lambda m, args, out, key=key: called.add(key))
    model.prune = 2
    torch.testing.assert_close(model(x), heads[1], rtol=0, atol=0)
    assert called == {"x0_1", "x1_1", "x0_2"}


def test_unetplusplus_score_stages_add_row_scores_to_the_deepest_head_only():
    """score_stages=(2, 1) on MobileNetV3-Small (rows 3 and 2 below the full-resolution row): 1x1 scores of
    each row's last node X^{r,L-r}, upsampled bilinearly by the row's reduction and added to the deepest
    head's logits (FCN's score fusion); a pruned head answers alone."""
    torch.manual_seed(0)
    model = UNetPlusPlus(
        in_chans=1, num_classes=3, backbone="mobilenet_v3_small", deep_supervision=True, score_stages=(2, 1)
    ).eval()
    levels = model.levels
    assert sorted(model.score_heads) == ["2", "3"]
    assert [model.rows.reduction(r) for r in (2, 3)] == [4, 8]
    x = torch.randn(1, 1, 45, 38)
    padded = model.pad(x)
    grid = model.grid(padded, levels)
    expected = model.heads[-1](grid[0, levels])
    for row in (2, 3):
        scores = model.score_heads[str(row)](grid[row, levels - row])
        assert scores.shape[-2:] == tuple(n // model.rows.reduction(row) for n in padded.shape[-2:])
        expected = expected + F.interpolate(
            scores, size=padded.shape[-2:], mode="bilinear", align_corners=False
        )
    fused = model(x)
    torch.testing.assert_close(fused, expected[..., :45, :38])
    heads = model.forward_heads(x)
    torch.testing.assert_close(heads[-1], fused)
    model.prune = levels - 1
    torch.testing.assert_close(model(x), model.heads[-2](grid[0, levels - 1])[..., :45, :38])
    model.prune = levels
    torch.testing.assert_close(model(x), fused)
    outputs = model.train()(torch.randn(2, 1, 32, 32))
    sum(o.sum() for o in outputs).backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in model.score_heads.values())


def test_pruning_skips_the_deeper_nodes_and_encoder_rows():
    model = UNetPlusPlus(in_chans=1, num_classes=2, base_channels=4, depth=3, deep_supervision=True, prune=1)
    calls = {}
    for name, module in [*model.nodes.items(), *((f"down{i}", d) for i, d in enumerate(model.down))]:
        module.register_forward_hook(lambda m, args, out, name=name: calls.__setitem__(name, 1))
    model.eval()(torch.randn(1, 1, 16, 16))
    assert sorted(calls) == ["down0", "x0_1"]
    calls.clear()
    model.train()(torch.randn(2, 1, 16, 16))  # training runs the whole network
    assert len(calls) == 3 + 6


def test_prune_needs_deep_supervision_and_a_level_in_range():
    with pytest.raises(ConfigError, match="prune needs deep_supervision"):
        UNetPlusPlus(in_chans=1, base_channels=4, depth=3, prune=2)
    model = UNetPlusPlus(in_chans=1, base_channels=4, depth=3, deep_supervision=True)
    for level in (0, 4):
        with pytest.raises(ConfigError, match="between 1 and 3"):
            model.prune = level
    with pytest.raises(ConfigError, match="forward_heads needs deep_supervision"):
        UNetPlusPlus(in_chans=1, base_channels=4, depth=3).forward_heads(torch.zeros(1, 1, 8, 8))


def test_deep_supervision_returns_every_head_in_training_and_one_in_eval():
    torch.manual_seed(0)
    model = UNetPlusPlus(in_chans=1, num_classes=3, base_channels=4, depth=3, deep_supervision=True)
    x = torch.randn(2, 1, 21, 30)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and [tuple(o.shape) for o in outputs] == [(2, 3, 21, 30)] * 3
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.eval()(x).shape == (2, 3, 21, 30)
    plain = UNetPlusPlus(in_chans=1, num_classes=3, base_channels=4, depth=3)
    assert plain.train()(x).shape == (2, 3, 21, 30)


def test_attention_gate_formula_on_numbers():
    """alpha = sigmoid(psi(ReLU(W_x x + W_g g + b_g)) + b_psi), upsampled: W_x sums each 2x2 cell here."""
    gate = AttentionGate(skip_channels=1, gating_channels=1, inter_channels=1, scale=2)
    with torch.no_grad():
        gate.w_x.weight.fill_(1.0)
        gate.w_g.weight.fill_(2.0)
        gate.w_g.bias.fill_(-1.0)
        gate.psi.weight.fill_(0.5)
        gate.psi.bias.fill_(0.25)
    x = torch.full((1, 1, 4, 6), 0.5)
    g = torch.ones(1, 1, 2, 3)
    with torch.no_grad():
        gated, alpha = gate(x, g)
    # cell: W_x x = 4 * 0.5 = 2; + 2 * 1 - 1 = 3; ReLU 3; psi 0.5 * 3 + 0.25 = 1.75
    expected = 1 / (1 + math.exp(-1.75))
    assert alpha.shape == (1, 1, 4, 6)
    torch.testing.assert_close(alpha, torch.full_like(alpha, expected))
    torch.testing.assert_close(gated, x * expected)
    g[..., 0, 0] = -10.0  # ReLU cuts that cell: alpha there is sigmoid(0.25), bilinearly spread
    with torch.no_grad():
        _, alpha = gate(x, g)
    assert alpha[0, 0, 0, 0] == pytest.approx(1 / (1 + math.exp(-0.25)))


@pytest.mark.parametrize("options", [CLASSIC, dict(backbone="resnet18")])
def test_attention_maps_are_coefficients_at_each_skips_size(options):
    torch.manual_seed(0)
    model = AttentionUNet(in_chans=1, num_classes=2, **options).eval()
    model(torch.randn(2, 1, 37, 45))
    stride = model.stride
    padded = (math.ceil(37 / stride) * stride, math.ceil(45 / stride) * stride)
    rows = len(model.rows.skip_channels) - 1
    sizes = [
        (padded[0] // model.rows.reduction(i), padded[1] // model.rows.reduction(i)) for i in range(rows)
    ]
    assert [tuple(a.shape) for a in model.attention_maps] == [(2, 1, *s) for s in reversed(sizes)]
    assert sizes[0] == ((64, 64) if "backbone" in options else (40, 48))
    for alpha in model.attention_maps:
        assert not alpha.requires_grad and 0 < alpha.min() and alpha.max() < 1


@pytest.mark.parametrize(("bias", "expected_scale"), [(-1e4, 0.0), (1e4, 1.0)])
def test_gates_scale_the_skip(bias, expected_scale):
    """psi's bias at -1e4 closes every gate (the decoder sees zeros for the skips); at +1e4 they pass it."""
    torch.manual_seed(0)
    model = AttentionUNet(in_chans=1, num_classes=2, base_channels=4, depth=2).eval()
    with torch.no_grad():
        for gate in model.gates.values():
            gate.psi.bias.fill_(bias)
    encoder, seen = {}, {}
    model.stem.register_forward_hook(lambda m, a, out: encoder.__setitem__(0, out))
    model.down[0].register_forward_hook(lambda m, a, out: encoder.__setitem__(1, out))
    for k, block in enumerate(model.up):
        block.conv.register_forward_pre_hook(lambda m, args, k=k: seen.__setitem__(k, args[0]))
    model(torch.randn(1, 1, 16, 12))
    for k, row in [(0, 1), (1, 0)]:  # up[0] merges row 1 (8 channels), up[1] row 0 (4 channels)
        skip = seen[k][:, -encoder[row].shape[1] :]
        torch.testing.assert_close(skip, encoder[row] * expected_scale, rtol=0, atol=0)
    assert all(torch.all(alpha == expected_scale) for alpha in model.attention_maps)


@pytest.mark.parametrize(("name", "options"), MODELS)
def test_torch_fx_traces_the_model_in_eval_mode(name, options):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1, **options).eval()
    traced = torch.fx.symbolic_trace(model)
    assert any(node.op == "call_module" for node in traced.graph.nodes)
    x = torch.randn(1, 1, 37, 45)
    torch.testing.assert_close(traced(x), model(x))
    if name == "attention_unet":  # tracing left the maps of real forward passes alone
        assert all(isinstance(alpha, torch.Tensor) for alpha in model.attention_maps)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unetplusplus", dict(base_channels=4, depth=2, deep_supervision=True, prune=1)),
        ("unetplusplus", dict(base_channels=4, depth=3, upsample="transposed")),
        # a pruned head of the block layout: the stride-2 row's logits upsampled in the graph
        (
            "unetplusplus",
            dict(backbone="mobilenet_v3_small", full_resolution="block", deep_supervision=True, prune=2),
        ),
        ("attention_unet", dict(base_channels=4, depth=2)),
        ("attention_unet", dict(backbone="mobilenet_v3_small", score_stages=(2,))),
    ],
)
def test_fused_onnx_export_matches_pytorch(name, options, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_chans=1, **options).eval()
    fused = fuse(model)
    called = [n.target for n in torch.fx.symbolic_trace(fused).graph.nodes if n.op == "call_module"]
    assert not any(isinstance(fused.get_submodule(name), torch.nn.BatchNorm2d) for name in called)
    samples = [torch.randn(n, 1, 37, 45) for n in (1, 3)]
    path = export_onnx(fused, tmp_path / f"{name}.onnx", samples[0], dynamic_batch=True)
    assert check_export(path, model, samples) < 1e-4


@pytest.mark.parametrize("name", ["unetplusplus", "attention_unet"])
def test_cnnkit_summary_of_the_default_model(name, capsys):
    assert main(["summary", name, "--input", "1x64x64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "fx" and report["input_size"] == [1, 1, 64, 64]
    expected = sum(p.numel() for p in create_model(name, in_chans=1).parameters())
    assert report["params"] == expected


def test_decoder_channels_may_set_the_full_resolution_row():
    # resnet18's stages are at reductions 4..32, so a full-resolution row is added above them
    default = create_model("unetplusplus", backbone="resnet18", decoder_channels=(8, 8, 16, 16, 32))
    narrow = create_model("unetplusplus", backbone="resnet18", decoder_channels=(4, 8, 8, 16, 16, 32))
    assert default.rows.widths == (32, 8, 8, 16, 16, 32)  # max(64 // 2, 16) by default
    assert narrow.rows.widths == (4, 8, 8, 16, 16, 32)
    assert narrow(torch.zeros(1, 3, 37, 45)).shape == (1, 2, 37, 45)
    with pytest.raises(ConfigError, match="or 6 with the full-resolution row first"):
        create_model("unetplusplus", backbone="resnet18", decoder_channels=(8,) * 7)
    unet = create_model("unet", backbone="resnet18", decoder_channels=(4, 8, 8, 16, 16, 32))
    assert unet.decoder[-1].conv[-1].out_channels == unet.head.in_channels == 4
    assert unet(torch.zeros(1, 3, 37, 45)).shape == (1, 2, 37, 45)


def test_builders_check_their_options():
    with pytest.raises(ConfigError, match="did you mean 'base_channels'"):
        create_model("unetplusplus", base_channel=4)
    with pytest.raises(ConfigError, match="base_channels and depth set the classic encoder"):
        create_model("attention_unet", backbone="resnet18", depth=3)
    with pytest.raises(ConfigError, match="score_stages index a backbone"):
        create_model("attention_unet", score_stages=(1,))
    with pytest.raises(ConfigError, match="score_stages must index"):
        create_model("attention_unet", backbone="resnet18", score_stages=(4,))
    with pytest.raises(ConfigError, match="score_stages index a backbone"):
        create_model("unetplusplus", score_stages=(1,))
    with pytest.raises(ConfigError, match=r"score_stages must index .*got -1"):
        create_model("unetplusplus", backbone="resnet18", score_stages=(-1,))
    with pytest.raises(ConfigError, match="decoder_channels needs one entry per backbone stage"):
        create_model("unetplusplus", backbone="resnet18", decoder_channels=(8, 8))
    assert {"unetplusplus", "attention_unet"} <= set(cnnkit.list_models(task="segmentation"))
    assert cnnkit.model_card("unetplusplus").paper.startswith("Zhou et al., 2018")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("unetplusplus", {"model_kwargs": {"base_channels": 4, "depth": 2}}),
        ("attention_unet", {"model_kwargs": {"base_channels": 4, "depth": 2}}),
        pytest.param("unetplusplus", {"backbone": "resnet18"}, marks=pytest.mark.slow),
        pytest.param("attention_unet", {"backbone": "resnet18"}, marks=pytest.mark.slow),
    ],
)
def test_trains_evaluates_and_predicts_end_to_end(name, options, tmp_path):
    run = cnnkit.train(
        task="segmentation",
        model=name,
        recipe="none",
        data={"name": "mnist-seg", "train_size": 16, "val_size": 8, "batch_size": 8, "image_size": 64},
        epochs=1,
        progress=False,
        plots=False,
        output_dir=str(tmp_path / name),
        **options,
    )
    assert 0.0 <= run.metrics["miou"] <= 1.0
    (answer,) = cnnkit.load(run.dir).predict([torch.zeros(1, 50, 70, dtype=torch.uint8)])
    assert set(answer) == {"image", "classes"}


@pytest.mark.parametrize("name", ["unetplusplus", "attention_unet"])
def test_recipe_is_the_unet_recipe_with_the_model_switched(name):
    from cnnkit.engine.build import build_model
    from cnnkit.engine.config import load_config
    from cnnkit.engine.recipes import get_recipe

    config, unet = load_config(None, [f"recipe={name}"]), load_config(None, ["recipe=unet"])
    assert config.model == name and config.backbone == unet.backbone == "mobilenet_v3_large"
    assert config.pretrain == unet.pretrain and config.data.image_size == unet.data.image_size
    assert config.epochs == unet.epochs and config.phases == unet.phases  # the same schedule
    measured = get_recipe(name).measured
    # the target for both variants: the unet recipe's mIoU when it was set (0.908)
    assert (measured["metric"], measured["target"]) == ("miou", 0.908)
    model = build_model(config, [str(digit) for digit in range(10)], 1).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 11, 64, 64)


def test_image_info_restores_maps_to_the_original_pixels():
    from cnnkit.tasks.base import ImageInfo

    info = ImageInfo((50, 70), 64 / 70, (64, 64))  # letterboxed: the image fills the top 46 rows
    assert info.inner == (46, 64)
    maps = torch.zeros(2, 64, 64)
    maps[:, :46] = 1.0  # the image's part of the input
    maps[1, :46, :32] = 0.0
    restored = info.restore(maps, mode="bilinear")
    assert restored.shape == (2, 50, 70) and restored[0].min() > 1 - 1e-6  # no padding blended in
    assert restored[1, :, :30].max() < 1e-6 and restored[1, :, 40:].min() > 1 - 1e-6
    # a map at a fraction of the input's resolution (a gate's) is resized to it first
    assert info.restore(maps[:, ::4, ::4], mode="nearest").shape == (2, 50, 70)
    classes = torch.randint(0, 5, (1, 64, 64))
    assert info.restore(classes).dtype == torch.int64


def test_predict_draws_the_attention_gates(tmp_path, capsys):
    from cnnkit.cli import main
    from cnnkit.data import read_image, write_png

    data = {"name": "mnist-seg", "train_size": 8, "val_size": 4, "batch_size": 4, "image_size": 64}
    common = dict(task="segmentation", recipe="none", data=data, epochs=1, progress=False, plots=False)
    small = {"model_kwargs": {"base_channels": 4, "depth": 2}}
    gated = cnnkit.train(model="attention_unet", output_dir=str(tmp_path / "gated"), **common, **small)
    image = torch.randint(0, 256, (1, 50, 70), dtype=torch.uint8)
    write_png(image, tmp_path / "digit.png")
    predictor = cnnkit.load(gated.dir)
    (answer,) = predictor.predict([image], output=tmp_path / "out", attention=True)
    drawn = read_image(answer["attention"], mode="RGB")
    assert answer["attention"].endswith("image0_attention.png")
    assert drawn.shape == (3, 50, 2 * 70 + 2)  # two gates (depth 2) side by side in the original pixels
    maps = predictor.model.attention_at_input()
    assert [tuple(m.shape) for m in maps] == [(1, 1, 64, 64)] * 2
    assert all(0.0 <= float(m.min()) and float(m.max()) <= 1.0 for m in maps)
    assert main(["predict", str(gated.dir), str(tmp_path / "digit.png"), "--attention"]) == 0
    assert "digit_attention.png" in capsys.readouterr().out
    plain = cnnkit.train(model="unet", output_dir=str(tmp_path / "plain"), **common, **small)
    with pytest.raises(ConfigError, match="no attention gates to draw .*attention_unet"):
        cnnkit.load(plain.dir).predict([image], output=tmp_path / "out", attention=True)
    assert main(["predict", str(plain.dir), str(tmp_path / "digit.png"), "--attention"]) == 2
    assert "attention_unet" in capsys.readouterr().err
