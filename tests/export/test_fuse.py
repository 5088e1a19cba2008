"""fuse(): BatchNorm folding found on the fx graph, over the whole zoo and on hand-built edge cases."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import cnnkit
from cnnkit.errors import ConfigError
from cnnkit.export import find_fold_pairs, fold_batchnorm, fuse


def randomize_batchnorms(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial statistics and affine terms, so that a wrong fold cannot pass as an identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=generator)
                    m.bias.uniform_(-0.5, 0.5, generator=generator)
    return model.eval()


def batchnorm_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def expected_unfolded(model: nn.Module) -> list[str]:
    """BatchNorms that cannot fold, by architecture (torchvision's module names, which the zoo shares).

    DenseNet normalizes before its convs: ``norm1`` of each dense layer, the transitions' ``norm`` and
    ``norm5`` read concatenations, not conv outputs. GoogLeNet / Inception-v3 auxiliary heads are not
    called in eval mode, so their BatchNorms are not on the traced graph.
    """
    pattern = re.compile(r"(\.norm1|transition\d+\.norm|features\.norm5)$|aux", re.IGNORECASE)
    return [name for name in batchnorm_names(model) if pattern.search(name)]


def _is_large(name: str) -> bool:
    card = cnnkit.model_card(name)
    return card.params > 30e6 or card.macs > 6e9


ZOO = [
    pytest.param(n, marks=pytest.mark.slow) if _is_large(n) else n
    for n in cnnkit.list_models(task="classification")
]


def fuse_and_compare(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float, bool]:
    """``(fused, relative error of its output, whether the input model's state_dict is unchanged)``.

    The error is relative to the output's magnitude (at least 1): float32 rounding of the folded weights
    grows with it.
    """
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse(model)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    error = (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return fused, error, unchanged


@pytest.mark.parametrize("name", ZOO)
def test_fuse_every_registered_model(name, generator):
    card = cnnkit.model_card(name)
    side = min(card.input_size[1], max(64, card.min_input_size[1]))
    model = randomize_batchnorms(cnnkit.create_model(name), generator)
    x = torch.randn(1, card.input_size[0], side, side, generator=generator)
    fused, error, unchanged = fuse_and_compare(model, x)
    assert error <= 1e-5
    assert sorted(batchnorm_names(fused)) == sorted(expected_unfolded(model))
    assert unchanged, "input model changed"
    assert type(fused) is type(model) and not fused.training


def test_fuse_densenet_keeps_the_preactivation_norms(generator):
    model = randomize_batchnorms(torchvision.models.densenet121(), generator)
    assert len(expected_unfolded(model)) == 58 + 3 + 1  # 58 dense layers, 3 transitions, norm5
    fused, error, unchanged = fuse_and_compare(model, torch.randn(1, 3, 32, 32, generator=generator))
    assert error <= 1e-5 and unchanged
    assert sorted(batchnorm_names(fused)) == sorted(expected_unfolded(model))


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "googlenet"])
def test_fold_is_exact_in_float64(name, generator):
    model = randomize_batchnorms(cnnkit.create_model(name), generator).double()
    x = torch.randn(2, 3, 64, 64, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        assert (fuse(model)(x) - model(x)).abs().max().item() < 1e-10


def test_fold_batchnorm_formula(generator):
    conv = nn.Conv2d(3, 4, 3, bias=True).double()
    bn = randomize_batchnorms(nn.BatchNorm2d(4).double(), generator)
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(weight, conv.weight * s[:, None, None, None])
    assert torch.allclose(bias, (conv.bias - bn.running_mean) * s + bn.bias)
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        reference = bn(conv(x))
    assert torch.allclose(nn.functional.conv2d(x, weight, bias), reference, atol=1e-12)


def test_linear_without_bias_and_bn_without_affine(generator):
    model = nn.Sequential(
        nn.Conv1d(2, 5, 3, bias=False),
        nn.BatchNorm1d(5, affine=False),
        nn.Flatten(),
        nn.Linear(30, 7),
        nn.BatchNorm1d(7),
        nn.ReLU(),
    )
    randomize_batchnorms(model, generator)
    fused = fuse(model)
    assert [type(m) for m in fused] == [nn.Conv1d, nn.Identity, nn.Flatten, nn.Linear, nn.Identity, nn.ReLU]
    assert fused[0].bias is not None and model[0].bias is None
    x = torch.randn(4, 2, 8, generator=generator)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-6)


class Branchy(nn.Module):
    """A conv whose output also feeds a skip, a shared conv called twice, BN before conv, ConvTranspose."""

    def __init__(self) -> None:
        super().__init__()
        self.skip_conv, self.skip_bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.shared, self.shared_bn1, self.shared_bn2 = (
            nn.Conv2d(4, 4, 1),
            nn.BatchNorm2d(4),
            nn.BatchNorm2d(4),
        )
        self.pre_bn, self.conv = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)
        self.up, self.up_bn = nn.ConvTranspose2d(4, 4, 2, stride=2), nn.BatchNorm2d(4)
        self.last, self.last_bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip_conv(x)
        x = self.skip_bn(y) + y
        x = self.shared_bn1(self.shared(x)) + self.shared_bn2(self.shared(x))
        x = self.conv(torch.relu(self.pre_bn(x)))
        return self.last_bn(self.last(self.up_bn(self.up(x))))


def test_only_safe_pairs_fold(generator):
    model = randomize_batchnorms(Branchy(), generator)
    assert [(p.layer, p.batchnorm) for p in find_fold_pairs(model)] == [("last", "last_bn")]
    fused = fuse(model)
    x = torch.randn(2, 4, 6, 6, generator=generator)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-5)
    assert isinstance(fused.last_bn, nn.Identity) and isinstance(fused.skip_bn, nn.BatchNorm2d)


class Untraceable(nn.Module):
    """Data-dependent control flow: the whole does not trace, its children do."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 5), nn.BatchNorm1d(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if x.mean() > 0:
            x = x * 2
        return self.head(x)


def test_untraceable_model_is_fused_child_by_child(generator):
    model = randomize_batchnorms(Untraceable(), generator)
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(model)
    pairs = [(p.layer, p.batchnorm) for p in find_fold_pairs(model)]
    assert pairs == [("block.0", "block.1"), ("head.1", "head.2")]
    x = torch.randn(3, 3, 8, 8, generator=generator)
    with torch.no_grad():
        assert torch.allclose(fuse(model)(x), model(x), atol=1e-5)


def test_fuse_refuses_training_mode():
    with pytest.raises(ConfigError, match="eval"):
        fuse(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
