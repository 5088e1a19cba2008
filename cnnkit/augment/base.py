"""The transform contract: batched, per-sample random, sample-then-apply, targets move with the images.

A transform sees a whole batch ``images (B, C, H, W)`` (``uint8`` in [0, 255] or floating in [0, 1], on any
device) and draws independent parameters for every sample. ``params = t.sample(images, generator)`` draws
them (on the CPU, from ``generator``, reading only the batch's shape), ``t.apply(images, targets, params)``
uses them, so a run can be replayed or inspected; ``t(images, targets, generator)`` does both. A call
returns what it was given, as ``torchvision.transforms.v2`` and kornia do: ``t(images)`` the images alone,
``t(images, targets)`` the pair ``(images, targets)``; ``apply`` always returns the pair.

Targets are either a label tensor for classification (``(B,)`` class indices or ``(B, K)`` soft labels), or
a list of one dict per sample with ``labels (N,)``, ``boxes (N, 4)`` float ``xyxy`` in pixels, and optionally
``masks (N, H, W)`` (instances) or ``mask (H, W)`` (semantic). Keys other than these pass through unchanged.

Box rule after a geometric transform: boxes are clipped to the output image and a box is dropped, with its
label and instance mask, when its clipped width or height is below ``MIN_BOX_SIZE`` (1 pixel).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, overload

import torch
from torch import Tensor

from cnnkit.errors import ConfigError, DataError

Params = dict[str, Any]
Target = dict[str, Tensor]
Targets = Tensor | list[Target] | None

MIN_BOX_SIZE = 1.0


class Transform(abc.ABC):
    """A batched augmentation: ``sample`` draws per-sample parameters, ``apply`` uses them."""

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        """Draw the random parameters of every sample of the batch.

        Args:
            images: the batch; only its shape is read, so a ``meta`` tensor works.
            generator: a CPU ``torch.Generator`` for reproducible draws (global RNG when ``None``).

        Returns:
            A dict of CPU tensors with one entry per sample (leading dimension ``B``).
        """
        return {}

    @abc.abstractmethod
    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        """Apply drawn parameters to a batch and its targets.

        Args:
            images: ``(B, C, H, W)`` uint8 or floating tensor.
            targets: ``None``, a label tensor ``(B,)``/``(B, K)``, or a list of ``B`` target dicts.
            params: the output of :meth:`sample` for a batch of this shape.

        Returns:
            ``(images, targets)`` transformed the same way.
        """

    def output_size(self, size: tuple[int, int], params: Params) -> tuple[int, int]:
        """The ``(H, W)`` this transform produces from input size ``size`` (unchanged by default)."""
        return size

    @overload
    def __call__(
        self, images: Tensor, targets: None = None, generator: torch.Generator | None = None
    ) -> Tensor: ...

    @overload
    def __call__(
        self, images: Tensor, targets: Tensor | list[Target], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | list[Target]]: ...

    def __call__(
        self, images: Tensor, targets: Targets = None, generator: torch.Generator | None = None
    ) -> Tensor | tuple[Tensor, Targets]:
        """Sample parameters and apply them; the images alone without targets, else ``(images, targets)``.

        As ``torchvision.transforms.v2`` and kornia do, a call returns what it was given: ``t(images)``
        returns the transformed images, ``t(images, targets)`` the pair. :meth:`apply` always returns the
        pair, so that pipelines can pass targets along.

        Args:
            images: ``(B, C, H, W)`` uint8 or floating tensor.
            targets: ``None``, a label tensor ``(B,)``/``(B, K)``, or a list of ``B`` target dicts.
            generator: a CPU ``torch.Generator`` for reproducible draws (global RNG when ``None``).

        Returns:
            ``images`` when ``targets`` is ``None``, else ``(images, targets)``, transformed.

        Shape:
            - images: ``(B, C, H, W)`` -> ``(B, C, H', W')`` (``H', W'`` from :meth:`output_size`)
            - targets: ``(B,)`` -> ``(B,)`` or soft ``(B, K)`` (MixUp, CutMix); ``B`` dicts stay ``B`` dicts
        """
        check_batch(images, targets)
        out, out_targets = self.apply(images, targets, self.sample(images, generator))
        return out if targets is None else (out, out_targets)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Apply transforms one after another; parameters are a list with one entry per transform.

    Called like any transform: ``pipeline(images)`` returns the images, ``pipeline(images, targets)`` the
    pair ``(images, targets)``.

    Args:
        transforms: the transforms, in order.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        """Draw every transform's parameters, feeding each the batch shape its predecessor produces."""
        shape = images.shape
        steps = []
        for t in self.transforms:
            proxy = torch.empty(shape, dtype=images.dtype, device="meta")
            params = t.sample(proxy, generator)
            steps.append(params)
            shape = (*shape[:2], *t.output_size((shape[-2], shape[-1]), params))
        return {"steps": steps}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        for t, step in zip(self.transforms, params["steps"]):
            images, targets = t.apply(images, targets, step)
        return images, targets

    def output_size(self, size: tuple[int, int], params: Params) -> tuple[int, int]:
        for t, step in zip(self.transforms, params["steps"]):
            size = t.output_size(size, step)
        return size


class RandomApply(Transform):
    """Apply a size-preserving transform to each sample with probability ``p`` (drawn per sample).

    Args:
        transforms: a transform or a list of them (composed).
        p: probability that a sample is transformed.
    """

    def __init__(self, transforms: Transform | Sequence[Transform], p: float = 0.5) -> None:
        self.transforms = transforms if isinstance(transforms, Transform) else Compose(transforms)
        self.p = check_probability(p)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> Params:
        inner = self.transforms.sample(images, generator)
        size = (images.shape[-2], images.shape[-1])
        if self.transforms.output_size(size, inner) != size:
            raise ConfigError("RandomApply needs a transform that keeps the image size (e.g. not a crop)")
        return {"apply": bernoulli(self.p, images.shape[0], generator), "inner": inner}

    def apply(self, images: Tensor, targets: Targets, params: Params) -> tuple[Tensor, Targets]:
        chosen = params["apply"].to(images.device)
        out, out_targets = self.transforms.apply(images, targets, params["inner"])
        images = torch.where(chosen.view(-1, 1, 1, 1), out, images)
        if isinstance(targets, Tensor) and isinstance(out_targets, Tensor):
            if out_targets.shape != targets.shape:
                targets = soft_labels(targets, out_targets.shape[1])
            cond = chosen.view(-1, *([1] * (targets.dim() - 1)))
            targets = torch.where(cond, out_targets, targets)
        elif isinstance(targets, list):
            targets = [new if c else old for c, new, old in zip(chosen.tolist(), out_targets, targets)]
        return images, targets


def without_transforms(transform: Transform | None, names: Sequence[str]) -> Transform | None:
    """``transform`` without the transforms whose class names are in ``names`` (inside :class:`Compose`
    pipelines too); ``None`` when nothing is left. The others are the same objects.

    Example:
        >>> from cnnkit.augment import HorizontalFlip, Mosaic
        >>> without_transforms(Compose([Mosaic(), HorizontalFlip()]), ["Mosaic"]).transforms
        [HorizontalFlip(p=0.5)]
    """
    if transform is None or type(transform).__name__ in names:
        return None
    if isinstance(transform, Compose):
        kept = [t for t in (without_transforms(t, names) for t in transform.transforms) if t is not None]
        return Compose(kept) if kept else None
    return transform


def check_batch(images: Tensor, targets: Targets) -> None:
    """Raise :class:`DataError` unless ``images`` is a ``(B, C, H, W)`` batch and ``targets`` matches it."""
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"augment expects a batch of images (B, C, H, W), got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DataError(f"augment expects uint8 or floating images, got {images.dtype}")
    if targets is not None and len(targets) != images.shape[0]:
        raise DataError(f"{len(targets)} targets for a batch of {images.shape[0]} images")


def check_probability(p: float) -> float:
    """Return ``p`` if it is a probability, else raise :class:`ConfigError`."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"probability p must be in [0, 1], got {p}")
    return float(p)


def as_range(value: float | Sequence[float], name: str, center: float = 0.0) -> tuple[float, float]:
    """A ``(low, high)`` range from a number ``v`` (meaning ``[center - v, center + v]``) or a pair."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{name} must be non-negative, got {value}")
        return (center - float(value), center + float(value))
    low, high = (float(v) for v in value)
    if low > high:
        raise ConfigError(f"{name} range must be (low, high) with low <= high, got {tuple(value)}")
    return (low, high)


def as_size(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``(H, W)`` from an int (square) or a one- or two-element sequence."""
    if isinstance(size, int):
        return (size, size)
    size = [int(s) for s in size]
    if len(size) == 1:
        return (size[0], size[0])
    if len(size) != 2:
        raise ConfigError(f"{name} must be an int or (height, width), got {size}")
    return (size[0], size[1])


def uniform(low: float, high: float, n: int | tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """``n`` draws from ``U(low, high)`` as float64 on the CPU."""
    shape = (n,) if isinstance(n, int) else n
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def bernoulli(p: float, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` booleans, each True with probability ``p``."""
    return torch.rand(n, generator=generator, dtype=torch.float64) < p


def randint_below(high: Tensor, generator: torch.Generator | None) -> Tensor:
    """One integer in ``[0, high_i)`` per element of ``high`` (an int64 tensor of positive bounds)."""
    draw = torch.rand(high.shape, generator=generator, dtype=torch.float64)
    return torch.minimum((draw * high).long(), high - 1)


def sample_beta(alpha: float, n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` draws from ``Beta(alpha, alpha)`` using ``generator`` (as two Gamma draws, ``X / (X + Y)``).

    Gamma draws use Marsaglia & Tsang (2000), "A simple method for generating gamma variables", with the
    boost ``Gamma(a) = Gamma(a + 1) * U^(1/a)`` for ``a < 1``.
    """
    if alpha <= 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")

    def gamma(count: int) -> Tensor:
        a = alpha + 1.0 if alpha < 1.0 else alpha
        d = a - 1.0 / 3.0
        c = 1.0 / (9.0 * d) ** 0.5
        out = torch.empty(count, dtype=torch.float64)
        todo = torch.arange(count)
        while todo.numel():
            z = torch.randn(todo.numel(), generator=generator, dtype=torch.float64)
            u = torch.rand(todo.numel(), generator=generator, dtype=torch.float64)
            v = (1.0 + c * z) ** 3
            ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
            out[todo[ok]] = d * v[ok]
            todo = todo[~ok]
        if alpha < 1.0:
            out *= torch.rand(count, generator=generator, dtype=torch.float64) ** (1.0 / alpha)
        return out

    x, y = gamma(n), gamma(n)
    return x / (x + y)


def max_value(images: Tensor) -> float:
    """The value of white: 255 for uint8, 1 for floating images."""
    return 255.0 if images.dtype == torch.uint8 else 1.0


def to_float(images: Tensor) -> Tensor:
    """A floating copy-or-view to compute in, keeping the value range (uint8 stays in [0, 255])."""
    return images if images.is_floating_point() else images.float()


def restore_dtype(result: Tensor, dtype: torch.dtype) -> Tensor:
    """Back to ``dtype``: uint8 results are rounded to the nearest level and clamped to [0, 255]."""
    if dtype == torch.uint8:
        return result.round_().clamp_(0, 255).to(torch.uint8)
    return result.to(dtype)


def soft_labels(labels: Tensor, num_classes: int | None) -> Tensor:
    """``(B, K)`` float soft labels from class indices ``(B,)`` (one-hot) or soft labels ``(B, K)``."""
    if labels.dim() == 2:
        return labels.float()
    if num_classes is None:
        raise ConfigError("num_classes is needed to turn class indices into soft labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def filter_boxes(target: Target, boxes: Tensor, size: tuple[int, int], masks: Tensor | None = None) -> Target:
    """A new target with ``boxes`` clipped to ``size`` and too-small boxes dropped with their labels/masks.

    Args:
        target: the original target dict (other keys are copied).
        boxes: transformed boxes ``(N, 4)`` xyxy, before clipping.
        size: the output image ``(H, W)``.
        masks: transformed instance masks ``(N, H, W)`` to keep in step, if any.

    Returns:
        The target with ``boxes``, ``labels`` and ``masks`` reduced to the boxes at least ``MIN_BOX_SIZE``
        wide and tall after clipping.
    """
    h, w = size
    boxes = torch.stack(
        [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)],
        dim=1,
    )
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
    out = dict(target)
    out["boxes"] = boxes[keep]
    for key in ("labels", "iscrowd"):
        if key in target:
            out[key] = target[key][keep.to(target[key].device)]
    if masks is not None:
        out["masks"] = masks[keep.to(masks.device)]
    return out
