import torch
from torchvision.models import densenet as tv_densenet

from cnnkit.layers.dense import DenseBlock, DenseLayer, Transition


def _randomize_norms(module: torch.nn.Module, generator: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator))


def test_dense_block_concatenates_every_layer_and_matches_torchvision(generator):
    theirs = tv_densenet._DenseBlock(
        num_layers=3, num_input_features=8, bn_size=2, growth_rate=4, drop_rate=0
    )
    _randomize_norms(theirs, generator)
    ours = DenseBlock(3, 8, growth_rate=4, bn_size=2)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.out_channels == 8 + 3 * 4
    x = torch.randn(2, 8, 6, 6, generator=generator)
    out = ours.eval()(x)
    assert out.shape == (2, 20, 6, 6)
    torch.testing.assert_close(out, theirs.eval()(x), rtol=0, atol=1e-6)
    # The block input is passed through unchanged as the first channels; layer 2 sees x and layer 1's output.
    torch.testing.assert_close(out[:, :8], x)
    layer1_out = ours["denselayer1"](x)
    torch.testing.assert_close(out[:, 8:12], layer1_out)
    torch.testing.assert_close(out[:, 12:16], ours["denselayer2"](torch.cat([x, layer1_out], 1)))


def test_dense_layer_bottleneck_width_and_dropout():
    torch.manual_seed(0)
    layer = DenseLayer(16, growth_rate=8, bn_size=4, drop_rate=0.5)
    assert layer.conv1.out_channels == 32 and layer.conv2.out_channels == 8
    x = torch.randn(4, 16, 5, 5)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    out = layer(x)
    assert out.shape == (4, 8, 5, 5)
    assert (out == 0).float().mean().item() > 0.3
    assert isinstance(DenseLayer(16, 8).dropout, torch.nn.Identity)


def test_transition_matches_torchvision(generator):
    theirs = tv_densenet._Transition(12, 6)
    _randomize_norms(theirs, generator)
    ours = Transition(12, 6)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 12, 7, 7, generator=generator)
    out = ours.eval()(x)
    assert out.shape == (1, 6, 3, 3)
    torch.testing.assert_close(out, theirs.eval()(x), rtol=0, atol=1e-6)
