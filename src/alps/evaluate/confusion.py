"""One confusion-matrix core for every score in alps: pseudo-labels and trained networks.

As in mmsegmentation, scores are computed once from a histogram accumulated over a whole dataset,
never averaged per image. :func:`bincount_2d` accumulates the histogram (NumPy or torch, on the
tensor's device); :func:`class_scores` turns per-class true positives, predicted and actual pixel counts
into IoU / F1 / recall; :func:`best_union_iou` is the oracle ceiling "best IoU of any union of rows"
(clusters or masks) used by the pseudo-label diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # label evaluation must not pay for importing torch
    import torch

__all__ = ["ClassScores", "best_union_iou", "bincount_2d", "class_scores", "nanmean"]

FloatArray = npt.NDArray[np.float64]


@overload
def bincount_2d(rows: torch.Tensor, cols: torch.Tensor, num_rows: int, num_cols: int) -> torch.Tensor: ...


@overload
def bincount_2d(
    rows: npt.NDArray[np.integer], cols: npt.NDArray[np.integer], num_rows: int, num_cols: int
) -> npt.NDArray[np.int64]: ...


def bincount_2d(
    rows: npt.NDArray[np.integer] | torch.Tensor,
    cols: npt.NDArray[np.integer] | torch.Tensor,
    num_rows: int,
    num_cols: int,
) -> npt.NDArray[np.int64] | torch.Tensor:
    """``(num_rows, num_cols)`` int64 histogram of ``(rows[i], cols[i])`` pairs.

    Args:
        rows, cols: 1-D integer ids of equal length, already filtered to ``[0, num_rows)`` and
            ``[0, num_cols)`` (ids out of range are an error, not silently dropped). Both NumPy
            arrays, or both torch tensors (the result is then a tensor on ``rows``' device).
    """
    if type(rows) is not type(cols) and not (isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray)):
        raise TypeError("rows and cols must both be NumPy arrays or both torch tensors")
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"rows {tuple(rows.shape)} and cols {tuple(cols.shape)} must be 1-D of equal length")
    if isinstance(rows, np.ndarray):
        r = rows.astype(np.int64, copy=False)
        c = np.asarray(cols).astype(np.int64, copy=False)
        _check_range(r, num_rows, "row")
        _check_range(c, num_cols, "column")
        flat = r * num_cols + c
        return np.bincount(flat, minlength=num_rows * num_cols).reshape(num_rows, num_cols).astype(np.int64)
    import torch

    assert isinstance(cols, torch.Tensor)
    r_t, c_t = rows.long(), cols.long().to(rows.device)
    if r_t.numel() and (int(r_t.min()) < 0 or int(r_t.max()) >= num_rows):
        raise ValueError(f"row ids must lie in [0, {num_rows})")
    if c_t.numel() and (int(c_t.min()) < 0 or int(c_t.max()) >= num_cols):
        raise ValueError(f"column ids must lie in [0, {num_cols})")
    counts = torch.bincount(r_t * num_cols + c_t, minlength=num_rows * num_cols)
    return counts.reshape(num_rows, num_cols)


def _check_range(ids: npt.NDArray[np.int64], size: int, what: str) -> None:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= size):
        raise ValueError(f"{what} ids must lie in [0, {size}), got [{int(ids.min())}, {int(ids.max())}]")


@dataclass(frozen=True)
class ClassScores:
    """Per-class scores, ``(C,)`` float64 each, fractions in [0, 1], NaN where undefined.

    Attributes:
        iou: ``TP / (predicted + actual - TP)``; NaN when the class is neither predicted nor present.
        f1: ``2 TP / (predicted + actual)``; NaN under the same condition.
        recall: ``TP / actual`` (per-class accuracy); NaN when the class is absent from the truth.
    """

    iou: FloatArray
    f1: FloatArray
    recall: FloatArray


def class_scores(tp: npt.ArrayLike, predicted: npt.ArrayLike, actual: npt.ArrayLike) -> ClassScores:
    """IoU, F1 and recall per class from ``(C,)`` counts of true positives, predicted and actual pixels.

    ``actual`` may count pixels that were never predicted at all (e.g. unlabeled pseudo-label pixels):
    they lower IoU and recall of the class they belong to.
    """
    t = np.asarray(tp, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if not t.shape == p.shape == a.shape:
        raise ValueError(f"tp {t.shape}, predicted {p.shape} and actual {a.shape} must have one shape")
    union = p + a - t
    both = p + a
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, t / np.where(union > 0, union, 1), np.nan)
        f1 = np.where(both > 0, 2 * t / np.where(both > 0, both, 1), np.nan)
        recall = np.where(a > 0, t / np.where(a > 0, a, 1), np.nan)
    return ClassScores(iou=iou, f1=f1, recall=recall)


def nanmean(values: npt.ArrayLike) -> float:
    """Mean of the finite entries (NaN when there is none): mmsegmentation's ``nanmean``."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    return float(finite.mean()) if finite.size else float("nan")


def best_union_iou(confusion: npt.ArrayLike, unlabeled: npt.ArrayLike | None = None) -> FloatArray:
    """Per class, the best IoU any union of rows can reach (an oracle that picks the rows for each class).

    Rows are clusters (the cluster ceiling) or individual masks (the mask ceiling). For class ``c`` a
    set ``S`` of rows has ``IoU(S) = TP(S) / (P(S) + G - TP(S))`` with ``TP`` the pixels of ``c`` in the
    rows, ``P`` all their pixels and ``G`` all pixels of ``c`` (unlabeled ones included). Maximising
    this ratio of sums is exact over the prefixes of the rows sorted by precision ``TP/P``
    (Dinkelbach: the optimum keeps exactly the rows whose precision beats the optimal IoU), so the
    greedy prefix scan below is the true optimum, not an approximation.

    Args:
        confusion: ``(R, C)`` pixels of row r with ground-truth class c.
        unlabeled: ``(C,)`` pixels of each class that no row covers (zeros when None).

    Returns:
        ``(C,)`` float64 IoU ceilings; NaN for a class with no pixels.
    """
    conf = np.asarray(confusion, dtype=np.float64)
    if conf.ndim != 2:
        raise ValueError(f"confusion must be 2-D, got shape {conf.shape}")
    unl = np.zeros(conf.shape[1]) if unlabeled is None else np.asarray(unlabeled, dtype=np.float64)
    if unl.shape != (conf.shape[1],):
        raise ValueError(f"unlabeled must have shape {(conf.shape[1],)}, got {unl.shape}")
    sizes = conf.sum(axis=1)
    out = np.full(conf.shape[1], np.nan)
    for c in range(conf.shape[1]):
        gt_total = conf[:, c].sum() + unl[c]
        if gt_total <= 0:
            continue
        rows = np.flatnonzero(conf[:, c] > 0)
        if rows.size == 0:
            out[c] = 0.0
            continue
        precision = conf[rows, c] / sizes[rows]
        order = rows[np.argsort(-precision, kind="stable")]
        tp = np.cumsum(conf[order, c])
        pred = np.cumsum(sizes[order])
        out[c] = float(np.max(tp / (pred + gt_total - tp)))
    return out
