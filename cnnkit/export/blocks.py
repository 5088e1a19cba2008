"""Inference forms of blocks whose eval-mode function can be computed with fewer passes over memory.

Folding BatchNorms (:mod:`cnnkit.analysis.fuse`) does nothing for a ConvNeXt: it has no BatchNorm, and on a
CPU most of its time outside the matrix products goes to elementwise passes over the activations (the
bias copies of ``addmm``, the layer-scale multiply, the residual add, the layout copy in front of the
LayerNorm). :class:`FoldedConvNeXtBlock` computes the same function as
:class:`cnnkit.layers.ConvNeXtBlock` in eval mode with three of those passes fewer per block.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.layers.convnext_block import ConvNeXtBlock


class FoldedConvNeXtBlock(nn.Module):
    """:class:`~cnnkit.layers.ConvNeXtBlock` in eval mode, computed with fewer memory passes.

    With ``LN(t) = g * t_hat + beta`` (``t_hat`` the normalised pixel vector), ``W1, b1`` and ``W2, b2``
    the MLP's Linears and ``gamma`` the layer scale, the block is
    ``y = x + gamma * (W2 GELU(W1 LN(d) + b1) + b2)`` with ``d = dwconv7x7(x)``. The affine maps fold
    into the Linears (exact algebra, float rounding aside)::

        W1' = W1 diag(g)          b1' = W1 beta + b1
        W2' = diag(gamma) W2      b2' = gamma * b2

    and the pixel rows are computed as matrix products without bias copies: ``b1'`` is an extra column
    of ``W1'`` against a constant-one channel appended to ``t_hat``, and ``(x + b2')`` is the
    accumulator that ``addmm_`` adds ``GELU(.) W2'^T`` into. Per block that leaves the depthwise conv,
    the LayerNorm, two matrix products, an in-place GELU and one add, against torchvision's extra
    4C-wide bias copy, layer-scale multiply and residual add. Stochastic depth is the identity in eval
    mode and is dropped.

    Args:
        block: the trained block (copied; it is not modified).

    Shape:
        - Input: ``(N, C, H, W)``, any memory layout
        - Output: ``(N, C, H, W)`` in ``torch.channels_last`` memory (a ``permute`` of an NHWC tensor)
    """

    def __init__(self, block: ConvNeXtBlock) -> None:
        super().__init__()
        dwconv, norm, fc1, fc2 = block.block[0], block.block[2], block.block[3], block.block[5]
        self.dwconv = copy.deepcopy(dwconv)
        self.channels = int(norm.normalized_shape[0])
        self.eps = float(norm.eps)
        with torch.no_grad():
            g = norm.weight if norm.weight is not None else torch.ones(self.channels)
            beta = norm.bias if norm.bias is not None else torch.zeros(self.channels)
            b1 = fc1.bias if fc1.bias is not None else torch.zeros(fc1.out_features)
            b2 = fc2.bias if fc2.bias is not None else torch.zeros(fc2.out_features)
            w1 = torch.cat([fc1.weight * g, (fc1.weight @ beta + b1)[:, None]], dim=1)  # (4C, C + 1)
            gamma = block.layer_scale.reshape(-1)
            self.register_buffer("w1", w1.t().contiguous())  # (C + 1, 4C): rows @ w1
            self.register_buffer("w2", (gamma[:, None] * fc2.weight).t().contiguous())  # (4C, C)
            self.register_buffer("b2", (gamma * b2).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size(0), self.channels, x.size(2), x.size(3)
        d = self.dwconv(x).permute(0, 2, 3, 1)  # (N, H, W, C); a view when x is channels_last
        rows = d.new_empty((n, h, w, c + 1))
        rows[..., c] = 1.0
        rows[..., :c] = F.layer_norm(d, (c,), None, None, self.eps)
        hidden = torch.mm(rows.view(-1, c + 1), self.w1)
        torch.ops.aten.gelu_(hidden)
        out = torch.add(x.permute(0, 2, 3, 1), self.b2, out=d.new_empty((n, h, w, c)))
        out.view(-1, c).addmm_(hidden, self.w2)
        return out.permute(0, 3, 1, 2)


INFERENCE_FORMS: dict[type[nn.Module], type[nn.Module]] = {ConvNeXtBlock: FoldedConvNeXtBlock}
"""Block type -> its inference form (constructed from a trained block)."""


def inference_blocks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every block that has an inference form (:data:`INFERENCE_FORMS`) replaced.

    Args:
        model: a module in eval mode (it is not modified).

    Returns:
        The copy; the same object type as ``model`` unless ``model`` itself is such a block. The outputs
        equal ``model``'s in eval mode up to float rounding (tested on a small ConvNeXt in both layouts).
    """
    model = copy.deepcopy(model)
    if type(model) in INFERENCE_FORMS:
        return INFERENCE_FORMS[type(model)](model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            form = INFERENCE_FORMS.get(type(child))
            if form is not None:
                setattr(parent, name, form(child).eval())
    return model
