"""U-Net: an encoder-decoder whose decoder concatenates the encoder's maps at every scale.

Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015
(arXiv:1505.04597); the reference page's "Semantic Segmentation" section::

    encoder: double 3x3 conv (C) -> [2x2 max pool -> double 3x3 conv (2C, 4C, ...)] x depth     (context)
    decoder: [upsample x2 -> concat the encoder map of that scale -> double 3x3 conv] x depth    (localization)
    head:    1x1 conv to num_classes (``head_kernel`` makes it k x k, as segmentation_models_pytorch's 3x3)

Differences from the paper, as in most modern U-Nets: the 3x3 convolutions are padded ("same"), so maps of
one scale have one size and no cropping of skips is needed, and each conv is followed by BatchNorm (Ioffe and
Szegedy, 2015) before its ReLU. Upsampling is bilinear (followed by the double conv) or a transposed
convolution with kernel = stride = 2 (the paper's "up-convolution"), chosen with ``upsample``.

Odd input sizes: the input is zero-padded at the bottom and right to a multiple of the total stride
(``2**depth``, or the backbone's largest reduction), so every pooling halves exactly and every upsampled
map meets its skip at the same size; the logits are cropped back to the input's ``H x W``. On normalized
inputs zero is the mean colour, and the padded pixels never reach the loss.

:class:`BackboneUNet` replaces the encoder with any registered classifier through the feature contract
(``forward_intermediates`` and ``feature_info``); the decoder's widths follow the encoder's channels.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.errors import ConfigError, did_you_mean
from cnnkit.layers.conv import ConvNormAct
from cnnkit.models.registry import register_model
from cnnkit.tasks.segmentation.backbone import build_backbone, pad_to_multiple
from cnnkit.tasks.segmentation.fcn import aux_head, with_aux

Upsample = Literal["bilinear", "nearest", "transposed"]
Init = Literal["he", "pytorch"]
INITS: tuple[str, ...] = get_args(Init)


class DoubleConv(nn.Sequential):
    """Two ``3x3 conv -> BN -> ReLU``: the unit of every U-Net level.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, out_channels, H, W)``
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3), ConvNormAct(out_channels, out_channels, 3)
        )


def he_init(model: nn.Module) -> None:
    """Initialise a U-Net-family model's own layers as the U-Net paper prescribes; a backbone keeps its own.

    Ronneberger et al. (2015), section 3, ask for feature maps of about unit variance, reached by "drawing the
    initial weights from a Gaussian distribution with a standard deviation of sqrt(2/N), where N denotes the
    number of incoming nodes of one neuron" (He et al., 2015). So every convolution outside ``model.backbone``
    draws ``w ~ N(0, 2 / fan_in)``, ``fan_in = C_in * k_h * k_w``, with a zero bias; BatchNorm starts at
    weight 1, bias 0. segmentation_models_pytorch initialises its decoders to the same variance
    (Kaiming-uniform, ``fan_in``). PyTorch's default for a convolution, ``U(-1/sqrt(fan_in),
    1/sqrt(fan_in))``, has a standard deviation 2.45x smaller; under BatchNorm the forward pass does not see
    the scale, but Adam's steps are then that much larger relative to the weights. On MNIST-Seg, a ResNet-18
    U-Net trained for 5 minutes as in ``benchmarks/segmentation_peers.py --seeds 3``, with smp's He-variance
    initialisation and 3x3 head, reached a held-out mIoU above the default-initialised one's at every seed
    (0.184 +- 0.016 against 0.151 +- 0.021; docs/benchmarks.md); He's initialisation alone did not (see
    :func:`init_weights`, which makes it an option, ``init="he"``).

    Args:
        model: a U-Net-family model; its ``backbone`` submodule, if any, is left as built.
    """
    for name, module in model.named_modules():
        if name == "backbone" or name.startswith("backbone."):
            continue
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def classifier_head(in_channels: int, num_classes: int, kernel: int = 1) -> nn.Conv2d:
    """The per-pixel classifier that ends a U-Net-family decoder: a ``kernel x kernel`` convolution, padded.

    The U-Net paper ends in a 1x1 convolution (``kernel=1``); segmentation_models_pytorch's heads are 3x3,
    which lets each pixel's class see its 3x3 neighbourhood of the last decoder map.

    Shape:
        - Input: ``(N, in_channels, H, W)``
        - Output: ``(N, num_classes, H, W)``

    Raises:
        ConfigError: ``kernel`` is not a positive odd integer (an even kernel cannot keep ``H x W``).
    """
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"head_kernel must be a positive odd integer (1, 3, 5, ...), got {kernel!r}")
    return nn.Conv2d(in_channels, num_classes, kernel, padding=kernel // 2)


def init_weights(model: nn.Module, init: str) -> None:
    """Initialise a U-Net-family model's own layers (outside ``model.backbone``) as ``init`` names.

    ``"pytorch"`` (the default): the layers keep PyTorch's defaults as built (a convolution's weight
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``). ``"he"``: :func:`he_init`, the U-Net paper's ``N(0, 2 /
    fan_in)``, a 2.45x larger standard deviation. Measured on MNIST-Seg, the paper's initialisation did not
    pay: with a pretrained MobileNetV3 encoder and 15 epochs it ended lower in all three recipe runs (U-Net
    0.904 against 0.915, Attention U-Net 0.895 against 0.911, U-Net++ on 10 epochs 0.873 against 0.876), and
    on a ResNet-18 U-Net trained for 5 minutes beside smp's (``benchmarks/segmentation_peers.py --seeds 3``)
    it left the gap to smp where it was (mean -0.061 with it, -0.056 without; docs/segmentation.md).

    Raises:
        ConfigError: an unknown ``init``.
    """
    if init not in INITS:
        raise ConfigError(
            f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}{did_you_mean(str(init), INITS)}"
        )
    if init == "he":
        he_init(model)


class UpBlock(nn.Module):
    """Upsample by the integer ``scale``, concatenate the skips of the target size, then a
    :class:`DoubleConv`: the decoder unit of the U-Net family.

    The input of a U-Net-family model is zero-padded to a multiple of its total stride
    (:func:`~cnnkit.tasks.segmentation.backbone.pad_to_multiple`), so every map is an exact multiple of the
    next coarser one and the upsampling never compares sizes (a data-dependent branch ``torch.fx`` cannot
    trace).

    Args:
        in_channels: channels of the coarse map.
        skip_channels: total channels of the skips (0 for none).
        out_channels: channels out.
        scale: integer ratio between the skips' resolution and the coarse map's.
        upsample: ``"bilinear"`` or ``"nearest"`` (interpolate by ``scale``, keeping ``in_channels``;
            nearest is segmentation_models_pytorch's default and cheaper to train on a CPU) or
            ``"transposed"`` (``ConvTranspose2d`` with kernel = stride = ``scale`` to ``out_channels``).

    Shape:
        - Input: ``x (N, in_channels, h, w)``, ``skips``: maps ``(N, C_k, h * scale, w * scale)`` with
          ``sum(C_k) = skip_channels``
        - Output: ``(N, out_channels, h * scale, w * scale)``
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        scale: int = 2,
        upsample: Upsample = "bilinear",
    ) -> None:
        super().__init__()
        if upsample not in ("bilinear", "nearest", "transposed"):
            raise ConfigError(f"upsample must be 'bilinear', 'nearest' or 'transposed', got {upsample!r}")
        self.scale, self.mode = scale, upsample
        self.up = (
            nn.ConvTranspose2d(in_channels, out_channels, scale, stride=scale)
            if upsample == "transposed"
            else None
        )
        up_channels = out_channels if self.up is not None else in_channels
        self.conv = DoubleConv(up_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skips: Sequence[Tensor] = ()) -> Tensor:
        if self.up is not None:
            x = self.up(x)
        elif self.scale > 1:
            align = False if self.mode == "bilinear" else None
            x = F.interpolate(x, scale_factor=self.scale, mode=self.mode, align_corners=align)
        return self.conv(torch.cat([x, *skips], dim=1) if skips else x)


class UNet(nn.Module):
    """The classic U-Net (Ronneberger et al., 2015) with padded convolutions and BatchNorm.

    Args:
        in_chans: input image channels.
        num_classes: output channels (classes, background included).
        base_channels: channels of the first level; level ``i`` has ``base_channels * 2**i`` (64 in the paper).
        depth: number of poolings (4 in the paper); the total stride is ``2**depth``.
        upsample: ``"bilinear"``, ``"nearest"`` or ``"transposed"`` (see :class:`UpBlock`).
        init: ``"he"`` (the paper's) or ``"pytorch"`` (see :func:`init_weights`).
        head_kernel: kernel of the final classifier, 1 (the paper's) or 3, 5, ... (see
            :func:`classifier_head`).

    Shape:
        - Input: ``(N, in_chans, H, W)``, any ``H, W >= 1`` (padded internally to a multiple of ``2**depth``)
        - Output: ``(N, num_classes, H, W)`` logits
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        upsample: Upsample = "bilinear",
        init: Init = "pytorch",
        head_kernel: int = 1,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"a U-Net needs depth >= 1, got {depth}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_chans, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1])) for i in range(depth)
        )
        self.up = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i], 2, upsample) for i in reversed(range(depth))
        )
        self.head = classifier_head(widths[0], num_classes, head_kernel)
        self.num_classes = num_classes
        self.stride = 2**depth
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        skips = [self.stem(pad_to_multiple(x, self.stride))]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:
            y = up(y, [skips.pop()])
        return self.head(y)[..., :height, :width]


def decoder_widths(
    channels: Sequence[int], reductions: Sequence[int], decoder_channels: Sequence[int] | None
) -> tuple[int, tuple[int, ...]]:
    """The decoder widths of a U-Net on a backbone: of the full-resolution row added when the first stage
    is downsampled, and of each stage's row.

    ``decoder_channels`` has one entry per stage (default: the stages' channels), or one more, first, for
    the full-resolution row (default ``max(channels[0] // 2, 16)``; its blocks run on the most pixels).

    Returns:
        ``(full_resolution_width, stage_widths)``; the first is unused when ``reductions[0] == 1``.

    Raises:
        ConfigError: another number of entries.
    """
    top = max(channels[0] // 2, 16)
    widths = tuple(channels) if decoder_channels is None else tuple(decoder_channels)
    extra = reductions[0] > 1
    if extra and len(widths) == len(channels) + 1:
        top, widths = widths[0], widths[1:]
    if len(widths) != len(channels):
        stages = len(channels)
        rows = f"{stages}, or {stages + 1} with the full-resolution row first" if extra else stages
        raise ConfigError(
            f"decoder_channels needs one entry per backbone stage ({rows}), got {tuple(decoder_channels)}"
        )
    return top, widths


def score_stage_indices(score_stages: Sequence[int], stages: int) -> list[int]:
    """The ``feature_info`` indices (made non-negative) of the stages whose decoder maps get a 1x1 classifier
    in FCN's score fusion (Long et al., 2015): any stage the decoder merges, that is every stage but the
    deepest.

    Args:
        score_stages: indices into the backbone's ``stages`` stages, negative ones counting from the last.
        stages: the backbone's number of stages.

    Raises:
        ConfigError: an index outside the stages, or the deepest stage.
    """
    indices = []
    for stage in score_stages:
        if not -stages <= stage < stages or stage % stages == stages - 1:
            raise ConfigError(
                f"score_stages must index stages the decoder merges (0 to {stages - 2}, or {-stages} to -2), "
                f"got {stage}"
            )
        indices.append(stage % stages)
    return indices


class BackboneUNet(nn.Module):
    """A U-Net whose encoder is a registered classifier: every stage map is a skip for the decoder.

    The decoder walks the stages from the deepest up; the block that merges stage ``i`` outputs
    ``feature_info[i]["num_chs"]`` channels (or ``decoder_channels[i]``). When the first stage is still
    downsampled (reduction 2 for a ResNet or a MobileNet), a last block brings the map to full resolution
    with ``max(num_chs_0 // 2, 16)`` channels (or the first of ``decoder_channels``) before the 1x1 classifier; with ``input_skip`` (the default)
    it concatenates the input image there, the full-resolution skip the classic U-Net's first level gives.
    Without it the finest detail the decoder sees is at half resolution: on MNIST-Seg, whose masks are the
    digit pixels above an intensity threshold, the input skip is what lets mask edges land on the right
    pixel.

    Args:
        backbone: registry name of the encoder, e.g. ``"resnet18"``.
        num_classes: output channels.
        in_chans: input image channels.
        upsample: ``"bilinear"``, ``"nearest"`` or ``"transposed"`` (see :class:`UpBlock`).
        decoder_channels: output channels of the block that merges each stage (default: the stage's
            channels), optionally preceded by those of the full-resolution block (see :func:`decoder_widths`).
        input_skip: concatenate the input image in the full-resolution block (when the encoder has none).
        aux_loss: add an auxiliary head on encoder stage ``aux_stage`` (deep supervision; see
            :mod:`cnnkit.tasks.segmentation.fcn`).
        aux_stage: ``feature_info`` index of the stage it scores (``-1``: the deepest, most semantic map).
        score_stages: ``feature_info`` indices of stages whose decoder map (the output of the block that merges
            that stage) also gets a 1x1 classifier; those scores are upsampled bilinearly and added to the
            full-resolution logits, FCN's score fusion (Long et al., 2015) on the decoder. The class of a
            region then reaches the output directly from a coarse map instead of only through the narrow
            full-resolution blocks; on MNIST-Seg ``(2,)`` (stride 8) took the first epoch's mIoU from 0.22
            to 0.54 (``docs/segmentation.md``).
        init: the decoder's and heads' initialisation, ``"he"`` or ``"pytorch"`` (see :func:`init_weights`);
            the backbone keeps its own.
        head_kernel: kernel of the final classifier, 1 (the paper's) or 3 (segmentation_models_pytorch's);
            the score heads stay 1x1 (see :func:`classifier_head`).
        **backbone_kwargs: options of the backbone's builder.

    Shape:
        - Input: ``(N, in_chans, H, W)``, padded internally to a multiple of the largest reduction
        - Output: ``(N, num_classes, H, W)`` logits; in training mode with ``aux_loss`` a pair
          ``(logits, aux_logits)`` of that shape
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 2,
        in_chans: int = 3,
        upsample: Upsample = "bilinear",
        decoder_channels: tuple[int, ...] | None = None,
        input_skip: bool = True,
        aux_loss: bool = False,
        aux_stage: int = -1,
        score_stages: tuple[int, ...] = (),
        init: Init = "pytorch",
        head_kernel: int = 1,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        self.backbone, info = build_backbone(backbone, in_chans, **backbone_kwargs)
        self.feature_info = info
        channels, reductions = info.channels(), info.reduction()
        final_width, decoder_channels = decoder_widths(channels, reductions, decoder_channels)
        scales = [*(r_out // r_in for r_in, r_out in zip(reductions, reductions[1:])), reductions[0]]
        if any(r_out % r_in for r_in, r_out in zip([1, *reductions], reductions)):
            raise ConfigError(
                f"backbone {backbone!r} has reductions {reductions} that do not divide each other"
            )
        blocks, width = [], channels[-1]
        for i in reversed(range(len(info) - 1)):
            blocks.append(UpBlock(width, channels[i], decoder_channels[i], scales[i], upsample))
            width = decoder_channels[i]
        self.input_skip = bool(input_skip) and reductions[0] > 1
        if reductions[0] > 1:
            skip = in_chans if self.input_skip else 0
            blocks.append(UpBlock(width, skip, final_width, scales[-1], upsample))
            width = final_width
        self.decoder = nn.ModuleList(blocks)
        self.head = classifier_head(width, num_classes, head_kernel)
        # FCN's score fusion: 1x1 classifiers on decoder maps, keyed by the index of the block that makes them
        self.score_heads = nn.ModuleDict()
        for stage in score_stage_indices(score_stages, len(info)):
            self.score_heads[str(len(info) - 2 - stage)] = nn.Conv2d(decoder_channels[stage], num_classes, 1)
        self.aux_stage, self.aux_classifier = (
            aux_head(info, aux_stage, num_classes) if aux_loss else (None, None)
        )
        self.num_classes = num_classes
        self.stride = max(reductions)
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.stride)
        maps = self.backbone.forward_intermediates(padded)
        skips = [padded, *maps] if self.input_skip else list(maps)
        y = skips.pop()
        coarse = []
        for i, block in enumerate(self.decoder):
            y = block(y, [skips.pop()] if skips else ())
            if str(i) in self.score_heads:
                coarse.append(self.score_heads[str(i)](y))
        logits = self.head(y)
        for scores in coarse:
            logits = logits + F.interpolate(
                scores, size=logits.shape[-2:], mode="bilinear", align_corners=False
            )
        out = with_aux(logits, maps, self.aux_classifier, self.aux_stage, self.training)
        if isinstance(out, tuple):
            return out[0][..., :height, :width], out[1][..., :height, :width]
        return out[..., :height, :width]


@register_model(
    task="segmentation",
    input_size=(3, 256, 256),
    paper="Ronneberger et al., 2015, U-Net: Convolutional Networks for Biomedical Image Segmentation",
)
def unet(
    num_classes: int = 2, backbone: str | None = None, in_chans: int = 3, **kwargs: Any
) -> UNet | BackboneUNet:
    """A U-Net: the classic one (:class:`UNet`) without ``backbone``, else :class:`BackboneUNet` on that
    registered classifier's stages.

    Args:
        num_classes: output channels, background included.
        backbone: registered classifier of the encoder, or ``None`` for the paper's encoder.
        in_chans: image channels.
        **kwargs: options of the model class and, with a backbone, of its builder (``weights=``).

    Raises:
        ConfigError: an unknown option of the classic U-Net.
    """
    if backbone is None:
        accepted = set(inspect.signature(UNet).parameters)
        for key in kwargs:
            if key not in accepted:
                raise ConfigError(f"unet got an unknown argument {key!r}{did_you_mean(key, accepted)}")
        return UNet(in_chans=in_chans, num_classes=num_classes, **kwargs)
    return BackboneUNet(backbone, num_classes=num_classes, in_chans=in_chans, **kwargs)
