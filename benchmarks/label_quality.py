"""Pseudo-label quality on the DeepForest tree boxes: SAM masks vs the SLIC baseline (``alps label``).

Reproduce (the full run; JSON on stdout and in the file)::

    python benchmarks/label_quality.py --out label_quality.json

Ground truth: the hand-drawn tree-crown boxes of the NEON sample images
(:func:`alps.samples.neon.sample_tree_boxes`) rasterised per image into a two-class map, 1 = tree (inside any
box, whatever its label: ``Tree``, or ``Alive``/``Dead`` for SOAP_061), 0 = not tree. Boxes are a coarse
proxy for crowns: a box also covers ground in its corners and in gaps between branches, so even a perfect
crown segmentation scores below 100 %; compare methods with each other, not with 100 %. Images
without box annotations (SOAP_031) are labelled with the others (the clustering is unsupervised and sees
the whole collection) but are left out of the evaluation; the output names them.

Pseudo-labels: :func:`alps.labeling.run.label` with the real LiteMedSAM weights (``model="litemedsam"``,
its default box-grid prompts and generator thresholds) and with ``masks="slic"`` (SLIC superpixels,
``n_segments = points_per_side**2``, features pooled from the same LiteMedSAM embedding), for each K in
``--clusters`` (same seed). The mask tables are computed once per method; other K values re-use them
(``alps label`` only re-runs clustering and painting when only K changes). Each run's
``labels/train/<id>.png`` is scored with :func:`alps.evaluate.labels.evaluate_label_dirs` (the same code as
``alps evaluate-labels``) against ``gt/<id>.png``: Hungarian and majority mIoU, pixel accuracy over
labelled pixels, coverage, per-class IoU (0 = not tree, 1 = tree).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine_info
from alps.evaluate.labels import evaluate_label_dirs
from alps.labeling.run import label
from alps.samples.neon import TreeBox, sample_images, sample_tree_boxes

METHODS = {"sam": {"masks": "sam"}, "slic": {"masks": "slic"}}
KEYS = (
    "miou_hungarian",
    "miou_majority",
    "pixel_accuracy",
    "pixel_accuracy_all",
    "coverage",
    "per_class_iou",
    "per_class_iou_hungarian",
    "num_clusters",
    "num_images",
    "labelled_pixels",
    "unlabeled_pixels",
)


def rasterise_boxes(boxes: list[TreeBox], height: int, width: int) -> np.ndarray:
    """``(H, W)`` uint8 map: 1 inside any box (``xmax``/``ymax`` exclusive), 0 elsewhere."""
    gt = np.zeros((height, width), dtype=np.uint8)
    for b in boxes:
        x0, y0 = max(b.xmin, 0), max(b.ymin, 0)
        x1, y1 = min(b.xmax, width), min(b.ymax, height)
        if x1 > x0 and y1 > y0:
            gt[y0:y1, x0:x1] = 1
    return gt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="first N sample images (max 4)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--clusters", type=int, nargs="+", default=[46, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--keep", type=Path, default=None, help="keep all outputs under this directory")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    paths = sample_images()[: args.images]
    boxes = sample_tree_boxes()
    root = Path(tempfile.mkdtemp(prefix="label_quality_")) if args.keep is None else args.keep
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    gt_info: dict[str, Any] = {}
    skipped: list[str] = []
    try:
        gt_dir = root / "gt"
        gt_dir.mkdir(exist_ok=True)
        for method in args.methods:
            out = root / method
            results[method] = {}
            for k in args.clusters:
                start = time.perf_counter()
                run = label(
                    paths,
                    out,
                    model="litemedsam",
                    clusters=k,
                    points_per_side=args.points_per_side,
                    seed=args.seed,
                    device=args.device,
                    progress=False,
                    **METHODS[method],
                )
                seconds = time.perf_counter() - start
                # GT named by the ids alps gave the images, so the pairs are exact
                for rec in run.ok:
                    name = Path(rec.source).name
                    if name not in boxes:
                        if rec.id not in skipped:
                            skipped.append(rec.id)
                        continue
                    gt_path = gt_dir / f"{rec.id}.png"
                    if not gt_path.exists():
                        assert rec.height is not None and rec.width is not None
                        gt = rasterise_boxes(boxes[name], rec.height, rec.width)
                        Image.fromarray(gt).save(gt_path)
                        gt_info[rec.id] = {
                            "boxes": len(boxes[name]),
                            "size": [rec.height, rec.width],
                            "tree_fraction": round(float(gt.mean()), 4),
                        }
                splits = {Path(r.label).parent.name for r in run.ok if r.label}
                if splits != {"train"}:
                    raise RuntimeError(f"expected every label in labels/train, got splits {sorted(splits)}")
                metrics = evaluate_label_dirs(
                    out / "labels" / "train", gt_dir, num_gt_classes=2, num_clusters=max(run.clusters, 1)
                )
                results[method][f"K={k}"] = {
                    **{key: metrics.get(key) for key in KEYS},
                    "clusters_requested": k,
                    "clusters_used": run.clusters,
                    "masks_per_image": {r.id: [r.n_masks, r.n_masks_kept] for r in run.ok},
                    "masks_per_image_note": "[generated, kept by the area gate]",
                    "evaluated": sorted(gt_info),
                    "not_evaluated": metrics["missing"]["pred_only"],
                    "seconds": round(seconds, 2),
                    "tables_reused": all(r.resumed for r in run.ok),
                    "warnings": run.warnings,
                }
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    tree_px = sum(g["tree_fraction"] * g["size"][0] * g["size"][1] for g in gt_info.values())
    all_px = sum(g["size"][0] * g["size"][1] for g in gt_info.values())
    report = {
        "benchmark": "label_quality",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(),
        "model": "litemedsam (real weights), default prompts (box grid) and generator thresholds",
        "settings": {
            "points_per_side": args.points_per_side,
            "slic_n_segments": args.points_per_side**2,
            "clusters": args.clusters,
            "seed": args.seed,
            "images": [p.name for p in paths],
        },
        "ground_truth": {
            "source": "DeepForest sample tree boxes (deepforest==2.1.0); 1 = inside any box, 0 = not",
            "classes": {"0": "not tree", "1": "tree"},
            "images": gt_info,
            "tree_pixel_fraction": round(tree_px / all_px, 4) if all_px else None,
            "skipped_no_boxes": skipped,
            "note": "boxes are a coarse proxy for crowns (box corners and gaps count as tree): "
            "compare methods with each other, not with 100 %",
        },
        "results": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
