"""U-Net++: a U-Net whose skips are nested, dense convolution pathways, with deep supervision and pruning.

Zhou, Rahman Siddiquee, Tajbakhsh and Liang, "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018 (arXiv:1807.10165); the reference page's "U-Net ... Variants: U-Net++". Rows ``i``
are the encoder's resolutions (row 0 the finest); ``X^{i,0}`` is the encoder's map of row ``i`` and every
other node is a conv block (a :class:`~cnnkit.tasks.segmentation.unet.DoubleConv`), the paper's eq. 1::

    X^{i,j} = H([X^{i,0}, ..., X^{i,j-1}, U(X^{i+1,j-1})])        for j >= 1 and i + j <= L

``H`` is the conv block, ``U`` an upsampling by the ratio of the two rows' resolutions and ``[.]`` a
concatenation of channels (here the upsampled map comes first, as in :class:`UpBlock`; the order only
permutes the block's weights). With ``L`` nested levels the nodes form a triangle; the top row
``X^{0,1}, ..., X^{0,L}`` are full-resolution maps, each the output of a U-Net of depth ``j`` whose decoder
shares the encoder: ``X^{0,L}`` alone gives the logits (a 1x1 conv), and its plain U-Net skip
``X^{i,0} -> X^{i,L-i}`` is bridged by ``L - i - 1`` nodes.

**Deep supervision** (``deep_supervision=True``; the paper's section 2): a 1x1 head on each of
``X^{0,1}, ..., X^{0,L}``. In training mode the model returns the list of their ``L`` logits (shallowest
first) and the loss is the average of the heads' losses: ``criterion`` receives a ``list``, which it tells
from the ``(logits, aux_logits)`` pair of models with ``aux_loss``. In eval mode the model returns one
tensor, the logits of the deepest head (``X^{0,L}``) or of ``X^{0,prune}``; :meth:`UNetPlusPlus.forward_heads`
returns all of them in any mode (the paper's "accurate mode" averages them).

**Pruning** (``prune=k``, the paper's "fast mode", eval only): the logits come from the head at ``X^{0,k}``,
which depends only on the nodes ``X^{i,j}`` with ``i + j <= k``; the others and, in the classic form, the
encoder rows below ``k`` are not computed. Training always runs the whole network, so a model trained with
deep supervision can answer at any ``k`` (``model.prune = k``, no new weights); pruning needs the heads of
deep supervision.

**Forms.** Without ``backbone`` the encoder is the classic U-Net's (``base_channels * 2**i`` channels on row
``i``, ``depth`` poolings, ``L = depth``). With ``backbone=`` a registered classifier's stages are the rows
(through the feature contract, as :class:`~cnnkit.tasks.segmentation.unet.BackboneUNet`); when its finest
stage is still downsampled (reduction 2 for a ResNet) a full-resolution row 0 is added whose ``X^{0,0}``
is the input image (``input_skip=True``) or nothing, so ``L`` is the number of stages.

**The full-resolution row of a backbone** (``full_resolution=``). ``"nested"`` (the default) nests over the
added row like over any other: ``L`` nodes at full resolution, where the nodes see the most pixels.
``"block"`` nests over the backbone's stages only (rows ``1..L``, the paper's grid with the encoder's first
stage as its top row) and ends in one conv block ``X^{0,L} = H([U(X^{1,L-1}), X^{0,0}])``: the layout of
segmentation_models_pytorch's ``UnetPlusPlus``. It runs one node at full resolution instead of ``L``; with
deep supervision the heads of levels ``k < L`` sit on ``X^{1,k}`` and their logits are upsampled bilinearly
by the first stage's reduction, so a pruned model answers from that coarser row. Odd input sizes are
zero-padded at the bottom and right to a multiple of the total stride and the logits cropped back, as the
U-Net does; sizes are then exact multiples from row to row, so every upsampling is by a fixed integer
scale and torch.fx traces the model (``cnnkit summary``, fusion and ONNX export work).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.errors import ConfigError, did_you_mean
from cnnkit.models.registry import register_model
from cnnkit.tasks.segmentation.backbone import build_backbone, pad_to_multiple
from cnnkit.tasks.segmentation.unet import (
    DoubleConv,
    Init,
    UpBlock,
    Upsample,
    classifier_head,
    decoder_widths,
    init_weights,
    score_stage_indices,
)

FullResolution = Literal["nested", "block"]


@dataclass(frozen=True)
class Rows:
    """The resolutions of a U-Net-family encoder, finest first (row ``i`` of the paper's ``X^{i,j}``).

    Attributes:
        skip_channels: channels of the encoder map ``X^{i,0}`` of each row; 0 where a row has none (a
            backbone's full-resolution row without ``input_skip``).
        widths: channels of the decoder nodes of each row.
        scales: ``scales[i]`` is the resolution of row ``i`` over that of row ``i + 1`` (one fewer entry).
    """

    skip_channels: tuple[int, ...]
    widths: tuple[int, ...]
    scales: tuple[int, ...]

    def reduction(self, row: int) -> int:
        """Input size over the size of the maps of ``row``."""
        return math.prod(self.scales[:row])


class UNetEncoderBase(nn.Module):
    """The encoder shared by the U-Net family's models, described as :class:`Rows`.

    The classic form (``backbone=None``) has the U-Net's modules ``stem`` and ``down`` (the names of
    :class:`~cnnkit.tasks.segmentation.unet.UNet`'s encoder); the backbone form keeps the registered
    classifier as ``backbone`` (its head removed), so freezing, discriminative learning rates and encoder
    pretraining find it, and its stages in ``feature_info``.

    Args:
        in_chans: input image channels.
        base_channels: classic form: channels of row 0; row ``i`` has ``base_channels * 2**i`` (default 64).
        depth: classic form: number of poolings, the rows below row 0 (default 4).
        backbone: registry name of the encoder's classifier, or ``None`` for the classic form.
        decoder_channels: backbone form: the decoder width of each stage's row, optionally preceded by
            that of the added full-resolution row (see :func:`~cnnkit.tasks.segmentation.unet.decoder_widths`).
            Row 0's nodes run at full resolution and, in U-Net++'s nested layout, take most of its
            multiply-adds, so its width sets the cost.
        input_skip: backbone form: the input image is the encoder map of the full-resolution row.
        **backbone_kwargs: options of the backbone's builder (e.g. ``weights``).

    Raises:
        ConfigError: options of one form given to the other, ``depth < 1``, an unknown option, or a
            backbone whose reductions do not divide each other.
    """

    def __init__(
        self,
        in_chans: int = 3,
        base_channels: int | None = None,
        depth: int | None = None,
        backbone: str | None = None,
        decoder_channels: Sequence[int] | None = None,
        input_skip: bool = True,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if backbone is None:
            if backbone_kwargs or decoder_channels is not None:
                key = next(iter(backbone_kwargs), "decoder_channels")
                accepted = set(inspect.signature(type(self)).parameters) - {"backbone_kwargs"}
                raise ConfigError(
                    f"{name} without a backbone got {key!r}, an option of the backbone form or an unknown "
                    f"one{did_you_mean(key, accepted)}"
                )
            base_channels = 64 if base_channels is None else base_channels
            depth = 4 if depth is None else depth
            if depth < 1:
                raise ConfigError(f"{name} needs depth >= 1, got {depth}")
            widths = tuple(base_channels * 2**i for i in range(depth + 1))
            self.stem = DoubleConv(in_chans, widths[0])
            self.down = nn.ModuleList(
                nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1])) for i in range(depth)
            )
            self.rows = Rows(widths, widths, (2,) * depth)
            self.backbone = None
            self.full_resolution_row = self.input_skip = False
            self.stride = 2**depth
            return
        if base_channels is not None or depth is not None:
            raise ConfigError(
                f"{name} on backbone {backbone!r}: base_channels and depth set the classic encoder; the "
                "backbone's stages are the rows (decoder_channels sets their widths)"
            )
        self.backbone, info = build_backbone(backbone, in_chans, **backbone_kwargs)
        self.feature_info = info
        channels, reductions = info.channels(), info.reduction()
        if any(r_out % r_in for r_in, r_out in zip([1, *reductions], reductions)):
            raise ConfigError(
                f"backbone {backbone!r} has reductions {reductions} that do not divide each other"
            )
        scales = tuple(r_out // r_in for r_in, r_out in zip(reductions, reductions[1:]))
        self.full_resolution_row = reductions[0] > 1
        self.input_skip = bool(input_skip) and self.full_resolution_row
        top_width, widths = decoder_widths(channels, reductions, decoder_channels)
        if self.full_resolution_row:
            skip = in_chans if self.input_skip else 0
            self.rows = Rows((skip, *channels), (top_width, *widths), (reductions[0], *scales))
        else:
            self.rows = Rows(tuple(channels), widths, scales)
        self.stride = max(reductions)

    def pad(self, x: Tensor) -> Tensor:
        """``x`` zero-padded to multiples of the total stride (:func:`pad_to_multiple`).

        Shape:
            - Input: ``(N, C, H, W)``; Output: ``(N, C, ceil(H / s) * s, ceil(W / s) * s)``
        """
        return pad_to_multiple(x, self.stride)

    def score_rows(self, score_stages: Sequence[int]) -> list[int]:
        """The rows of the backbone stages ``score_stages`` (``feature_info`` indices; see
        :func:`~cnnkit.tasks.segmentation.unet.score_stage_indices`), for FCN's score fusion.

        Raises:
            ConfigError: ``score_stages`` in the classic form (they index a backbone's stages), or a stage the
                decoder does not merge.
        """
        if score_stages and self.backbone is None:
            raise ConfigError("score_stages index a backbone's stages: give backbone= or leave it out")
        stages = len(self.feature_info) if self.backbone is not None else 0
        return [stage + int(self.full_resolution_row) for stage in score_stage_indices(score_stages, stages)]

    def encode(self, padded: Tensor, rows: int) -> list[Tensor | None]:
        """The encoder maps ``X^{i,0}`` of the first ``rows`` rows (``None`` for a row without one).

        The classic encoder stops after row ``rows - 1``; a backbone runs all its stages
        (``forward_intermediates`` has no early exit).

        Shape:
            - Input: ``(N, in_chans, H, W)`` padded to the stride
            - Output: ``rows`` maps ``(N, skip_channels[i], H / r_i, W / r_i)``
        """
        if self.backbone is None:
            maps = [self.stem(padded)]
            for down in self.down[: rows - 1]:
                maps.append(down(maps[-1]))
            return maps
        stages = list(self.backbone.forward_intermediates(padded))
        if self.full_resolution_row:
            stages.insert(0, padded if self.input_skip else None)
        return stages[:rows]


class UNetPlusPlus(UNetEncoderBase):
    """U-Net++ (Zhou et al., 2018): nested dense skip pathways, optional deep supervision and pruning.

    ``nodes[f"x{i}_{j}"]`` is the conv block of node ``X^{i,j}`` (see the module docstring): a
    :class:`UpBlock` that upsamples ``X^{i+1,j-1}`` and concatenates ``X^{i,0}, ..., X^{i,j-1}``.
    ``heads[k - 1]`` is the 1x1 classifier on ``X^{0,k}`` (on ``X^{1,k}`` for ``k < L`` with
    ``full_resolution="block"``) with deep supervision; without it ``heads`` holds the one classifier on
    ``X^{0,L}``.

    Args:
        in_chans: input image channels.
        num_classes: output channels (classes, background included).
        base_channels / depth / backbone / decoder_channels / input_skip / **backbone_kwargs: the encoder
            (see :class:`UNetEncoderBase`); ``L`` is ``depth`` or the backbone's number of rows minus one.
        upsample: ``"bilinear"``, ``"nearest"`` or ``"transposed"`` (see :class:`UpBlock`).
        deep_supervision: a head on every ``X^{0,j}``; training mode returns all their logits.
        prune: in eval mode answer from the head at ``X^{0,prune}`` (``1 <= prune <= L``), computing only
            the nodes it needs; needs ``deep_supervision``. ``None``: the deepest head. It may be changed on a
            built model (``model.prune = 2``): the weights do not depend on it.
        score_stages: backbone form: ``feature_info`` indices of stages whose row's last node ``X^{r,L-r}``
            (the decoder map of the plain U-Net path) also gets a 1x1 classifier, upsampled bilinearly and
            added to the deepest head's logits (FCN's score fusion, as
            :class:`~cnnkit.tasks.segmentation.unet.BackboneUNet`): the class of a region reaches the output
            from a coarse map instead of only through the full-resolution row. A pruned model (``prune < L``)
            answers from its head alone.
        full_resolution: backbone form with a downsampled first stage: ``"nested"`` (nodes ``X^{0,1..L}`` at
            full resolution) or ``"block"`` (nesting over the stages' rows, then one full-resolution block;
            segmentation_models_pytorch's layout; see the module docstring).
        init: initialisation of the layers outside the backbone, ``"he"`` or ``"pytorch"`` (see
            :func:`~cnnkit.tasks.segmentation.unet.init_weights`).
        head_kernel: kernel of the heads on ``X^{0,j}``, 1 (the paper's) or 3 (segmentation_models_pytorch's);
            the score heads stay 1x1 (see :func:`~cnnkit.tasks.segmentation.unet.classifier_head`).

    Shape:
        - Input: ``(N, in_chans, H, W)``, any ``H, W >= 1`` (padded internally to a multiple of the stride)
        - Output: ``(N, num_classes, H, W)`` logits; in training mode with ``deep_supervision`` a list of
          ``L`` of them (heads at ``X^{0,1}``, ..., ``X^{0,L}``)

    Raises:
        ConfigError: a ``prune`` level out of range or without ``deep_supervision``, ``score_stages`` in the
            classic form or naming a stage the decoder does not merge, ``full_resolution="block"`` without a
            downsampled first stage, or an encoder option error (see :class:`UNetEncoderBase`).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 2,
        base_channels: int | None = None,
        depth: int | None = None,
        upsample: Upsample = "bilinear",
        deep_supervision: bool = False,
        prune: int | None = None,
        backbone: str | None = None,
        decoder_channels: Sequence[int] | None = None,
        input_skip: bool = True,
        score_stages: Sequence[int] = (),
        full_resolution: FullResolution = "nested",
        init: Init = "pytorch",
        head_kernel: int = 1,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__(
            in_chans, base_channels, depth, backbone, decoder_channels, input_skip, **backbone_kwargs
        )
        if full_resolution not in ("nested", "block"):
            raise ConfigError(f"full_resolution must be 'nested' or 'block', got {full_resolution!r}")
        if full_resolution == "block" and not self.full_resolution_row:
            raise ConfigError(
                "full_resolution='block' needs a backbone whose first stage is downsampled (a ResNet's, "
                "a MobileNet's): the classic encoder and full-resolution stages nest over every row"
            )
        self.full_resolution = full_resolution
        skip, widths, scales = self.rows.skip_channels, self.rows.widths, self.rows.scales
        self.levels = levels = len(skip) - 1
        top = self.top
        nodes = {}
        for j in range(1, levels + 1):
            for i in range(top, levels + 1 - j):
                below = skip[i + 1] if j == 1 else widths[i + 1]
                nodes[f"x{i}_{j}"] = UpBlock(
                    below, skip[i] + (j - 1) * widths[i], widths[i], scales[i], upsample
                )
        if top:
            below = skip[1] if levels == 1 else widths[1]
            nodes[f"x0_{levels}"] = UpBlock(below, skip[0], widths[0], scales[0], upsample)
        self.nodes = nn.ModuleDict(nodes)
        self.deep_supervision = bool(deep_supervision)
        levels_with_heads = range(1, levels + 1) if self.deep_supervision else [levels]
        self.heads = nn.ModuleList(
            classifier_head(widths[self.head_node(k)[0]], num_classes, head_kernel) for k in levels_with_heads
        )
        # FCN's score fusion on the deepest head: a 1x1 classifier on the last node X^{r,L-r} of row r
        self.score_heads = nn.ModuleDict(
            {str(row): nn.Conv2d(widths[row], num_classes, 1) for row in self.score_rows(score_stages)}
        )
        self.num_classes = num_classes
        self.prune = prune
        init_weights(self, init)

    @property
    def top(self) -> int:
        """The first nested row: 1 when the full-resolution row is one block after the grid, else 0."""
        return int(self.full_resolution == "block")

    @property
    def prune(self) -> int | None:
        """The head level ``k`` that answers in eval mode (``None``: ``L``)."""
        return self._prune

    @prune.setter
    def prune(self, level: int | None) -> None:
        if level is not None:
            if not self.deep_supervision:
                raise ConfigError(
                    "prune needs deep_supervision=True: only then is there a trained head on each X^{0,k}"
                )
            if not 1 <= level <= self.levels:
                raise ConfigError(
                    f"prune must be between 1 and {self.levels} (the nested levels), got {level}"
                )
        self._prune = level

    def head_node(self, level: int) -> tuple[int, int]:
        """The node ``(i, j)`` whose head answers at pruning level ``level``: ``X^{0,level}``, or ``X^{1,level}``
        for ``level < L`` when the full-resolution row is one block."""
        return (1, level) if self.top and level < self.levels else (0, level)

    def grid(self, padded: Tensor, level: int) -> dict[tuple[int, int], Tensor | None]:
        """The nodes that the head of ``level`` needs, by ``(i, j)``: those with ``i + j <= r`` (eq. 1 of the
        paper, column by column), ``r`` the sum of :meth:`head_node`'s indices; ``X^{i,0}`` are the encoder
        maps (``None`` for a row without one). With ``full_resolution="block"`` the nested rows start at 1
        and row 0 has the one block ``X^{0,L}``, computed only for ``level == L``.

        Shape:
            - Input: ``(N, in_chans, H, W)`` padded to the stride
            - Output: ``X^{i,j}`` of shape ``(N, widths[i], H / r_i, W / r_i)`` for ``j >= 1``
        """
        reach = sum(self.head_node(level))
        grid = {(i, 0): x for i, x in enumerate(self.encode(padded, reach + 1))}
        for j in range(1, reach + 1):
            for i in range(self.top, reach + 1 - j):
                same_row = [grid[i, k] for k in range(j) if grid[i, k] is not None]
                grid[i, j] = self.nodes[f"x{i}_{j}"](grid[i + 1, j - 1], same_row)
        if self.top and level == self.levels:
            image = [] if grid[0, 0] is None else [grid[0, 0]]
            grid[0, level] = self.nodes[f"x0_{level}"](grid[1, level - 1], image)
        return grid

    def from_row(self, row: int, scores: Tensor) -> Tensor:
        """Class scores of a map of ``row`` upsampled bilinearly by the row's reduction to the padded input.

        Shape:
            - Input: ``(N, num_classes, H / r, W / r)``, ``r`` the reduction of ``row``
            - Output: ``(N, num_classes, H, W)``
        """
        return F.interpolate(
            scores, scale_factor=self.rows.reduction(row), mode="bilinear", align_corners=False
        )

    def head_logits(self, level: int, grid: dict[tuple[int, int], Tensor | None]) -> Tensor:
        """The logits of the head of ``level`` on the padded input: its classifier on :meth:`head_node`,
        upsampled bilinearly to full resolution from a coarser row, plus the score heads' maps at ``L``.

        Shape:
            - Input: :meth:`grid` of ``level``, or of ``L`` (every node)
            - Output: ``(N, num_classes, H, W)`` of the padded input
        """
        row, column = self.head_node(level)
        head = self.heads[level - 1] if self.deep_supervision else self.heads[0]
        logits = head(grid[row, column])
        if row:
            logits = self.from_row(row, logits)
        return self.fused(logits, grid) if level == self.levels else logits

    def fused(self, logits: Tensor, grid: dict[tuple[int, int], Tensor | None]) -> Tensor:
        """The deepest head's logits plus the score heads' maps, each from the last node ``X^{r,L-r}`` of its
        row and upsampled bilinearly by the row's reduction (FCN's score fusion).

        Shape:
            - Input: ``logits (N, num_classes, H, W)`` of the padded input; ``grid`` of the whole network
            - Output: ``(N, num_classes, H, W)``
        """
        for key, head in self.score_heads.items():
            row = int(key)
            scores = head(grid[row, self.levels - row])
            logits = logits + self.from_row(row, scores)
        return logits

    def forward_heads(self, x: Tensor) -> list[Tensor]:
        """The logits of every deep-supervision head, at ``X^{0,1}``, ..., ``X^{0,L}``, in any mode.

        Raises:
            ConfigError: the model has no deep supervision (one head only).

        Shape:
            - Input: ``(N, in_chans, H, W)``; Output: ``L`` tensors ``(N, num_classes, H, W)``
        """
        if not self.deep_supervision:
            raise ConfigError("forward_heads needs deep_supervision=True (a head on every X^{0,j})")
        height, width = x.shape[-2:]
        grid = self.grid(self.pad(x), self.levels)
        return [self.head_logits(k, grid)[..., :height, :width] for k in range(1, self.levels + 1)]

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.training and self.deep_supervision:
            return self.forward_heads(x)
        level = self.levels if self.training or self.prune is None else self.prune
        height, width = x.shape[-2:]
        grid = self.grid(self.pad(x), level)
        return self.head_logits(level, grid)[..., :height, :width]


@register_model(
    task="segmentation",
    input_size=(3, 256, 256),
    paper="Zhou et al., 2018, UNet++: A Nested U-Net Architecture for Medical Image Segmentation",
)
def unetplusplus(
    num_classes: int = 2, backbone: str | None = None, in_chans: int = 3, **kwargs: Any
) -> UNetPlusPlus:
    """U-Net++ (:class:`UNetPlusPlus`): the classic encoder without ``backbone``, else that registered
    classifier's stages.

    Args:
        num_classes: output channels, background included.
        backbone: registered classifier of the encoder, or ``None`` for the classic U-Net encoder.
        in_chans: image channels.
        **kwargs: options of :class:`UNetPlusPlus` and, with a backbone, of its builder (``weights=``).
    """
    return UNetPlusPlus(in_chans=in_chans, num_classes=num_classes, backbone=backbone, **kwargs)
