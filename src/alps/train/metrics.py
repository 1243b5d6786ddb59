"""Dataset-level segmentation metrics from one accumulated confusion matrix.

Following mmsegmentation, IoU/F1 are computed once from the confusion matrix summed over the whole
dataset, never averaged per image. Rows of the matrix are ground truth, columns are predictions.
Pixels whose ground truth equals ``ignore_index`` (or lies outside ``[0, num_classes)``) are skipped.
The ISPRS Potsdam protocol reports overall accuracy (OA) and the mean per-class F1 (mF1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from alps.evaluate.confusion import bincount_2d, class_scores, nanmean


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Confusion matrix of one batch.

    Args:
        pred: predicted class per pixel, any shape, integer dtype.
        target: ground-truth class per pixel, same shape as ``pred``.
        num_classes: K.
        ignore_index: ground-truth value that is left out.

    Returns:
        ``(K, K)`` int64 tensor on ``pred``'s device; entry ``[t, p]`` counts pixels of true class ``t``
        predicted as ``p``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    keep &= (pred >= 0) & (pred < num_classes)
    return bincount_2d(target[keep], pred[keep], num_classes, num_classes)


@dataclass
class SegmentationScores:
    """Scores of a dataset; fractions in [0, 1].

    ``nan`` marks a class absent from both truth and prediction.
    """

    miou: float
    oa: float
    mf1: float
    per_class_iou: list[float]
    per_class_f1: list[float]
    per_class_acc: list[float]
    class_names: list[str] = field(default_factory=list)
    num_pixels: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` → ``None``): ``miou``, ``oa``, ``mf1``, ``per_class_iou``, ..."""
        out = asdict(self)
        for key in ("per_class_iou", "per_class_f1", "per_class_acc"):
            out[key] = [None if math.isnan(v) else v for v in out[key]]
        for key in ("miou", "oa", "mf1"):
            out[key] = None if math.isnan(out[key]) else out[key]
        return out


def scores_from_confusion(
    cm: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    exclude_from_mean: Sequence[int] = (),
) -> SegmentationScores:
    """mIoU, OA, mF1 and per-class IoU/F1/accuracy from a ``(K, K)`` confusion matrix (rows = truth).

    A class with neither ground-truth nor predicted pixels has IoU/F1 ``nan`` and is left out of the
    means (mmsegmentation's ``nanmean``). ``exclude_from_mean`` leaves further classes out of mIoU and
    mF1 (e.g. ISPRS "clutter"); OA always counts every non-ignored pixel.
    """
    m = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    m = m.astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {m.shape}")
    k = m.shape[0]
    tp = np.diag(m)
    total = m.sum()
    per_class = class_scores(tp, m.sum(axis=0), m.sum(axis=1))
    iou, f1, acc = per_class.iou, per_class.f1, per_class.recall
    keep = np.ones(k, dtype=bool)
    keep[list(exclude_from_mean)] = False
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    return SegmentationScores(
        miou=nanmean(iou[keep]),
        oa=float(tp.sum() / total) if total > 0 else math.nan,
        mf1=nanmean(f1[keep]),
        per_class_iou=[float(v) for v in iou],
        per_class_f1=[float(v) for v in f1],
        per_class_acc=[float(v) for v in acc],
        class_names=names,
        num_pixels=int(total),
    )


def format_table(scores: SegmentationScores) -> str:
    """Plain-text table: one row per class (IoU, F1, accuracy in %), then mIoU / OA / mF1."""
    width = max([5, *(len(n) for n in scores.class_names)])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'F1':>6}  {'Acc':>6}", "-" * (width + 26)]

    def pct(v: float) -> str:
        return "   nan" if math.isnan(v) else f"{100 * v:6.2f}"

    for name, iou, f1, acc in zip(
        scores.class_names, scores.per_class_iou, scores.per_class_f1, scores.per_class_acc, strict=True
    ):
        lines.append(f"{name:<{width}}  {pct(iou)}  {pct(f1)}  {pct(acc)}")
    lines.append("-" * (width + 26))
    lines.append(
        f"mIoU {pct(scores.miou)}   OA {pct(scores.oa)}   mF1 {pct(scores.mf1)}   "
        f"({scores.num_pixels} pixels)"
    )
    return "\n".join(lines)


class ConfusionMatrixMetric(Metric):
    """torchmetrics wrapper that sums :func:`confusion_matrix` over batches and, under DDP, over processes."""

    full_state_update = False
    cm: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "cm", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(self.cm.device)

    def compute(self) -> torch.Tensor:
        return self.cm
