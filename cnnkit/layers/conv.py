"""Convolution building blocks: conv + norm + activation, and depthwise-separable convolution."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnkit.geometry import same_padding

NormFactory = Callable[[int], nn.Module]
ActFactory = Callable[..., nn.Module]


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation``, with "same" padding by default.

    The children are numbered ``0`` (conv), ``1`` (norm), ``2`` (activation) like torchvision's
    ``Conv2dNormActivation``, so ``state_dict`` keys match torchvision models built from it.

    Args:
        in_channels / out_channels: channels in and out.
        kernel_size: square kernel size ``k``.
        stride: stride ``s``.
        padding: ``None`` for ``geometry.same_padding(k, d)``, else an int.
        groups: convolution groups (``in_channels`` for depthwise).
        dilation: dilation ``d``.
        norm_layer: factory called with ``out_channels`` (default ``BatchNorm2d``); ``None`` for no norm.
        act_layer: activation class (default ``ReLU``); ``None`` for no activation.
        inplace: passed to activations that accept it.
        bias: conv bias; default ``True`` only when there is no norm.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, H_out, W_out)``, ``H_out = floor((H + 2p - d(k-1) - 1) / s) + 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: NormFactory | None = nn.BatchNorm2d,
        act_layer: ActFactory | None = nn.ReLU,
        inplace: bool = True,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer(inplace=inplace) if _accepts_inplace(act_layer) else act_layer())
        super().__init__(*layers)
        self.out_channels = out_channels


def _accepts_inplace(act_layer: ActFactory) -> bool:
    return act_layer in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU)


class DepthwiseSeparableConv(nn.Module):
    """Depthwise ``k x k`` conv (one filter per channel) then pointwise ``1 x 1`` conv, each with norm/act.

    The factorisation of the reference page ("Depthwise Separable Convolutions", MobileNet v1):
    ``C_in * k^2`` depthwise weights plus ``C_in * C_out`` pointwise weights instead of
    ``C_in * C_out * k^2`` (see ``geometry.depthwise_separable_params``).

    Args:
        in_channels / out_channels: channels in and out.
        kernel_size: depthwise kernel ``k``.
        stride: stride of the depthwise conv.
        dilation: dilation of the depthwise conv.
        norm_layer / act_layer: as in :class:`ConvNormAct`; ``None`` for a plain conv pair.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, H_out, W_out)`` with the depthwise conv's ``H_out``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        norm_layer: NormFactory | None = nn.BatchNorm2d,
        act_layer: ActFactory | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.dw = ConvNormAct(
            in_channels,
            in_channels,
            kernel_size,
            stride,
            groups=in_channels,
            dilation=dilation,
            norm_layer=norm_layer,
            act_layer=act_layer,
        )
        self.pw = ConvNormAct(in_channels, out_channels, 1, norm_layer=norm_layer, act_layer=act_layer)

    def forward(self, x):
        return self.pw(self.dw(x))
