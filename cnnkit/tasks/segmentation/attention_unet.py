"""Attention U-Net: a U-Net whose skip connections pass through additive attention gates.

Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018 (arXiv:1804.03999); the
reference page's "U-Net ... Variants: Attention U-Net". Before the decoder concatenates the skip ``x`` of a
row, a gate scales it per pixel by a coefficient computed from ``x`` and the gating signal ``g``, the
coarser decoder map about to be upsampled (the paper's eq. 1-2, additive attention after Bahdanau et al.)::

    q     = psi^T ReLU(W_x^T x + W_g^T g + b_g) + b_psi       at g's resolution
    alpha = resample(sigmoid(q))                               bilinear, to x's size; in [0, 1]
    x_hat = alpha * x                                          what the decoder concatenates

``W_g`` is a 1x1 conv (with bias ``b_g``), ``psi`` a 1x1 conv to one channel (bias ``b_psi``). ``W_x`` is
linear and bias-free; it also brings ``x`` to ``g``'s grid, which is ``scale`` (2 in the classic U-Net) times
coarser: the authors' code does this with a convolution of kernel = stride = ``scale``, used here, so each
coefficient sees every skip pixel of its cell (a 1x1 conv with that stride would see one pixel in
``scale**2``). The intermediate width is ``max(C_x // 2, 1)``, the authors' choice. Pixels whose
coefficient is near 0 contribute nothing through the skip; the gate learns which regions the fine features
matter for, and its maps show where the model looks.

The latest forward pass's coefficient maps are kept in ``model.attention_maps`` (detached), one per gate
from the deepest skip to the finest, each ``(N, 1, H_i, W_i)`` at its skip's size (the input padded to the
stride, like the skips): ``cnnkit predict --attention`` can draw them over the image.

Both forms of :class:`~cnnkit.tasks.segmentation.unetplusplus.UNetEncoderBase`: the classic U-Net encoder
(the decoder then has the names and widths of :class:`~cnnkit.tasks.segmentation.unet.UNet`'s, so a U-Net
checkpoint loads with ``strict=False``, only the gates missing) or any registered classifier through
``backbone=``, with the full-resolution row the input image and FCN-style ``score_stages`` as
:class:`~cnnkit.tasks.segmentation.unet.BackboneUNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.errors import ConfigError
from cnnkit.models.registry import register_model
from cnnkit.tasks.segmentation.unet import Init, UpBlock, Upsample, classifier_head, init_weights
from cnnkit.tasks.segmentation.unetplusplus import UNetEncoderBase


class AttentionGate(nn.Module):
    """The additive attention gate of Oktay et al. (2018), eq. 1-2: per-pixel coefficients for a skip.

    Args:
        skip_channels: channels ``C_x`` of the skip ``x``.
        gating_channels: channels ``C_g`` of the gating signal ``g``.
        inter_channels: width ``F_int`` of ``W_x x + W_g g`` (default ``max(C_x // 2, 1)``).
        scale: ``x``'s resolution over ``g``'s; ``W_x`` has kernel = stride = ``scale``.

    Returns (forward):
        ``(alpha * x, alpha)``: the gated skip and the coefficients.

    Shape:
        - Input: ``x (N, C_x, H, W)``, ``g (N, C_g, H / scale, W / scale)``
        - Output: ``(N, C_x, H, W)`` and ``alpha (N, 1, H, W)`` in ``[0, 1]``
    """

    def __init__(
        self, skip_channels: int, gating_channels: int, inter_channels: int | None = None, scale: int = 2
    ) -> None:
        super().__init__()
        inter_channels = max(skip_channels // 2, 1) if inter_channels is None else inter_channels
        self.w_x = nn.Conv2d(skip_channels, inter_channels, scale, stride=scale, bias=False)
        self.w_g = nn.Conv2d(gating_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)
        self.scale = scale

    def forward(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + self.w_g(g))))
        if self.scale > 1:
            alpha = F.interpolate(alpha, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return x * alpha, alpha


class AttentionUNet(UNetEncoderBase):
    """Attention U-Net (Oktay et al., 2018): a U-Net with an :class:`AttentionGate` on every skip.

    ``up[k]`` is the decoder block of the ``k``-th row from the bottom (as :class:`UNet`'s), ``gates[str(k)]``
    the gate of its skip, gated by the block's coarse input; rows without an encoder map (a backbone's
    full-resolution row with ``input_skip=False``) have no gate.

    Args:
        in_chans: input image channels.
        num_classes: output channels (classes, background included).
        base_channels / depth / backbone / decoder_channels / input_skip / **backbone_kwargs: the encoder
            (see :class:`~cnnkit.tasks.segmentation.unetplusplus.UNetEncoderBase`).
        upsample: ``"bilinear"``, ``"nearest"`` or ``"transposed"`` (see :class:`UpBlock`).
        score_stages: backbone form: ``feature_info`` indices of stages whose decoder map also gets a 1x1
            classifier, upsampled bilinearly and added to the logits (FCN's score fusion, as
            :class:`~cnnkit.tasks.segmentation.unet.BackboneUNet`).
        init: initialisation of the layers outside the backbone, ``"he"`` or ``"pytorch"`` (see
            :func:`~cnnkit.tasks.segmentation.unet.init_weights`).
        head_kernel: kernel of the final classifier, 1 (the paper's) or 3 (segmentation_models_pytorch's);
            the score heads stay 1x1 (see :func:`~cnnkit.tasks.segmentation.unet.classifier_head`).

    Attributes:
        attention_maps: the coefficients of the latest forward pass, detached, deepest gate first; each
            ``(N, 1, H_i, W_i)`` at its skip's (padded) size.

    Shape:
        - Input: ``(N, in_chans, H, W)``, any ``H, W >= 1`` (padded internally to a multiple of the stride)
        - Output: ``(N, num_classes, H, W)`` logits

    Raises:
        ConfigError: ``score_stages`` without a backbone or naming a stage the decoder does not merge, or an
            encoder option error.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 2,
        base_channels: int | None = None,
        depth: int | None = None,
        upsample: Upsample = "bilinear",
        backbone: str | None = None,
        decoder_channels: Sequence[int] | None = None,
        input_skip: bool = True,
        score_stages: Sequence[int] = (),
        init: Init = "pytorch",
        head_kernel: int = 1,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__(
            in_chans, base_channels, depth, backbone, decoder_channels, input_skip, **backbone_kwargs
        )
        skip, widths, scales = self.rows.skip_channels, self.rows.widths, self.rows.scales
        up, gates = [], {}
        for k, i in enumerate(reversed(range(len(skip) - 1))):
            coarse = skip[i + 1] if k == 0 else widths[i + 1]
            up.append(UpBlock(coarse, skip[i], widths[i], scales[i], upsample))
            if skip[i]:
                gates[str(k)] = AttentionGate(skip[i], coarse, scale=scales[i])
        self.up = nn.ModuleList(up)
        self.gates = nn.ModuleDict(gates)
        self.head = classifier_head(widths[0], num_classes, head_kernel)
        # keyed by the decoder step ``k`` that ends on the row (row ``len(skip) - 2 - k``)
        self.score_heads = nn.ModuleDict(
            {
                str(len(skip) - 2 - row): nn.Conv2d(widths[row], num_classes, 1)
                for row in self.score_rows(score_stages)
            }
        )
        self.num_classes = num_classes
        self.attention_maps: list[Tensor] = []
        self._input_size = (0, 0)
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        maps = self.encode(self.pad(x), len(self.rows.skip_channels))
        y = maps.pop()
        alphas, scores = [], []
        for k, block in enumerate(self.up):
            skip = maps.pop()
            if str(k) in self.gates:
                skip, alpha = self.gates[str(k)](skip, y)
                alphas.append(alpha)
            y = block(y, [] if skip is None else [skip])
            if str(k) in self.score_heads:
                scale = self.rows.reduction(len(self.up) - 1 - k)
                scores.append(
                    F.interpolate(
                        self.score_heads[str(k)](y), scale_factor=scale, mode="bilinear", align_corners=False
                    )
                )
        logits = self.head(y)
        for coarse in scores:
            logits = logits + coarse
        # under torch.fx tracing the coefficients are Proxies, not values, and under torch.jit tracing (ONNX
        # export) the sizes are traced tensors: there is nothing to keep
        if not torch.jit.is_tracing() and all(isinstance(alpha, Tensor) for alpha in alphas):
            self.attention_maps = [alpha.detach() for alpha in alphas]
            self._input_size = (int(height), int(width))
        return logits[..., :height, :width]

    def attention_at_input(self) -> list[Tensor]:
        """The latest forward pass's coefficient maps over its input: each gate's map upsampled
        (bilinearly) to the padded input and cropped to the input's size, deepest gate first.

        Shape:
            - Output: one ``(N, 1, H, W)`` map per gate, values in ``[0, 1]``, for an input ``(N, C, H, W)``

        Raises:
            ConfigError: no forward pass yet.
        """
        if not self.attention_maps:
            raise ConfigError("attention_at_input needs a forward pass first")
        height, width = self._input_size
        padded = (height + -height % self.stride, width + -width % self.stride)
        return [
            F.interpolate(alpha, size=padded, mode="bilinear", align_corners=False)[..., :height, :width]
            for alpha in self.attention_maps
        ]


@register_model(
    task="segmentation",
    input_size=(3, 256, 256),
    paper="Oktay et al., 2018, Attention U-Net: Learning Where to Look for the Pancreas",
)
def attention_unet(
    num_classes: int = 2, backbone: str | None = None, in_chans: int = 3, **kwargs: Any
) -> AttentionUNet:
    """Attention U-Net (:class:`AttentionUNet`): the classic encoder without ``backbone``, else that
    registered classifier's stages.

    Args:
        num_classes: output channels, background included.
        backbone: registered classifier of the encoder, or ``None`` for the classic U-Net encoder.
        in_chans: image channels.
        **kwargs: options of :class:`AttentionUNet` and, with a backbone, of its builder (``weights=``).
    """
    return AttentionUNet(in_chans=in_chans, num_classes=num_classes, backbone=backbone, **kwargs)
