"""Quality of pseudo-labels against ground truth, with the unsupervised-segmentation protocol.

Clusters carry no class names, so each metric first maps clusters to ground-truth classes:

* **Hungarian** (``miou_hungarian``): the one-to-one cluster -> class matching that maximises the
  number of agreeing pixels (:func:`scipy.optimize.linear_sum_assignment` on the confusion matrix).
  With K = C every cluster gets a class. With K != C the matching is the best one of ``min(K, C)``
  pairs (rectangular assignment): pixels of unmatched clusters count as predicting no class (wrong
  for the GT class they cover), and unmatched GT classes get IoU 0 wherever they occur.
* **Majority** (``miou_majority``, ``pixel_accuracy``, ``per_class_iou``): every cluster -> the GT class
  most of its pixels belong to (several clusters may share a class; ties go to the lower class id).

All metrics are dataset-level, computed once from a confusion matrix accumulated over every image
(as mmsegmentation does), never averages of per-image scores. IoU of class c is
``TP / (predicted as c + GT of c - TP)``; pixels left unlabeled by the pseudo-labels (value 255) count
in "GT of c", i.e. as wrong for the class they cover. mIoU is the mean over classes whose IoU is defined
(a class neither present in the GT nor predicted has no IoU). ``pixel_accuracy`` is measured over
labelled pixels only; ``pixel_accuracy_all`` counts unlabeled pixels as wrong
(= ``pixel_accuracy * coverage``). ``coverage`` is the share of non-ignored GT pixels that received a
pseudo-label. Undefined values are ``None`` so the dict serialises to strict JSON.

Diagnosis (:func:`diagnose`, ``alps evaluate-labels`` when the mask tables are at hand): where is the
quality lost, per GT class?

* **mask ceiling** (masks): the IoU an oracle reaches by giving every painted mask region its own
  best class — the best IoU of any union of masks. What the masks allow at all.
* **cluster ceiling** (features + clustering): the best IoU of any union of *clusters* (an oracle
  picks the clusters for the class). Mask ceiling minus cluster ceiling is lost because the
  features put masks of different classes into the same clusters.
* **IoU** (mapping): what the majority / Hungarian mapping of clusters to classes reaches. Cluster
  ceiling minus IoU is lost in the mapping.
* **not covered**: the share of the class's pixels that no mask covers (unlabeled), and overall coverage.

Both ceilings are exact optima (:func:`alps.evaluate.confusion.best_union_iou`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from alps.evaluate.confusion import best_union_iou, bincount_2d, class_scores, nanmean
from alps.labeling.paint import label_value_to_cluster, load_label_png, paint_label_map

__all__ = [
    "accumulate_confusion",
    "diagnose",
    "evaluate_label_dirs",
    "format_diagnosis",
    "format_report",
    "mask_confusion",
    "metrics_from_confusion",
    "pair_label_files",
]

Confusion = npt.NDArray[np.int64]


def accumulate_confusion(
    pred: npt.ArrayLike,
    gt: npt.ArrayLike,
    num_pred: int,
    num_gt: int,
    *,
    ignore_index: int = 255,
    confusion: Confusion | None = None,
    unlabeled: Confusion | None = None,
) -> Confusion:
    """Add one image to a cluster x class confusion matrix.

    Args:
        pred: ``(H, W)`` pseudo-label map as written by :func:`alps.labeling.paint.paint_label_map`
            (255 = unlabeled; uint16 values above 255 are cluster id + 1).
        gt: ``(H, W)`` ground-truth class ids; ``ignore_index`` pixels are skipped entirely.
        num_pred: number of clusters K (rows); a cluster id ``>= K`` is an error.
        num_gt: number of GT classes C (columns); a GT id ``>= C`` (other than ignore) is an error.
        ignore_index: GT value to skip.
        confusion: ``(K, C)`` int64 matrix to add to in place (a new one when None).
        unlabeled: optional ``(C,)`` int64 array; unlabeled pred pixels are counted into it in place
            per GT class (they are never part of the confusion matrix).

    Returns:
        The ``(K, C)`` int64 confusion matrix: ``[k, c]`` = pixels of cluster k whose GT class is c.
    """
    p = np.asarray(pred)
    g = np.asarray(gt).astype(np.int64, copy=False)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    if confusion is None:
        confusion = np.zeros((num_pred, num_gt), dtype=np.int64)
    elif confusion.shape != (num_pred, num_gt):
        raise ValueError(f"confusion has shape {confusion.shape}, expected {(num_pred, num_gt)}")
    valid = g != ignore_index
    gv = g[valid]
    pc = label_value_to_cluster(p[valid])
    if gv.size and (gv.min() < 0 or gv.max() >= num_gt):
        raise ValueError(f"ground-truth ids must lie in [0, {num_gt}) or equal {ignore_index}")
    if pc.size and pc.max() >= num_pred:
        raise ValueError(f"cluster id {int(pc.max())} >= num_pred={num_pred}")
    labelled = pc >= 0
    confusion += bincount_2d(pc[labelled], gv[labelled], num_pred, num_gt)
    if unlabeled is not None:
        if unlabeled.shape != (num_gt,):
            raise ValueError(f"unlabeled has shape {unlabeled.shape}, expected {(num_gt,)}")
        unlabeled += np.bincount(gv[~labelled], minlength=num_gt)
    return confusion


def _or_none(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _class_iou(
    confusion: npt.NDArray[np.int64], unlabeled: npt.NDArray[np.int64], assign: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per-class IoU when cluster k predicts class ``assign[k]`` (-1 = no class).

    Returns:
        ``(C,)`` IoU (NaN where undefined) and ``(C,)`` true positives.
    """
    num_gt = confusion.shape[1]
    class_conf = np.zeros((num_gt, num_gt), dtype=np.int64)  # predicted class x GT class
    mapped = assign >= 0
    np.add.at(class_conf, assign[mapped], confusion[mapped])
    tp = np.diag(class_conf).copy()
    iou = class_scores(tp, class_conf.sum(axis=1), confusion.sum(axis=0) + unlabeled).iou
    return iou, tp


def metrics_from_confusion(
    confusion: npt.ArrayLike, unlabeled: npt.ArrayLike | None = None
) -> dict[str, Any]:
    """All pseudo-label metrics from an accumulated confusion matrix (see module docstring).

    Args:
        confusion: ``(K, C)`` pixels of cluster k with GT class c (labelled pixels only).
        unlabeled: ``(C,)`` unlabeled pixels per GT class (zeros when None).

    Returns:
        ``miou_hungarian``, ``miou_majority``, ``pixel_accuracy``, ``pixel_accuracy_all``, ``coverage``,
        ``per_class_iou`` (majority), ``per_class_iou_hungarian``, ``majority_mapping`` and
        ``hungarian_matching`` (cluster -> class, only clusters with pixels / matched clusters),
        ``num_clusters``, ``num_classes``, ``labelled_pixels``, ``unlabeled_pixels``.
    """
    conf = np.asarray(confusion, dtype=np.int64)
    if conf.ndim != 2:
        raise ValueError(f"confusion must be 2-D, got shape {conf.shape}")
    num_pred, num_gt = conf.shape
    unl = np.zeros(num_gt, dtype=np.int64) if unlabeled is None else np.asarray(unlabeled, dtype=np.int64)
    if unl.shape != (num_gt,):
        raise ValueError(f"unlabeled must have shape {(num_gt,)}, got {unl.shape}")
    labelled = int(conf.sum())
    total = labelled + int(unl.sum())

    has_pixels = conf.sum(axis=1) > 0
    majority = np.where(has_pixels, conf.argmax(axis=1) if num_gt else -1, -1).astype(np.int64)
    iou_major, tp_major = _class_iou(conf, unl, majority)

    hungarian = np.full(num_pred, -1, dtype=np.int64)
    if num_pred and num_gt:
        rows, cols = linear_sum_assignment(conf, maximize=True)
        hungarian[rows] = cols
    iou_hung, _ = _class_iou(conf, unl, hungarian)

    correct = int(tp_major.sum())
    return {
        "miou_hungarian": _or_none(nanmean(iou_hung)),
        "miou_majority": _or_none(nanmean(iou_major)),
        "pixel_accuracy": _or_none(correct / labelled) if labelled else None,
        "pixel_accuracy_all": _or_none(correct / total) if total else None,
        "coverage": _or_none(labelled / total) if total else None,
        "per_class_iou": {c: _or_none(float(v)) for c, v in enumerate(iou_major)},
        "per_class_iou_hungarian": {c: _or_none(float(v)) for c, v in enumerate(iou_hung)},
        "majority_mapping": {k: int(c) for k, c in enumerate(majority) if c >= 0},
        "hungarian_matching": {k: int(c) for k, c in enumerate(hungarian) if c >= 0},
        "num_clusters": num_pred,
        "num_classes": num_gt,
        "labelled_pixels": labelled,
        "unlabeled_pixels": total - labelled,
    }


def _index(root: Path, suffix: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in root.rglob(f"*{suffix}"):
        if path.is_file():
            found[path.relative_to(root).as_posix()[: -len(suffix)]] = path
    return found


def pair_label_files(
    pred_dir: Path, gt_dir: Path, *, pred_suffix: str = ".png", gt_suffix: str = ".png"
) -> tuple[list[tuple[str, Path, Path]], dict[str, list[str]]]:
    """Pair prediction and GT files by relative path without the suffix.

    Returns:
        Sorted ``(key, pred_path, gt_path)`` triples and ``{"pred_only": [...], "gt_only": [...]}``.
    """
    preds = _index(Path(pred_dir), pred_suffix)
    gts = _index(Path(gt_dir), gt_suffix)
    pairs = [(key, preds[key], gts[key]) for key in sorted(preds.keys() & gts.keys())]
    missing = {"pred_only": sorted(preds.keys() - gts.keys()), "gt_only": sorted(gts.keys() - preds.keys())}
    return pairs, missing


def _grow(matrix: Confusion, rows: int, cols: int) -> Confusion:
    if matrix.shape[0] >= rows and matrix.shape[1] >= cols:
        return matrix
    bigger = np.zeros((max(rows, matrix.shape[0]), max(cols, matrix.shape[1])), dtype=np.int64)
    bigger[: matrix.shape[0], : matrix.shape[1]] = matrix
    return bigger


def evaluate_label_dirs(
    pred_dir: Path,
    gt_dir: Path,
    *,
    num_gt_classes: int | None = None,
    ignore_index: int = 255,
    num_clusters: int | None = None,
    pred_suffix: str = ".png",
    gt_suffix: str = ".png",
    tables_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a directory of pseudo-label PNGs against a directory of GT label PNGs.

    Files are paired by relative path with ``pred_suffix`` / ``gt_suffix`` removed
    (``labels/a/b.png`` <-> ``gt/a/b.png`` by default). Both maps of a pair must have the same size.

    Args:
        pred_dir: pseudo-labels (:func:`alps.labeling.paint.save_label_png`).
        gt_dir: GT class ids, single channel (grey or palette PNG).
        num_gt_classes: C; inferred as the largest GT id seen + 1 when None.
        ignore_index: GT value to skip.
        num_clusters: K; inferred as the largest cluster id seen + 1 when None.
        pred_suffix, gt_suffix: file-name endings that are stripped to pair files.
        tables_dir: the mask tables of the label run (``DIR/tables``, ``<image id>.parquet`` where the
            image id is the label file's name); adds ``diagnosis`` (:func:`diagnose`).
        progress: show a tqdm bar.

    Returns:
        :func:`metrics_from_confusion` plus ``num_images`` and ``missing``
        (``{"pred_only": [...], "gt_only": [...]}``); the ``confusion`` and ``unlabeled`` counts are
        included as nested lists so a report can be recomputed.

    Raises:
        ValueError: no file pairs were found, or sizes/ids are inconsistent.
    """
    pairs, missing = pair_label_files(pred_dir, gt_dir, pred_suffix=pred_suffix, gt_suffix=gt_suffix)
    if not pairs:
        raise ValueError(
            f"no label files to compare: {len(missing['pred_only'])} only in {pred_dir}, "
            f"{len(missing['gt_only'])} only in {gt_dir}"
        )
    confusion = np.zeros((num_clusters or 0, num_gt_classes or 0), dtype=np.int64)
    unlabeled = np.zeros(num_gt_classes or 0, dtype=np.int64)
    gts: list[tuple[str, npt.NDArray[Any]]] = []
    for key, pred_path, gt_path in tqdm(pairs, desc="evaluating", unit="image", disable=not progress):
        pred = load_label_png(pred_path)
        gt = load_label_png(gt_path)
        if tables_dir is not None:
            gts.append((key, gt))
        if pred.shape != gt.shape:
            raise ValueError(f"{key}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
        clusters = label_value_to_cluster(pred)
        gt_ids = gt[gt != ignore_index]
        rows = int(clusters.max()) + 1 if clusters.size else 0
        cols = int(gt_ids.max()) + 1 if gt_ids.size else 0
        if num_clusters is not None and rows > num_clusters:
            raise ValueError(f"{key}: cluster id {rows - 1} >= num_clusters={num_clusters}")
        if num_gt_classes is not None and cols > num_gt_classes:
            raise ValueError(f"{key}: GT id {cols - 1} >= num_gt_classes={num_gt_classes}")
        confusion = _grow(confusion, rows, cols)
        if unlabeled.shape[0] < confusion.shape[1]:
            unlabeled = np.concatenate(
                [unlabeled, np.zeros(confusion.shape[1] - unlabeled.shape[0], np.int64)]
            )
        accumulate_confusion(
            pred,
            gt,
            confusion.shape[0],
            confusion.shape[1],
            ignore_index=ignore_index,
            confusion=confusion,
            unlabeled=unlabeled,
        )
    metrics = metrics_from_confusion(confusion, unlabeled)
    metrics["num_images"] = len(pairs)
    metrics["missing"] = missing
    metrics["confusion"] = confusion.tolist()
    metrics["unlabeled"] = unlabeled.tolist()
    if tables_dir is not None:
        mask_rows: list[Confusion] = []
        mask_unlabeled = np.zeros(confusion.shape[1], dtype=np.int64)
        for key, gt in gts:
            table = Path(tables_dir) / f"{Path(key).name}.parquet"
            if not table.is_file():
                raise ValueError(
                    f"{key}: no mask table {table} (is --tables the label run's tables/ folder?)"
                )
            conf, unl = mask_confusion(table, gt, confusion.shape[1], ignore_index=ignore_index)
            mask_rows.append(conf)
            mask_unlabeled += unl
        masks = np.concatenate(mask_rows) if mask_rows else np.zeros((0, confusion.shape[1]), np.int64)
        metrics["diagnosis"] = diagnose(confusion, unlabeled, masks, mask_unlabeled)
    return metrics


def mask_confusion(
    table: Path | str, gt: npt.ArrayLike, num_gt: int, *, ignore_index: int = 255
) -> tuple[Confusion, Confusion]:
    """Mask x class confusion of one image: every mask of its table painted as its own region.

    Masks are painted as :func:`alps.labeling.paint.paint_label_map` paints them (largest first, so a
    pixel belongs to the smallest mask covering it), i.e. the regions the label map is made of.

    Args:
        table: the image's mask table (:mod:`alps.labeling.table`).
        gt: ``(H, W)`` GT class ids of the same image; ``ignore_index`` pixels are skipped.
        num_gt: number of GT classes C.

    Returns:
        ``(N, C)`` int64 pixels of mask n with class c (N = masks in the table) and ``(C,)`` int64
        pixels of each class no mask covers.
    """
    from alps.labeling.table import read_mask_table, table_rles

    data = read_mask_table(table)
    g = np.asarray(gt)
    rles = table_rles(data)
    n = len(rles)
    unlabeled = np.zeros(num_gt, dtype=np.int64)
    painted = paint_label_map(
        g.shape[0],
        g.shape[1],
        rles,
        np.arange(n),
        areas=data.column("area").to_numpy(),
        num_clusters=max(n, 1),
    )
    return accumulate_confusion(
        painted, g, n, num_gt, ignore_index=ignore_index, unlabeled=unlabeled
    ), unlabeled


def diagnose(
    confusion: npt.ArrayLike,
    unlabeled: npt.ArrayLike,
    mask_confusion_rows: npt.ArrayLike,
    mask_unlabeled: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """Where pseudo-label quality is lost, per GT class (see the module docstring).

    Args:
        confusion: ``(K, C)`` cluster x class pixels; ``unlabeled``: ``(C,)`` unlabeled pixels per class.
        mask_confusion_rows: ``(N, C)`` mask x class pixels of every mask of the dataset (rows of
            :func:`mask_confusion` stacked over images).
        mask_unlabeled: ``(C,)`` pixels no mask covers (``unlabeled`` when None).

    Returns:
        ``per_class``: ``{c: {"mask_ceiling", "cluster_ceiling", "iou_majority", "iou_hungarian",
        "not_covered"}}`` (fractions, ``None`` where undefined), their means ``mean_*`` over classes,
        ``coverage`` and ``num_masks``.
    """
    conf = np.asarray(confusion, dtype=np.int64)
    unl = np.asarray(unlabeled, dtype=np.int64)
    rows = np.asarray(mask_confusion_rows, dtype=np.int64)
    mask_unl = unl if mask_unlabeled is None else np.asarray(mask_unlabeled, dtype=np.int64)
    metrics = metrics_from_confusion(conf, unl)
    ceilings = {"mask_ceiling": best_union_iou(rows, mask_unl), "cluster_ceiling": best_union_iou(conf, unl)}
    gt_total = rows.sum(axis=0) + mask_unl
    with np.errstate(divide="ignore", invalid="ignore"):
        not_covered = np.where(gt_total > 0, mask_unl / np.maximum(gt_total, 1), np.nan)
    per_class: dict[int, dict[str, float | None]] = {}
    for c in range(conf.shape[1]):
        per_class[c] = {
            "mask_ceiling": _or_none(float(ceilings["mask_ceiling"][c])),
            "cluster_ceiling": _or_none(float(ceilings["cluster_ceiling"][c])),
            "iou_majority": metrics["per_class_iou"][c],
            "iou_hungarian": metrics["per_class_iou_hungarian"][c],
            "not_covered": _or_none(float(not_covered[c])),
        }
    means = {
        f"mean_{name}": _or_none(
            nanmean(np.array([np.nan if v[name] is None else v[name] for v in per_class.values()]))
        )
        for name in ("mask_ceiling", "cluster_ceiling", "iou_majority", "iou_hungarian")
    }
    return {"per_class": per_class, **means, "coverage": metrics["coverage"], "num_masks": int(rows.shape[0])}


def format_diagnosis(diagnosis: dict[str, Any], *, class_names: Sequence[str] | None = None) -> str:
    """The diagnosis as one small table: masks / features+clustering / mapping, per class."""
    per_class = diagnosis.get("per_class") or {}
    names = [
        class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(c)
        for c in per_class
    ]
    name_w = max(5, *(len(n) for n in names)) if names else 5
    head = f"{'class':<{name_w}}  mask ceil.  cluster ceil.  IoU maj.  IoU Hung.  not covered"
    lines = [
        "Where quality is lost: masks (mask ceiling) / features+clustering (cluster ceiling) / mapping (IoU)",
        head,
    ]
    for name, values in zip(names, per_class.values(), strict=True):
        lines.append(
            f"{name:<{name_w}}  {_pct(values['mask_ceiling']):>10}  {_pct(values['cluster_ceiling']):>13}  "
            f"{_pct(values['iou_majority']):>8}  {_pct(values['iou_hungarian']):>9}  "
            f"{_pct(values['not_covered']):>11}"
        )
    lines.append(
        f"{'mean':<{name_w}}  {_pct(diagnosis.get('mean_mask_ceiling')):>10}  "
        f"{_pct(diagnosis.get('mean_cluster_ceiling')):>13}  {_pct(diagnosis.get('mean_iou_majority')):>8}  "
        f"{_pct(diagnosis.get('mean_iou_hungarian')):>9}"
    )
    lines.append(
        f"({diagnosis.get('num_masks', '?')} masks, coverage {_pct(diagnosis.get('coverage')).strip()} %)"
    )
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):6.2f}"


def format_report(metrics: dict[str, Any], *, class_names: Sequence[str] | None = None) -> str:
    """Human-readable table of :func:`evaluate_label_dirs` / :func:`metrics_from_confusion` output."""
    lines = []
    header = "Pseudo-label quality"
    if "num_images" in metrics:
        header += f" on {metrics['num_images']} images"
    header += f" ({metrics.get('num_clusters', '?')} clusters, {metrics.get('num_classes', '?')} GT classes)"
    lines += [header, "-" * len(header)]
    rows = [
        ("mIoU, Hungarian matching", metrics.get("miou_hungarian")),
        ("mIoU, majority mapping", metrics.get("miou_majority")),
        ("pixel accuracy (labelled px)", metrics.get("pixel_accuracy")),
        ("pixel accuracy (all px)", metrics.get("pixel_accuracy_all")),
        ("coverage", metrics.get("coverage")),
    ]
    width = max(len(name) for name, _ in rows)
    lines += [f"{name:<{width}}  {_pct(value)} %" for name, value in rows]
    missing = metrics.get("missing")
    if missing:
        lines.append(
            f"{'unpaired files':<{width}}  {len(missing.get('pred_only', []))} prediction-only, "
            f"{len(missing.get('gt_only', []))} GT-only"
        )
    per_class = metrics.get("per_class_iou") or {}
    if per_class:
        hung = metrics.get("per_class_iou_hungarian") or {}
        names = [
            class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(c)
            for c in per_class
        ]
        name_w = max(5, *(len(n) for n in names))
        lines += ["", f"{'class':<{name_w}}  IoU maj.  IoU Hung."]
        for name, (c, value) in zip(names, per_class.items(), strict=True):
            lines.append(f"{name:<{name_w}}  {_pct(value):>8}  {_pct(hung.get(c)):>9}")
    return "\n".join(lines)
