import pytest
import torch
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from cnnkit.layers import ASPP, ASPPPooling


@pytest.mark.parametrize("rates", [(6, 12, 18), (12, 24, 36), (1, 2)])
def test_matches_torchvision_after_loading_its_state_dict(rates):
    torch.manual_seed(0)
    ours = ASPP(16, atrous_rates=rates, out_channels=8).eval()
    theirs = TorchvisionASPP(16, list(rates), out_channels=8).eval()
    for p in theirs.parameters():
        torch.nn.init.normal_(p)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 16, 13, 10)
    torch.testing.assert_close(ours(x), theirs(x))


def test_parameter_count_follows_the_branches():
    c_in, c_out, rates = 16, 8, (6, 12, 18)
    aspp = ASPP(c_in, atrous_rates=rates, out_channels=c_out)
    bn = 2 * c_out
    branches = (c_in * c_out + bn) * 2 + (9 * c_in * c_out + bn) * len(rates)  # 1x1, pooling, 3x3 atrous
    project = (len(rates) + 2) * c_out * c_out + bn
    assert sum(p.numel() for p in aspp.parameters()) == branches + project


def test_atrous_branch_reaches_exactly_rate_pixels_away():
    aspp = ASPP(1, atrous_rates=(3,), out_channels=1).eval()
    conv = aspp.convs[1][0]
    assert conv.dilation == (3, 3) and conv.padding == (3, 3)
    x = torch.zeros(1, 1, 15, 15, requires_grad=True)
    conv(x)[0, 0, 7, 7].backward()
    touched = x.grad[0, 0].nonzero().tolist()
    assert sorted(touched) == sorted([7 + dy, 7 + dx] for dy in (-3, 0, 3) for dx in (-3, 0, 3))


def test_pooling_branch_is_constant_over_the_map():
    pool = ASPPPooling(4, 3).eval()
    y = pool(torch.randn(2, 4, 5, 7))
    assert y.shape == (2, 3, 5, 7)
    torch.testing.assert_close(y, y[:, :, :1, :1].expand_as(y))


def test_output_shape_any_size_and_dropout_in_training():
    aspp = ASPP(8, atrous_rates=(2, 4, 6), out_channels=4, dropout=0.5)
    assert isinstance(aspp.project[3], torch.nn.Dropout) and aspp.project[3].p == 0.5
    for size in [(1, 1), (5, 9), (33, 47)]:
        assert aspp.eval()(torch.randn(2, 8, *size)).shape == (2, 4, *size)
