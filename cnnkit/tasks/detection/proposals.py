"""Region proposals by selective search (Uijlings et al., "Selective Search for Object Recognition", IJCV
2013), the proposal stage of R-CNN and Fast R-CNN, with a disk cache.

Selective search over-segments the image (Felzenszwalb-Huttenlocher graph segmentation), then greedily merges
the most similar neighbouring regions (colour, texture, size, fill) until one region is left; every region of
that hierarchy is a proposal, and the union of several strategies (colour spaces, ``k`` of the segmentation)
raises recall. The implementation is OpenCV contrib's
``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation`` (package ``opencv-contrib-python-headless``,
Apache-2.0), in its two published settings:

- ``fast``: 2 colour spaces (HSV, Lab) x 2 segmentations (``k = 150, 300``) x 2 strategies;
- ``quality``: 5 colour spaces x 5 segmentations (``k = 150 .. 750``) x 4 strategies: more and better boxes,
  several times slower.

OpenCV ranks the merged regions by ``level * rand()`` (the paper's pseudo-random ordering), drawn from the C
library's global ``rand()``. :func:`selective_search` seeds it with ``srand(seed)`` before each image, so the
ranking, and therefore which ``max_proposals`` boxes are kept, is the same on every call; each worker of the
pool is a separate process with its own ``rand()`` state, so parallel runs agree with serial ones.

Proposals depend only on the image and the settings, so :class:`ProposalCache` keeps them on disk, one file
per image, named by a hash of the image's bytes and shape under a folder named by a hash of the settings
(:meth:`SelectiveSearch.settings_key`). A file is written to a temporary name and moved into place with
``os.replace`` (atomic on POSIX and Windows), and carries a magic string, its box count and a CRC-32 of its
payload: a run killed mid-write leaves at most a stray temporary file, and an entry that is truncated or
corrupt anyway (a full disk, a copy gone wrong) fails its check and is computed again.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import hashlib
import multiprocessing
import os
import pathlib
import struct
import tempfile
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.tasks.detection.boxes import box_iou

MODES = ("fast", "quality")
CACHE_ENV = "CNNKIT_CACHE_DIR"
"""Environment variable naming the cache root (default ``~/.cache/cnnkit``); proposals go to
``<root>/proposals``."""
_MAGIC = b"CNNKITSS1\n"
_HEADER = struct.Struct("<II")  # box count, CRC-32 of the payload


def _cv2() -> Any:
    """OpenCV with its contrib modules, or a one-line :class:`ConfigError` saying what to install."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is None or not hasattr(cv2, "ximgproc"):
        raise ConfigError(
            "selective search needs OpenCV's contrib modules: pip install 'cnnkit[rcnn]' "
            "(opencv-contrib-python-headless)"
        )
    return cv2


def selective_search(image: np.ndarray, mode: str = "fast", scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """Selective-search boxes of one image, in OpenCV's (seeded) rank order.

    Args:
        image: ``(H, W)`` grey or ``(H, W, 3)`` RGB, uint8.
        mode: ``"fast"`` or ``"quality"`` (module docs).
        scale: the image is resized by this factor before the search (small objects on small canvases
            segment better larger) and the boxes are scaled back.
        seed: seed of the C library's ``rand()``, which OpenCV's ranking draws from.

    Returns:
        int32 ``(N, 4)`` ``xyxy`` boxes in the input's pixels (OpenCV's ``x, y, w, h`` converted), duplicates
        removed by OpenCV.

    Shape:
        ``(H, W[, 3])`` -> ``(N, 4)``.
    """
    cv2 = _cv2()
    if mode not in MODES:
        raise ConfigError(f"selective search mode must be one of {MODES}, got {mode!r}")
    cv2.setNumThreads(1)  # one image per process; torch's threads and the other workers use the cores
    array = np.ascontiguousarray(image, dtype=np.uint8)
    if scale != 1.0:
        array = cv2.resize(array, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    bgr = np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, ::-1].copy()
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    _srand(seed)
    rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)
    rects[:, 2:] += rects[:, :2]
    if scale != 1.0:
        rects = rects / scale
    height, width = image.shape[:2]
    rects[:, 0::2] = rects[:, 0::2].round().clip(0, width)
    rects[:, 1::2] = rects[:, 1::2].round().clip(0, height)
    return rects.astype(np.int32)


def _srand(seed: int) -> None:
    ctypes.CDLL(None).srand(ctypes.c_uint(seed))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """An image of any value range as ``(H, W)`` or ``(H, W, 3)`` uint8, each image stretched from its own
    minimum (0) to its maximum (255).

    A detector's input is the normalised image ``(x / 255 - mean) / std``, an affine map per channel, so the
    stretch gives back the original image whenever it spans black to white (MNIST-Det's canvases do); a
    constant image becomes all zeros.

    Shape:
        ``(C, H, W)`` with ``C`` 1 or 3 -> ``(H, W)`` or ``(H, W, 3)``.
    """
    x = image.detach().float().cpu()
    low, high = x.amin(), x.amax()
    stretched = ((x - low) * (255.0 / (high - low)) if high > low else torch.zeros_like(x)).round()
    array = stretched.clamp(0, 255).to(torch.uint8).numpy()
    return array[0] if array.shape[0] == 1 else np.ascontiguousarray(array[:3].transpose(1, 2, 0))


def image_key(array: np.ndarray) -> str:
    """The cache key of an image: BLAKE2b (128 bits) of its shape and bytes, hex."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def default_cache_dir() -> pathlib.Path:
    """``$CNNKIT_CACHE_DIR/proposals``, else ``~/.cache/cnnkit/proposals``."""
    root = os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "cnnkit"
    return pathlib.Path(root) / "proposals"


class ProposalCache:
    """Boxes per image on disk, one file each, written atomically and checked when read (module docs).

    Args:
        root: the folder of one settings key (created on the first write).
    """

    def __init__(self, root: str | pathlib.Path) -> None:
        self.root = pathlib.Path(root)

    def path(self, key: str) -> pathlib.Path:
        """Where image ``key``'s boxes live (256 sub-folders by the key's first two characters)."""
        return self.root / key[:2] / f"{key}.boxes"

    def load(self, key: str) -> np.ndarray | None:
        """The boxes stored for ``key``: int32 ``(N, 4)``; ``None`` when absent, truncated or corrupt."""
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        start = len(_MAGIC) + _HEADER.size
        if len(data) < start or not data.startswith(_MAGIC):
            return None
        count, crc = _HEADER.unpack_from(data, len(_MAGIC))
        payload = data[start:]
        if len(payload) != count * 16 or zlib.crc32(payload) != crc:
            return None
        return np.frombuffer(payload, dtype="<i4").reshape(count, 4).astype(np.int32)

    def store(self, key: str, boxes: np.ndarray) -> None:
        """Write ``boxes`` (``(N, 4)`` integers) for ``key``: a temporary file in the same folder, flushed,
        then ``os.replace`` onto the final name."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = np.ascontiguousarray(boxes, dtype="<i4").reshape(-1, 4).tobytes()
        blob = _MAGIC + _HEADER.pack(len(payload) // 16, zlib.crc32(payload)) + payload
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise


_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool of ``workers`` kept for the process's lifetime (spawned: no torch threads forked)."""
    if workers not in _POOLS:
        context = multiprocessing.get_context("spawn")
        _POOLS[workers] = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    return _POOLS[workers]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(cancel_futures=True)
    _POOLS.clear()


def _search(job: tuple[np.ndarray, str, float, int, int, int]) -> np.ndarray:
    """One image's proposals: :func:`selective_search`, boxes with a side under ``min_size`` dropped, the
    first ``max_proposals`` kept (a pool job, so a module-level function)."""
    array, mode, scale, seed, min_size, max_proposals = job
    boxes = selective_search(array, mode, scale, seed)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return boxes[sides >= min_size][:max_proposals]


class SelectiveSearch(nn.Module):
    """The proposal stage of R-CNN and Fast R-CNN: selective-search boxes of each image, cached on disk.

    A module without parameters, so a detector holds it as it holds an RPN (``model.proposals``) and a
    benchmark can time it with hooks.

    Args:
        mode: ``"fast"`` or ``"quality"``.
        max_proposals: boxes kept per image, best ranked first (R-CNN used about 2000).
        min_size: smallest side of a kept box, in pixels.
        scale: resize factor of the image for the search (:func:`selective_search`).
        seed: seed of OpenCV's ranking.
        cache: ``True``: cache under :func:`default_cache_dir`; a path: cache there; ``False``: no cache.
        workers: processes that compute missing proposals in parallel (``<= 1``: in this process).

    Shape:
        - Input: ``(B, C, H, W)`` images of any value range (:func:`to_uint8`).
        - Output: ``B`` float32 tensors ``(P_i, 4)`` ``xyxy`` pixels, on the input's device.
    """

    def __init__(
        self,
        mode: str = "fast",
        max_proposals: int = 2000,
        min_size: int = 2,
        scale: float = 1.0,
        seed: int = 0,
        cache: bool | str | pathlib.Path = True,
        workers: int = 2,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"selective search mode must be one of {MODES}, got {mode!r}")
        if max_proposals < 1 or min_size < 0 or scale <= 0:
            raise ConfigError(
                f"need max_proposals >= 1, min_size >= 0 and scale > 0, got {max_proposals}, {min_size}, {scale}"
            )
        _cv2()
        self.mode, self.max_proposals, self.min_size = mode, int(max_proposals), int(min_size)
        self.scale, self.seed, self.workers = float(scale), int(seed), int(workers)
        self.cache_setting = cache
        self.cache = None
        if cache is not False:
            root = default_cache_dir() if cache is True else pathlib.Path(cache)
            self.cache = ProposalCache(root / self.settings_key())

    def settings_key(self) -> str:
        """A short hash of everything proposals depend on: the settings and OpenCV's version."""
        cv2 = _cv2()
        text = f"{self.mode}|{self.max_proposals}|{self.min_size}|{self.scale}|{self.seed}|{cv2.__version__}"
        return f"{self.mode}-{hashlib.blake2b(text.encode(), digest_size=6).hexdigest()}"

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, max_proposals={self.max_proposals}, min_size={self.min_size}, scale={self.scale}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Proposals of every image: from the cache, the missing ones computed (in parallel) and stored."""
        arrays = [to_uint8(image) for image in images]
        keys = [image_key(a) for a in arrays]
        found = [self.cache.load(k) if self.cache is not None else None for k in keys]
        missing = [i for i, boxes in enumerate(found) if boxes is None]
        jobs = [
            (arrays[i], self.mode, self.scale, self.seed, self.min_size, self.max_proposals) for i in missing
        ]
        if self.workers > 1 and len(jobs) > 1:
            computed = list(_pool(self.workers).map(_search, jobs))
        else:
            computed = [_search(job) for job in jobs]
        for i, boxes in zip(missing, computed):
            found[i] = boxes
            if self.cache is not None:
                self.cache.store(keys[i], boxes)
        return [torch.from_numpy(b.astype(np.float32)).reshape(-1, 4).to(images.device) for b in found]


def proposal_recall(
    proposals: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor], thresholds: Sequence[float] = (0.5, 0.7)
) -> dict[float, float]:
    """Share of ground-truth boxes that some proposal overlaps with IoU at least each threshold.

    Args:
        proposals: per image ``(P_i, 4)`` ``xyxy``.
        boxes: per image ground truth ``(G_i, 4)`` ``xyxy``.
        thresholds: IoU thresholds.

    Returns:
        ``{threshold: recall}``; every recall is 0 without ground truth.
    """
    best = [
        box_iou(gt.float(), p.float()).amax(1) if len(p) else torch.zeros(len(gt))
        for p, gt in zip(proposals, boxes)
        if len(gt)
    ]
    best_all = torch.cat(best) if best else torch.zeros(0)
    return {t: float((best_all >= t).float().mean()) if len(best_all) else 0.0 for t in thresholds}
