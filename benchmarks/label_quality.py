"""Pseudo-label quality ablation: where is quality lost (masks, features, clustering), and what wins it back.

Reproduce (about 15 min on 2 quiet cores; JSON on stdout and in ``benchmarks/results/label_quality.json``)::

    python benchmarks/label_quality.py

Data sets (two classes each; the clustering is unsupervised and sees every image of its set):

* **trees**: the four NEON sample tiles (:func:`alps.samples.neon.sample_images`); GT = the hand-drawn
  tree-crown boxes (:func:`alps.samples.neon.sample_tree_boxes`) rasterised to 1 = tree (inside any box),
  0 = not tree, on the three tiles that have boxes (SOAP_031 is labelled but not scored). Boxes are a
  coarse proxy for crowns (box corners and gaps count as tree): compare methods, not with 100 %.
* **medical**: ``--per-case`` lesion slices (evenly spaced among the slices holding lesion, axis k, the
  robust 0.5-99.5 % window) of each of the five pyradiomics volumes (:func:`alps.samples.sample_volumes`);
  GT 1 = lesion, 0 = not lesion.

Protocol: ``alps label`` (LiteMedSAM, real weights, box-grid prompts) runs **once per mask source** —
``sam`` (LiteMedSAM masks) and ``slic`` (SLIC superpixels, ``n_segments = points_per_side**2``, the
paper's baseline) — into ``--work`` (re-runs resume). Everything after the masks is then redone from
the mask tables: features (:func:`alps.labeling.features.mask_features`: ``sam`` from the tables,
``sam+stats`` and ``cnn:efficientnet_lite0`` from the images and the tables' masks) × clustering
variant (:func:`alps.labeling.cluster.fit_kmeans`: mini-batch only = today's ``alps label``; + Lloyd
refinement; + restarts) × seeds. Label maps are the masks painted as ``alps label`` paints them
(largest first) with the cluster of each mask, so the cluster x class confusion is the sum of the
per-mask confusion rows of each cluster (checked against ``alps label``'s own label PNGs for the
mini-batch ``sam`` fit of the label seed, whose clusters it reproduces exactly).

Scores (:func:`alps.evaluate.labels.diagnose`, as ``alps evaluate-labels --tables``): for the
foreground class (tree / lesion) the **mask ceiling** (best IoU of any union of masks: what the masks
allow), the **cluster ceiling** (best IoU of any union of clusters: what features + clustering keep)
and the IoU of the majority mapping; and the majority / Hungarian mIoU over both classes. Mean ± std
over ``--seeds``. Unlabeled pixels count as wrong.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine_info
from alps.evaluate.labels import diagnose, evaluate_label_dirs, mask_confusion
from alps.labeling.cluster import ArrayFeatures, fit_kmeans, sorted_tables
from alps.labeling.features import cnn_features, combine_stats, mask_statistics
from alps.labeling.run import label
from alps.labeling.table import read_mask_table, table_features, table_image_id, table_rles
from alps.samples.medical import sample_volumes
from alps.samples.neon import TreeBox, sample_images, sample_tree_boxes

METHODS = {"sam": {"masks": "sam"}, "slic": {"masks": "slic"}}
FEATURES = ("sam", "sam+stats", "cnn:efficientnet_lite0")
# name -> (refine_passes, restarts)
VARIANTS = {"mini-batch": (0, 1), "+lloyd": (20, 1), "+lloyd+restarts": (20, 4)}
RESULTS = Path(__file__).resolve().parent / "results" / "label_quality.json"


def rasterise_boxes(boxes: list[TreeBox], height: int, width: int) -> np.ndarray:
    """``(H, W)`` uint8 map: 1 inside any box (``xmax``/``ymax`` exclusive), 0 elsewhere."""
    gt = np.zeros((height, width), dtype=np.uint8)
    for b in boxes:
        x0, y0 = max(b.xmin, 0), max(b.ymin, 0)
        x1, y1 = min(b.xmax, width), min(b.ymax, height)
        if x1 > x0 and y1 > y0:
            gt[y0:y1, x0:x1] = 1
    return gt


@dataclass(frozen=True)
class LabelSet:
    """Images to label and the GT of those that have one: ``root/images/<id>.png``, ``root/gt/<id>.png``."""

    name: str
    root: Path
    classes: tuple[str, str]

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def gt(self) -> Path:
        return self.root / "gt"


def prepare_trees(root: Path, images: int = 4) -> LabelSet:
    """NEON tiles (all labelled, unsupervised) and tree / not-tree GT rasterised from the boxes."""
    boxes = sample_tree_boxes()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    for path in sample_images()[:images]:
        target = root / "images" / f"{path.stem}.png"
        if not target.exists():
            Image.open(path).convert("RGB").save(target)
        if path.name in boxes and not (root / "gt" / target.name).exists():
            width, height = Image.open(target).size
            Image.fromarray(rasterise_boxes(boxes[path.name], height, width)).save(root / "gt" / target.name)
    return LabelSet("trees", root, ("not tree", "tree"))


def prepare_medical(root: Path, per_case: int = 4) -> LabelSet:
    """``per_case`` lesion slices (evenly spaced among the slices with lesion) of each pyradiomics case.

    Slices along k with the robust 0.5-99.5 % window of each volume, as ``alps label`` does;
    GT 1 = lesion, 0 = not lesion.
    """
    from alps.medical.volume import Window, apply_window, read_label_volume, read_volume, slice_2d, slice_id

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    for case in sample_volumes():
        volume = read_volume(case.image)
        lesion = read_label_volume(case.label) > 0
        low, high = Window().bounds(volume.data)
        with_lesion = np.flatnonzero(lesion.any(axis=(0, 1)))
        picks = with_lesion[np.linspace(0, with_lesion.size - 1, per_case + 2).round().astype(int)[1:-1]]
        for z in sorted(set(picks.tolist())):
            name = f"{slice_id(case.id, 2, z)}.png"
            if not (root / "images" / name).exists():
                grey = apply_window(slice_2d(volume.data, 2, z), low, high)
                Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(root / "images" / name)
                Image.fromarray(slice_2d(lesion, 2, z).astype(np.uint8)).save(root / "gt" / name)
    return LabelSet("medical", root, ("not lesion", "lesion"))


def label_source(data: LabelSet, source: str, points_per_side: int, clusters: int, seed: int = 0) -> Path:
    """Run ``alps label`` once per mask source (resumed when already done); returns its output folder."""
    out = data.root / f"label_{source}"
    label(
        [data.images],
        out,
        model="litemedsam",
        clusters=clusters,
        points_per_side=points_per_side,
        seed=seed,
        features="sam",  # the tables carry the SAM embedding; every other source is derived from them
        progress=False,
        **METHODS[source],
    )
    return out


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image of a set: its mask table, its features per source, its mask x class confusion."""

    id: str
    features: dict[str, np.ndarray]
    mask_conf: np.ndarray | None  # (N, 2), None when the image has no GT
    mask_unl: np.ndarray | None  # (2,)
    clusters: np.ndarray  # (N,) the cluster column alps label wrote


def load_images(data: LabelSet, out: Path, features: list[str], masks: str) -> list[LabelledImage]:
    """Read the tables of a label run, compute each feature source and the GT confusion per mask."""
    loaded = []
    for path in sorted_tables(list((out / "tables").glob("*.parquet"))):
        table = read_mask_table(path)
        image_id = table_image_id(table)
        gt_path = data.gt / f"{image_id}.png"
        conf = unl = None
        if gt_path.exists():
            conf, unl = mask_confusion(path, np.asarray(Image.open(gt_path)), 2)
        sam = table_features(table)
        feats = {"sam": sam}
        needs_image = [f for f in features if f != "sam"] if masks == "sam" else []
        if needs_image:  # also for tables without masks: (0, D) keeps every table in the source
            rgb = np.asarray(Image.open(data.images / f"{image_id}.png").convert("RGB"))
            rles = table_rles(table)
            for kind in needs_image:
                if kind == "sam+stats":
                    feats[kind] = combine_stats(sam, mask_statistics(rgb, rles))
                else:
                    feats[kind] = cnn_features(kind.split(":", 1)[1], rgb, rles)
        loaded.append(LabelledImage(image_id, feats, conf, unl, table.column("cluster").to_numpy()))
    return loaded


def score(
    images: list[LabelledImage], feature: str, k: int, seed: int, refine: int, restarts: int
) -> dict[str, Any]:
    """Cluster all masks of a set, paint, and diagnose against the GT (foreground = class 1)."""
    # every table, empty ones too, in table order: the same source as alps label's TableFeatures
    source = ArrayFeatures(tuple(im.features[feature] for im in images))
    start = time.perf_counter()
    model = fit_kmeans(source, k, seed=seed, refine_passes=refine, restarts=restarts, progress=False)
    seconds = time.perf_counter() - start
    conf = np.zeros((model.k_effective, 2), dtype=np.int64)
    unl = np.zeros(2, dtype=np.int64)
    rows = []
    for im in images:
        if im.mask_conf is None or im.mask_unl is None:
            continue
        np.add.at(conf, model.predict(im.features[feature]), im.mask_conf)
        unl += im.mask_unl
        rows.append(im.mask_conf)
    diag = diagnose(conf, unl, np.concatenate(rows), unl)
    fg = diag["per_class"][1]
    return {
        "mask_ceiling": fg["mask_ceiling"],
        "cluster_ceiling": fg["cluster_ceiling"],
        "iou_majority": fg["iou_majority"],
        "miou_majority": diag["mean_iou_majority"],
        "miou_hungarian": diag["mean_iou_hungarian"],
        "coverage": diag["coverage"],
        "not_covered": fg["not_covered"],
        "inertia": model.inertia,
        "fit_seconds": round(seconds, 2),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std (population over seeds) of every score; the runs themselves are kept."""
    out: dict[str, Any] = {}
    for key in ("mask_ceiling", "cluster_ceiling", "iou_majority", "miou_majority", "miou_hungarian"):
        values = [float(r[key]) for r in runs if r[key] is not None]
        out[key] = {"mean": round(statistics.fmean(values), 4), "std": round(statistics.pstdev(values), 4)}
    out["runs"] = runs
    return out


def check_reproduces_alps_label(images: list[LabelledImage], out: Path, k: int, seed: int) -> None:
    """Our mini-batch ``sam`` fit of the label seed gives alps label's clusters, our confusion its PNGs'."""
    model = fit_kmeans(
        ArrayFeatures(tuple(im.features["sam"] for im in images)), k, seed=seed, progress=False
    )
    for im in images:
        if not np.array_equal(model.predict(im.features["sam"]), im.clusters):
            raise RuntimeError(f"{im.id}: re-clustering does not reproduce alps label's clusters")
    conf = np.zeros((model.k_effective, 2), dtype=np.int64)
    for im in images:
        if im.mask_conf is not None:
            np.add.at(conf, im.clusters, im.mask_conf)
    gt_dir = out.parent / "gt"
    evaluated = evaluate_label_dirs(
        out / "labels" / "train", gt_dir, num_gt_classes=2, num_clusters=model.k_effective
    )
    if evaluated["confusion"] != conf.tolist():
        raise RuntimeError("confusion from the mask rows differs from alps evaluate-labels on the PNGs")


def run_set(data: LabelSet, args: argparse.Namespace, points: int, k: int) -> dict[str, Any]:
    result: dict[str, Any] = {"clusters": k, "points_per_side": points, "masks": {}}
    for masks in ("sam", "slic"):
        start = time.perf_counter()
        out = label_source(data, masks, points, k, seed=args.label_seed)
        label_seconds = time.perf_counter() - start
        features = args.features if masks == "sam" else ["sam"]
        start = time.perf_counter()
        images = load_images(data, out, features, masks)
        feature_seconds = time.perf_counter() - start
        check_reproduces_alps_label(images, out, k, args.label_seed)
        per_source: dict[str, Any] = {
            "label_seconds": round(label_seconds, 1),
            "feature_seconds": round(feature_seconds, 1),
            "num_masks": int(sum(len(im.clusters) for im in images)),
            "images": [im.id for im in images],
            "scored": [im.id for im in images if im.mask_conf is not None],
        }
        for feature in features:
            per_source[feature] = {}
            for name in args.variants:
                refine, restarts = VARIANTS[name]
                runs = [score(images, feature, k, seed, refine, restarts) for seed in args.seeds]
                per_source[feature][name] = summarise(runs)
                print(
                    f"{data.name} {masks} {feature} {name}: {summary_line(per_source[feature][name])}",
                    file=sys.stderr,
                )
        result["masks"][masks] = per_source
    return result


def summary_line(entry: dict[str, Any]) -> str:
    return "  ".join(
        f"{key} {entry[key]['mean']:.3f}±{entry[key]['std']:.3f}"
        for key in ("mask_ceiling", "cluster_ceiling", "iou_majority", "miou_majority")
    )


def targets(result: dict[str, Any], default: tuple[str, str]) -> dict[str, Any]:
    """The issue's targets for the recommended default (feature, variant) on one set."""
    sam = result["masks"]["sam"]
    today = sam["sam"]["mini-batch"]
    best = sam[default[0]][default[1]]
    slic = result["masks"]["slic"]["sam"]["mini-batch"]
    ceiling = today["mask_ceiling"]["mean"]
    gap_today = ceiling - today["cluster_ceiling"]["mean"]
    gap_best = ceiling - best["cluster_ceiling"]["mean"]
    margin = best["cluster_ceiling"]["mean"] - slic["cluster_ceiling"]["mean"]
    one_std = max(best["cluster_ceiling"]["std"], slic["cluster_ceiling"]["std"])
    return {
        "default": f"{default[0]}, {default[1]}",
        "gap_today": round(gap_today, 4),
        "gap_default": round(gap_best, 4),
        "gap_closed_fraction": round(1 - gap_best / gap_today, 4) if gap_today > 0 else None,
        "halves_the_gap": bool(gap_best <= gap_today / 2),
        "cluster_ceiling_minus_slic": round(margin, 4),
        "one_std": round(one_std, 4),
        "beats_slic_by_more_than_one_std": bool(margin > one_std),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "alps_label_quality")
    parser.add_argument("--sets", nargs="+", default=["trees", "medical"], choices=["trees", "medical"])
    parser.add_argument("--images", type=int, default=4, help="first N NEON sample images (max 4)")
    parser.add_argument("--per-case", type=int, default=3, help="lesion slices per medical case")
    parser.add_argument("--trees-points", type=int, default=32, help="box grid per side (trees)")
    parser.add_argument("--medical-points", type=int, default=8, help="box grid per side (medical)")
    parser.add_argument("--trees-clusters", type=int, default=46)
    parser.add_argument("--medical-clusters", type=int, default=16)
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label-seed", type=int, default=0, help="seed of the alps label runs")
    parser.add_argument("--default-feature", default="sam+stats", choices=list(FEATURES))
    parser.add_argument("--default-variant", default="mini-batch", choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="only merge earlier outputs (e.g. one per --sets)"
    )
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = {**parts[0], "merged_from": [p["command"] for p in parts]}
        for key in ("results", "targets"):
            merged[key] = {name: v for p in parts for name, v in p[key].items()}
        merged["wall_seconds"] = round(sum(p["wall_seconds"] for p in parts), 1)
        emit(merged, args.out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    if "trees" in args.sets:
        trees = prepare_trees(args.work / "trees", images=args.images)
        results["trees"] = run_set(trees, args, args.trees_points, args.trees_clusters)
    if "medical" in args.sets:
        medical = prepare_medical(args.work / "medical", per_case=args.per_case)
        results["medical"] = run_set(medical, args, args.medical_points, args.medical_clusters)
    default = (args.default_feature, args.default_variant)
    report = {
        "benchmark": "label_quality",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(),
        "model": "litemedsam (real weights), default prompts (box grid) and generator thresholds",
        "variants": {name: {"refine_passes": r, "restarts": n} for name, (r, n) in VARIANTS.items()},
        "seeds": args.seeds,
        "scores": "foreground class (tree / lesion): mask ceiling, cluster ceiling, IoU (majority); "
        "mIoU over both classes (majority, Hungarian); mean and population std over seeds",
        "results": results,
        "targets": {name: targets(r, default) for name, r in results.items()},
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
