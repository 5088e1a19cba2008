"""Finding the fold pairs traces the network on proxies; a module that caches a value at its first call
must not keep a proxy from that trace (torchvision's MultiScaleRoIAlign does this in Faster R-CNN)."""

import torch
from torch import nn

from cnnkit.export import find_fold_pairs, fuse


class CachesAtFirstCall(nn.Module):
    """Stores the input width at its first call, as MultiScaleRoIAlign stores its scales."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.width = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.width is None:
            self.width = x.shape[-1]
        return self.bn(self.conv(x)) / self.width


def test_tracing_leaves_no_proxy_in_the_model_or_its_fused_copy():
    model = CachesAtFirstCall().eval()
    model.bn.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert [(p.layer, p.batchnorm) for p in find_fold_pairs(model)] == [("conv", "bn")]
    assert model.width is None  # the model itself was not traced
    fused = fuse(model)
    assert fused.width is None and isinstance(fused.bn, nn.Identity)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(fused(x), expected, atol=1e-6)
    assert fused.width == model.width == 8
