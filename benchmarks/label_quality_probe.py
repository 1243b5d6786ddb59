"""How much of the class do the mask features carry? A linear probe per feature source, and an oracle check.

Reads the LiteMedSAM mask tables that ``benchmarks/label_quality.py --work DIR`` caches (trees and
medical sets) and, per feature source of label_quality (``sam``, ``sam+stats``,
``cnn:efficientnet_lite0``), fits a ridge regression (``sklearn.linear_model.RidgeCV``) from a mask's
feature vector to the share of its pixels that are foreground (tree / lesion), weighted by mask area.
Reported: the area-weighted R² on held-out masks

* **within**: 5-fold over all masks of the labelled images pooled (the images seen in training);
* **across**: leave one group out (one NEON tile, one pyradiomics case), the other groups train.

R² <= 0 means the feature says nothing about the class beyond the mean on that split. The
**oracle** row clusters the foreground share itself (one number per mask, the set's K, mini-batch
as ``alps label``) and reports its cluster ceiling: what K clusters allow when the features carry
the class. If it reaches the mask ceiling while the real features stay far below it, the gap of
label_quality's ablation is in the features, not in the clustering or in K.

The **per-image normalisation** rows test the obvious remedy for features that do not carry the class
from one site to the next: each image's mask features centred (``|c``) or standardised per dimension
(``|z``, then scaled by ``1/sqrt(dim)``) within the image before clustering, for every feature source
and for the colour / texture / size / shape statistics alone (``stats``), mini-batch + 20 Lloyd
passes, cluster ceiling mean ± std over the seeds.

    python benchmarks/label_quality_probe.py --work /tmp/lq/work --out label_quality_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, KFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
import label_quality as lq
from _common import emit, machine_info

SETS = (("trees", ("not tree", "tree"), 46), ("medical", ("not lesion", "lesion"), 16))
RESULTS = Path(__file__).resolve().parent / "results" / "label_quality_probe.json"


def group_of(image_id: str) -> str:
    """The site of an image: a NEON tile is its own; a medical slice its case (``brain1_z0013``)."""
    return image_id.split("_z")[0] if "_z" in image_id else image_id


def weighted_r2(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    mean = np.average(y, weights=w)
    return float(1.0 - np.sum(w * (y - pred) ** 2) / np.sum(w * (y - mean) ** 2))


def probe(x: np.ndarray, y: np.ndarray, w: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Area-weighted R² of held-out predictions, every mask predicted once."""
    pred = np.zeros_like(y)
    for train, test in splits:
        model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(x[train], y[train], sample_weight=w[train])
        pred[test] = model.predict(x[test])
    return weighted_r2(y, pred, w)


def centred(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0, keepdims=True)).astype(np.float32) if len(x) else x


def standardised(x: np.ndarray) -> np.ndarray:
    if len(x) < 2:
        return x
    z = (x - x.mean(0, keepdims=True)) / (x.std(0, keepdims=True) + 1e-6)
    return (z / np.sqrt(x.shape[1])).astype(np.float32)


def normalisation_rows(
    images: list[Any], data: Any, out: Path, k: int, seeds: list[int]
) -> dict[str, dict[str, float]]:
    """Cluster ceiling (foreground, %) per feature source, raw / centred / standardised per image."""
    from PIL import Image

    from alps.labeling.features import mask_statistics
    from alps.labeling.table import read_mask_table, table_rles

    for im in images:
        rgb = np.asarray(Image.open(data.images / f"{im.id}.png").convert("RGB"))
        table = read_mask_table(out / "tables" / f"{im.id}.parquet")
        im.features["stats"] = mask_statistics(rgb, table_rles(table))
    rows: dict[str, dict[str, float]] = {}
    for feature in (*lq.FEATURES, "stats"):
        for suffix, fn in (("", None), ("|c", centred), ("|z", standardised)):
            name = feature + suffix
            if fn is not None:
                for im in images:
                    im.features[name] = fn(im.features[feature])
            ceilings = [lq.score(images, name, k, seed, 20, 1)["cluster_ceiling"] for seed in seeds]
            rows[name] = {
                "mean": round(100 * float(np.mean(ceilings)), 1),
                "std": round(100 * float(np.std(ceilings)), 1),
            }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="label_quality.py's --work directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name, classes, k in SETS:
        data = lq.LabelSet(name, args.work / name, classes)
        out = data.root / "label_sam"
        if not sorted((out / "tables").glob("*.parquet")):
            raise SystemExit(f"no mask tables under {out}: run label_quality.py --work {args.work} first")
        images = lq.load_images(data, out, list(lq.FEATURES), "sam")
        labelled = [im for im in images if im.mask_conf is not None and len(im.mask_conf)]
        conf = np.concatenate([im.mask_conf for im in labelled]).astype(np.float64)
        area = conf.sum(1)
        share = conf[:, 1] / np.maximum(area, 1.0)
        groups = np.concatenate([[group_of(im.id)] * len(im.mask_conf) for im in labelled])
        within = list(KFold(5, shuffle=True, random_state=0).split(share))
        across = list(GroupKFold(len(set(groups))).split(share, groups=groups))
        entry: dict[str, Any] = {
            "clusters": k,
            "masks": len(share),
            "groups": sorted(set(groups.tolist())),
            "probe_r2": {},
        }
        for feature in lq.FEATURES:
            x = np.concatenate([im.features[feature] for im in labelled]).astype(np.float64)
            entry["probe_r2"][feature] = {
                "within": round(probe(x, share, area, within), 3),
                "across": round(probe(x, share, area, across), 3),
            }
        # oracle: each mask's own foreground share as its only feature (0 for images without GT)
        for im in images:
            if im.mask_conf is not None and len(im.mask_conf):
                c = im.mask_conf.astype(np.float64)
                im.features["oracle"] = (c[:, 1] / np.maximum(c.sum(1), 1.0))[:, None].astype(np.float32)
            else:
                im.features["oracle"] = np.zeros((len(im.clusters), 1), np.float32)
        runs = [lq.score(images, "oracle", k, seed, 0, 1) for seed in args.seeds]
        summary = lq.summarise(runs)
        entry["oracle"] = {key: summary[key] for key in ("mask_ceiling", "cluster_ceiling", "iou_majority")}
        entry["per_image_normalisation"] = normalisation_rows(images, data, out, k, args.seeds)
        results[name] = entry
        print(json.dumps({name: entry}), file=sys.stderr, flush=True)
    emit(
        {
            "benchmark": "label_quality_probe",
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info(),
            "target": "per-mask foreground share (tree / lesion pixels / mask pixels), area-weighted",
            "results": results,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
