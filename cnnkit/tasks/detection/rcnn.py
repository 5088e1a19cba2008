"""R-CNN: selective-search proposals, each warped and run through a CNN, one linear SVM per class.

Girshick, Donahue, Darrell and Malik, "Rich feature hierarchies for accurate object detection and semantic
segmentation", CVPR 2014 (the page: "R-CNN: selective search proposals -> CNN features -> SVM classifier
(slow)")::

    image -> selective search (proposals.py): ~2000 boxes
      -> each box dilated so that the warped crop has ``p`` pixels of context (p = 16 at 227 px, Appendix A),
         warped anisotropically to ``warp_size`` x ``warp_size`` (outside the image: the mean, 0 once
         normalised) -> backbone (one pass per box) -> global average pool ("pool5") -> fc6, fc7
      -> one linear SVM per class on fc7 -> per-class greedy NMS
      -> class-specific box regression on pool5 (Appendix C): ridge regression of the BoxCoder deltas

Training runs in stages, in order, inside one ``cnnkit train`` (the trainer's epochs, then
:meth:`RCNN.after_train_epoch`, which the task calls between the last epoch's gradient steps and its
validation):

1. fine-tuning (Sec. 2.3), the run's epochs: warped proposals with IoU >= 0.5 with a ground-truth box are
   that box's class (the ground-truth boxes too), the rest background; mini-batches of a quarter foreground;
   softmax cross-entropy over ``C + 1`` classes. Until the SVMs exist the softmax scores the detections.
2. SVMs (Sec. 2.3): features of ``svm_images`` training images; for class ``c`` the ground-truth boxes of
   ``c`` are positives, proposals with IoU < 0.3 with every box of ``c`` negatives; hard-negative mining
   (Felzenszwalb et al. 2010) over the images in chunks: the negatives inside the margin (score > -1) join
   a cache, the SVM is refit on positives + cache, cached negatives scoring below -1.2 are evicted.
3. box regression (Appendix C): proposals with IoU >= 0.6 with a box of class ``c`` regress its deltas from
   their pool5 features, ridge regression in closed form.

The SVMs minimise ``1/2 |w|^2 + C sum_i a_i max(0, 1 - y_i (w x_i + b))^2`` (the squared hinge of
scikit-learn's ``LinearSVC``, its default; positives weighted ``a = 2``, negatives 1, as R-CNN's liblinear
call) in torch with L-BFGS. Why not ``LinearSVC``: the problem is a few hundred parameters per class on a few
thousand cached features, which ten lines of torch solve in milliseconds on the same tensors, without a
scikit-learn dependency or a copy to NumPy per mining round; the objective is the same.

Features are scaled to a mean L2 norm of 20 before the SVMs and the regressors, as R-CNN does for its
liblinear call, so that ``C`` and the ridge ``lambda`` mean the same on any backbone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import ops

from cnnkit.errors import ConfigError
from cnnkit.models.registry import create_model, register_model
from cnnkit.tasks.detection.boxes import BoxCoder, Matcher, batched_nms, box_iou
from cnnkit.tasks.detection.faster_rcnn import TwoMLPHead
from cnnkit.tasks.detection.proposals import SelectiveSearch
from cnnkit.tasks.detection.rpn import sample_balanced

Outputs = dict[str, Any]
FEATURE_NORM = 20.0
"""Mean L2 norm the SVM and regression features are scaled to (R-CNN's value)."""


class StageBackbone(nn.Module):
    """One stage map of a registered classifier (through the ``features_only`` contract).

    Args:
        backbone_name: a registered model name.
        out_index: the stage (index into the model's ``feature_info``, negative allowed).
        **backbone_kwargs: passed to :func:`cnnkit.create_model` (e.g. ``in_chans=1``).

    Attributes:
        stride: pixels per cell of the map. out_channels: its channels.

    Shape:
        ``(N, C, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, backbone_name: str, out_index: int = -1, **backbone_kwargs: Any) -> None:
        super().__init__()
        self.body = create_model(
            backbone_name, features_only=True, out_indices=(out_index,), **backbone_kwargs
        )
        self.stride = self.body.feature_info.reduction()[0]
        self.out_channels = self.body.feature_info.channels()[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[0]


def context_boxes(boxes: torch.Tensor, warp_size: int, padding: float) -> torch.Tensor:
    """Boxes dilated about their centre so that, warped to ``warp_size``, the original box spans
    ``warp_size - 2 * padding`` pixels with ``padding`` pixels of context on each side (R-CNN, Appendix A).

    Shape:
        ``(R, 4) -> (R, 4)`` ``xyxy``.
    """
    if not 0 <= 2 * padding < warp_size:
        raise ConfigError(f"context padding {padding} leaves nothing of a {warp_size} px warp")
    factor = warp_size / (warp_size - 2 * padding)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
    return torch.cat([centre - half, centre + half], 1)


def warp_regions(
    images: torch.Tensor, boxes: Sequence[torch.Tensor], warp_size: int, padding: float
) -> torch.Tensor:
    """Each box of each image, with context padding, warped to a ``warp_size`` square.

    Bilinear sampling (``torchvision.ops.roi_align``, 2 x 2 samples averaged per output pixel); what falls
    outside the image is 0, the mean of normalised images (R-CNN fills it with the image mean).

    Shape:
        ``(N, C, H, W)`` and per-image ``(R_i, 4)`` -> ``(R, C, warp_size, warp_size)``, ``R = sum R_i``.
    """
    dilated = [context_boxes(b.to(images.dtype), warp_size, padding) for b in boxes]
    return ops.roi_align(images, dilated, warp_size, 1.0, 2, aligned=True)


def negative_mask(
    ious: torch.Tensor, gt_labels: torch.Tensor, num_classes: int, threshold: float = 0.3
) -> torch.Tensor:
    """Which proposals are negatives of which class's SVM: IoU below ``threshold`` with every ground-truth
    box of that class (R-CNN, Sec. 2.3; a box of another class does not make a proposal positive).

    Args:
        ious: ``(G, P)`` IoU of the ground truth with the proposals.
        gt_labels: ``(G,)`` classes ``0 .. C-1``.
        num_classes: ``C``.
        threshold: IoU below which a proposal is a negative.

    Shape:
        ``(G, P), (G,) -> (P, C)`` bool.
    """
    best = torch.zeros(ious.shape[1], num_classes, dtype=ious.dtype, device=ious.device)
    if len(gt_labels):
        index = gt_labels.to(ious.device).long()[:, None].expand(-1, ious.shape[1])
        best = best.T.scatter_reduce(0, index, ious, "amax", include_self=True).T
    return best < threshold


def hard_negatives(scores: torch.Tensor, margin: float = -1.0) -> torch.Tensor:
    """Indices of the negatives inside the SVM margin (score ``> margin``): the only ones with a non-zero
    hinge loss, so the only ones worth caching (R-CNN's hard-negative mining threshold is -1).

    Shape:
        ``(N,) -> (K,)`` int64.
    """
    return torch.where(scores > margin)[0]


def fit_linear_svm(
    features: torch.Tensor,
    labels: torch.Tensor,
    c: float = 1e-3,
    positive_weight: float = 2.0,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear SVM: ``min 1/2 |w|^2 + c sum_i a_i max(0, 1 - y_i (w . x_i + b))^2`` by L-BFGS.

    The squared hinge (L2-loss) of scikit-learn's ``LinearSVC`` default, the bias unregularised; ``a_i`` is
    ``positive_weight`` for positives, 1 for negatives.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` with ``1`` positive, ``0`` (or ``-1``) negative.
        c: weight of the data term.
        positive_weight: weight ``a`` of positive examples.
        max_iter: L-BFGS iterations.

    Returns:
        ``(w (D,), b ())``.
    """
    x = features.detach().double()
    y = torch.where(labels > 0, 1.0, -1.0).to(x)
    weight = torch.where(labels > 0, positive_weight, 1.0).to(x)
    params = torch.zeros(x.shape[1] + 1, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        margins = (1 - y * (x @ params[:-1] + params[-1])).clamp(min=0)
        loss = 0.5 * params[:-1].square().sum() + c * (weight * margins.square()).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    params = params.detach().to(features.dtype)
    return params[:-1], params[-1]


def train_svm_with_mining(
    positives: torch.Tensor,
    negatives: torch.Tensor,
    chunk: int = 2000,
    c: float = 1e-3,
    positive_weight: float = 2.0,
    margin: float = -1.0,
    evict: float = -1.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One class's SVM with hard-negative mining over ``negatives`` in chunks (R-CNN, Sec. 2.3).

    Starting from ``w = 0`` (every negative inside the margin), for each chunk of negatives: cache those
    with score ``> margin`` (:func:`hard_negatives`), refit on positives + cache (:func:`fit_linear_svm`),
    evict cached negatives scoring ``< evict``.

    Args:
        positives: ``(P, D)`` features.
        negatives: ``(N, D)`` features, in image order.
        chunk: negatives scored between refits.
        c / positive_weight: :func:`fit_linear_svm`'s.
        margin / evict: scores above which a negative is cached, below which it leaves the cache.

    Returns:
        ``(w (D,), b ())``.
    """
    dim = positives.shape[1] if len(positives) else negatives.shape[1]
    w, b = positives.new_zeros(dim), positives.new_zeros(())
    cache = negatives[:0]
    for start in range(0, max(len(negatives), 1), chunk):
        block = negatives[start : start + chunk]
        cache = torch.cat([cache, block[hard_negatives(block @ w + b, margin)]])
        features = torch.cat([positives, cache])
        labels = torch.cat([positives.new_ones(len(positives)), cache.new_zeros(len(cache))])
        if labels.sum() == 0 or labels.sum() == len(labels):
            continue
        w, b = fit_linear_svm(features, labels, c, positive_weight)
        cache = cache[cache @ w + b >= evict]
    return w, b


def fit_box_regressor(features: torch.Tensor, targets: torch.Tensor, ridge: float = 1000.0) -> torch.Tensor:
    """Ridge regression ``min |[X 1] W - T|^2 + ridge |W_X|^2`` in closed form (bias unregularised;
    R-CNN, Appendix C, ``lambda = 1000``).

    Shape:
        ``(N, D), (N, 4) -> (D + 1, 4)``; predict with ``[x 1] @ W``.
    """
    x = torch.cat([features, features.new_ones(len(features), 1)], 1).double()
    penalty = torch.full((x.shape[1],), float(ridge), dtype=x.dtype)
    penalty[-1] = 0.0
    gram = x.T @ x + torch.diag(penalty)
    return torch.linalg.solve(gram, x.T @ targets.double()).to(features.dtype)


class RCNN(nn.Module):
    """R-CNN over a registered backbone, with selective-search proposals (module docs).

    Args:
        backbone_name: a registered classifier; its last stage map is average-pooled ("pool5").
        num_classes: object classes ``C``, background excluded.
        warp_size: side of the warped crops (227 in the paper).
        context_padding: context pixels around the box in the warped crop; ``None``: 16 at 227 px, scaled
            to ``warp_size``.
        representation_size: width of fc6 / fc7 (4096 in the paper).
        batch_size_per_image: warped proposals sampled per image in fine-tuning.
        positive_fraction: largest share of foreground among them (32 of 128 in the paper).
        fg_iou_threshold: IoU from which a proposal is foreground in fine-tuning (0.5).
        svm_images: training images whose features train the SVMs and regressors.
        svm_neg_iou: IoU below which a proposal is a negative of a class (0.3).
        svm_c / svm_positive_weight: :func:`fit_linear_svm`'s.
        svm_chunk: negatives per mining round.
        bbox_iou: IoU from which a proposal trains its box's class's regressor (0.6).
        bbox_ridge: the regressors' ``lambda`` (1000).
        crop_batch: warped crops per backbone pass at inference and in the SVM stage.
        proposals: :class:`SelectiveSearch` options.
        **backbone_kwargs: passed to :func:`cnnkit.create_model`.

    Shape:
        - Input: ``(N, in_chans, H, W)`` normalized images.
        - Output: see :meth:`forward`.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        *,
        warp_size: int = 227,
        context_padding: float | None = None,
        representation_size: int = 4096,
        batch_size_per_image: int = 32,
        positive_fraction: float = 0.25,
        fg_iou_threshold: float = 0.5,
        svm_images: int = 500,
        svm_neg_iou: float = 0.3,
        svm_c: float = 1e-3,
        svm_positive_weight: float = 2.0,
        svm_chunk: int = 2000,
        bbox_iou: float = 0.6,
        bbox_ridge: float = 1000.0,
        crop_batch: int = 256,
        proposals: dict[str, Any] | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes counts object classes without the background, got {num_classes}")
        if batch_size_per_image < 1 or not 0 < positive_fraction <= 1:
            raise ConfigError(
                "batch_size_per_image must be >= 1 and positive_fraction in (0, 1], got "
                f"{batch_size_per_image} and {positive_fraction}"
            )
        self.proposals = SelectiveSearch(**(proposals or {}))
        self.backbone = StageBackbone(backbone_name, -1, **backbone_kwargs)
        self.box_head = TwoMLPHead(self.backbone.out_channels, representation_size)
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.num_classes = num_classes
        self.warp_size = int(warp_size)
        self.context_padding = 16 * warp_size / 227 if context_padding is None else float(context_padding)
        context_boxes(torch.zeros(0, 4), self.warp_size, self.context_padding)  # checks the padding
        self.box_matcher = Matcher(fg_iou_threshold, fg_iou_threshold)
        self.box_batch_size_per_image = batch_size_per_image
        self.box_positive_fraction = positive_fraction
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.svm_images, self.svm_neg_iou, self.svm_c = svm_images, svm_neg_iou, svm_c
        self.svm_positive_weight, self.svm_chunk = svm_positive_weight, svm_chunk
        self.bbox_iou, self.bbox_ridge, self.crop_batch = bbox_iou, bbox_ridge, crop_batch
        dim = self.backbone.out_channels
        self.register_buffer("svm_weight", torch.zeros(num_classes, representation_size))
        self.register_buffer("svm_bias", torch.zeros(num_classes))
        self.register_buffer("bbox_weight", torch.zeros(num_classes, dim + 1, 4))
        self.register_buffer("feature_scale", torch.ones(2))  # fc7 (SVMs), pool5 (regressors)
        self.register_buffer("fitted", torch.zeros(()))  # 1 once the SVMs and regressors are trained

    # -- features ------------------------------------------------------------------------------------------
    def features(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pool5 and fc7 features of warped crops.

        Shape:
            ``(R, C, S, S) -> (R, D), (R, representation_size)``.
        """
        if len(crops) == 0:
            pool5 = crops.new_zeros(0, self.backbone.out_channels)
        else:
            pool5 = self.backbone(crops).mean((2, 3))
        return pool5, self.box_head(pool5)

    def region_features(
        self, images: torch.Tensor, boxes: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pool5 and fc7 features of every box of every image, ``crop_batch`` crops per backbone pass.

        Shape:
            ``(N, C, H, W)`` and per-image ``(R_i, 4)`` -> ``(R, D), (R, representation_size)``.
        """
        crops = warp_regions(images, boxes, self.warp_size, self.context_padding)
        if self.training or len(crops) <= self.crop_batch:
            return self.features(crops)
        parts = [self.features(part) for part in crops.split(self.crop_batch)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    # -- the detector --------------------------------------------------------------------------------------
    def forward(
        self, images: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> Outputs:
        """Raw outputs.

        Args:
            images: normalized images ``(N, C, H, W)``.
            targets: per image ``{"boxes", "labels"}``; in training mode they pick the fine-tuning crops.

        Returns:
            ``{"image_size", "proposals", "rois" (list of (R_i, 4)), "class_logits" (R, C + 1)}``; in training
            with targets also ``"roi_labels"``; otherwise also ``"box_deltas" (R, C, 4)`` (zeros until
            :meth:`fit_svms` ran) and, once it ran, ``"svm_scores" (R, C)``.
        """
        image_size = (images.shape[-2], images.shape[-1])
        proposals = self.proposals(images)
        outputs: Outputs = {"image_size": image_size, "proposals": proposals}
        if self.training and targets is not None:
            outputs.update(self.sample_rois(proposals, targets))
        else:
            outputs["rois"] = proposals
        pool5, fc7 = self.region_features(images, outputs["rois"])
        outputs["class_logits"] = self.cls_score(fc7)
        if not (self.training and targets is not None):
            if bool(self.fitted):  # the outputs say which scores they carry: postprocess reads no state
                outputs["svm_scores"] = (fc7 * self.feature_scale[0]) @ self.svm_weight.T + self.svm_bias
            scaled = torch.cat([pool5 * self.feature_scale[1], pool5.new_ones(len(pool5), 1)], 1)
            outputs["box_deltas"] = torch.einsum("rd,cdk->rck", scaled, self.bbox_weight)
        return outputs

    @torch.no_grad()
    def sample_rois(
        self, proposals: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, list[torch.Tensor]]:
        """Fine-tuning crops of each image: proposals and ground-truth boxes, labelled by the box they overlap
        with IoU >= ``fg_iou_threshold`` (class ``c`` as ``c + 1``) or background (0), drawn with at most
        ``positive_fraction`` foreground (:func:`sample_balanced`).

        Returns:
            ``{"rois": list of (R_i, 4), "roi_labels": list of (R_i,) int64}``.
        """
        rois, labels = [], []
        for image_proposals, target in zip(proposals, targets):
            gt = target["boxes"].to(image_proposals).reshape(-1, 4)
            candidates = torch.cat([image_proposals, gt])
            matches = self.box_matcher(box_iou(gt, candidates))
            candidate_labels = torch.zeros_like(matches)
            if len(gt):
                candidate_labels = target["labels"].to(matches)[matches.clamp(min=0)] + 1
            candidate_labels[matches < 0] = 0
            positive, negative = sample_balanced(
                candidate_labels, self.box_batch_size_per_image, self.box_positive_fraction
            )
            index = torch.cat([positive, negative])
            rois.append(candidates[index])
            labels.append(candidate_labels[index])
        return {"rois": rois, "roi_labels": labels}

    def criterion(
        self, outputs: Outputs, targets: Sequence[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Fine-tuning loss: softmax cross-entropy of the sampled crops over ``C + 1`` classes (Sec. 2.3).

        Returns:
            ``{"loss", "classifier"}``.

        Raises:
            ConfigError: the outputs hold no sampled crops.
        """
        if "roi_labels" not in outputs:
            raise ConfigError(
                "criterion needs the sampled crops that forward(images, targets) stores in training mode; "
                "call model.train() and pass the targets to forward"
            )
        labels = torch.cat(outputs["roi_labels"])
        loss = F.cross_entropy(outputs["class_logits"], labels, reduction="sum") / max(len(labels), 1)
        return {"loss": loss, "classifier": loss.detach()}

    @torch.no_grad()
    def postprocess(
        self,
        outputs: Outputs,
        score_threshold: float = 0.05,
        iou_threshold: float = 0.5,
        max_detections: int = 100,
        image_size: tuple[int, int] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image: every proposal scored by every class's SVM (``sigmoid`` of the SVM score, a
        monotone map to ``(0, 1)``; before the SVMs are fitted, the fine-tuned softmax), its box moved by that
        class's regressor, clipped; pairs above ``score_threshold`` go through per-class NMS.

        Returns:
            Per image ``{"boxes": (K, 4), "scores": (K,), "labels": (K,) in 0 .. C-1}``, by decreasing score.
        """
        image_size = tuple(image_size or outputs["image_size"])
        rois = outputs["rois"]
        if "svm_scores" in outputs:  # not self.fitted: the task may hold the raw model beside its EMA copy
            scores = outputs["svm_scores"].sigmoid()
        else:
            scores = F.softmax(outputs["class_logits"], -1)[:, 1:]
        reference = (
            torch.cat(rois)[:, None].expand(-1, self.num_classes, -1) if rois else scores.new_zeros(0, 4)
        )
        boxes = ops.clip_boxes_to_image(self.box_coder.decode(outputs["box_deltas"], reference), image_size)
        results = []
        counts = [len(r) for r in rois]
        for image_boxes, image_scores in zip(boxes.split(counts), scores.split(counts)):
            candidates = image_boxes.reshape(-1, 4)
            flat = image_scores.reshape(-1)
            labels = torch.arange(self.num_classes, device=flat.device).repeat(len(image_scores))
            keep = torch.where(flat > score_threshold)[0]
            keep = keep[ops.remove_small_boxes(candidates[keep], min_size=1e-2)]
            candidates, flat, labels = candidates[keep], flat[keep], labels[keep]
            keep = batched_nms(candidates, flat, labels, iou_threshold)[:max_detections]
            results.append({"boxes": candidates[keep], "scores": flat[keep], "labels": labels[keep]})
        return results

    # -- the stages after fine-tuning ----------------------------------------------------------------------
    def after_train_epoch(
        self,
        batches: Iterable[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]],
        *,
        epoch: int,
        epochs: int,
    ) -> None:
        """After the last epoch of fine-tuning, fit the SVMs and box regressors (:meth:`fit_svms`) on the
        prepared, unaugmented training ``batches``."""
        if epoch == epochs - 1:
            self.fit_svms(batches)

    @torch.no_grad()
    def collect(
        self, batches: Iterable[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]
    ) -> dict[str, torch.Tensor]:
        """Features of the ground-truth boxes and proposals of the first ``svm_images`` images of ``batches``.

        Returns:
            ``{"positives": (G, K) fc7, "positive_labels": (G,), "negatives": (P, K) fc7, "negative_mask":
            (P, C) bool (:func:`negative_mask`), "bbox_features": (Q, D) pool5, "bbox_targets": (Q, 4),
            "bbox_labels": (Q,)}`` (``Q``: proposals with IoU >= ``bbox_iou``).
        """
        was_training = self.training
        self.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        seen = 0
        for images, targets in batches:
            images, targets = images[: self.svm_images - seen], targets[: self.svm_images - seen]
            proposals = self.proposals(images)
            gts = [t["boxes"].to(images.dtype).reshape(-1, 4) for t in targets]
            boxes = [torch.cat([gt, p]) for gt, p in zip(gts, proposals)]
            pool5, fc7 = self.region_features(images, boxes)
            for gt, p, target, f5, f7 in zip(
                gts,
                proposals,
                targets,
                pool5.split([len(b) for b in boxes]),
                fc7.split([len(b) for b in boxes]),
            ):
                labels = target["labels"].reshape(-1)
                ious = box_iou(gt, p) if len(gt) else p.new_zeros(0, len(p))
                self._append(parts, "positives", f7[: len(gt)])
                self._append(parts, "positive_labels", labels)
                self._append(parts, "negatives", f7[len(gt) :])
                self._append(
                    parts, "negative_mask", negative_mask(ious, labels, self.num_classes, self.svm_neg_iou)
                )
                if len(gt):
                    best, match = ious.max(0)
                    near = torch.where(best >= self.bbox_iou)[0]
                    self._append(parts, "bbox_features", f5[len(gt) :][near])
                    self._append(parts, "bbox_targets", self.box_coder.encode(gt[match[near]], p[near]))
                    self._append(parts, "bbox_labels", labels[match[near]])
            seen += len(images)
            if seen >= self.svm_images:
                break
        self.train(was_training)
        dims = {"positives": fc7.shape[1], "negatives": fc7.shape[1], "bbox_features": pool5.shape[1]}
        out = {}
        for key in (
            "positives",
            "positive_labels",
            "negatives",
            "negative_mask",
            "bbox_features",
            "bbox_targets",
            "bbox_labels",
        ):
            if key in parts:
                out[key] = torch.cat(parts[key])
            elif key in dims:
                out[key] = torch.zeros(0, dims[key])
            else:
                out[key] = torch.zeros((0, 4) if key == "bbox_targets" else (0,), dtype=torch.int64)
        return out

    @staticmethod
    def _append(parts: dict[str, list[torch.Tensor]], key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value.detach().cpu())

    @torch.no_grad()
    def fit_svms(self, batches: Iterable[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]) -> None:
        """Stages 2 and 3 of the module docs on the features of :meth:`collect`; sets :attr:`fitted`."""
        data = self.collect(batches)
        fc7_norm = torch.cat([data["positives"], data["negatives"]]).norm(dim=1).mean().clamp(min=1e-6)
        pool5_norm = (
            data["bbox_features"].norm(dim=1).mean().clamp(min=1e-6) if len(data["bbox_features"]) else 1
        )
        scale = torch.tensor([FEATURE_NORM / float(fc7_norm), FEATURE_NORM / float(pool5_norm)])
        positives, negatives = data["positives"] * scale[0], data["negatives"] * scale[0]
        bbox_features = data["bbox_features"] * scale[1]
        weight = torch.zeros_like(self.svm_weight, device="cpu")
        bias = torch.zeros_like(self.svm_bias, device="cpu")
        regressors = torch.zeros_like(self.bbox_weight, device="cpu")
        for c in range(self.num_classes):
            w, b = train_svm_with_mining(
                positives[data["positive_labels"] == c],
                negatives[data["negative_mask"][:, c]],
                self.svm_chunk,
                self.svm_c,
                self.svm_positive_weight,
            )
            weight[c], bias[c] = w, b
            own = data["bbox_labels"] == c
            if own.any():
                regressors[c] = fit_box_regressor(
                    bbox_features[own], data["bbox_targets"][own], self.bbox_ridge
                )
        device = self.svm_weight.device
        self.svm_weight.copy_(weight.to(device))
        self.svm_bias.copy_(bias.to(device))
        self.bbox_weight.copy_(regressors.to(device))
        self.feature_scale.copy_(scale.to(device))
        self.fitted.fill_(1.0)


@register_model(
    task="detection",
    input_size=(3, 512, 512),
    paper="Girshick et al., 2014, R-CNN; Uijlings et al., 2013, Selective Search",
    extra={"exportable": False},
)
def rcnn(num_classes: int = 80, backbone: str = "resnet18", in_chans: int = 3, **kwargs: Any) -> RCNN:
    """R-CNN on a registered ``backbone`` with selective-search proposals (see :class:`RCNN`).

    Args:
        num_classes: object classes without the background.
        backbone: registered classifier run on every warped proposal (``features_only``, last stage).
        in_chans: image channels.
        **kwargs: :class:`RCNN` options and the backbone's (``weights=``: its classifier weights).
    """
    return RCNN(backbone, num_classes, in_chans=in_chans, **kwargs)
