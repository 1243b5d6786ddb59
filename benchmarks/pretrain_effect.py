"""Does ALPS pre-training help? Tree / not-tree segmentation on the deepforest sample imagery.

Benchmark
    The deepforest package's aerial RGB samples; tree boxes rasterised into tree / not-tree maps
    (boxes, so the "tree" class is blocky: a coarse target, the same for every method). Split by
    image: train = 2019_YELL_2_528000_4978000_image_crop2 + OSBS_029, test =
    2019_YELL_2_541000_4977000_image_crop + SOAP_061. Images are rescaled by ``--scale`` and cut
    into ``--tile`` px tiles.

Pre-training data (all sample imagery, labels unused: SOAP_031 has none)
    alps    ``alps label`` (SAM masks -> features -> k-means) pseudo-labels, ``--clusters`` classes
    slic    the same pipeline with SLIC superpixels instead of SAM masks (``masks="slic"``)
    binary  the ALPS masks without their clusters: 1 where any kept mask lies, 0 elsewhere

Protocol
    One pre-training run per pseudo-label source; then fine-tuning with ``--fractions`` of the
    labelled training tiles (deterministic subsets) and ``--seeds`` seeds, plus the same from random
    initialisation; dataset-level mIoU on the test tiles. Output: ``OUT/results.json`` with every
    run and mean ± std per (method, fraction), and a printed table.

Defaults are sized for under an hour on 2 CPU cores (measured: 34 min; U-Net/ResNet-18, 128 px tiles, 300
pre-training and 100 fine-tuning steps); ``--quick`` is a minutes-long smoke run of the plumbing.
Finished runs are skipped on a re-run (delete ``OUT/runs`` to redo them).

    python benchmarks/pretrain_effect.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from _common import cpu_train_config
from alps.labeling.config import LabelConfig
from alps.samples.neon import TREE_CLASSES, TreeImage, rasterize_boxes, tree_images
from alps.train.config import TrainConfig
from alps.train.data import read_image, read_label, write_tiles
from alps.train.run import evaluate, train

log = logging.getLogger("alps.benchmarks.pretrain_effect")

TRAIN_IMAGES = ("2019_YELL_2_528000_4978000_image_crop2", "OSBS_029")
TEST_IMAGES = ("2019_YELL_2_541000_4977000_image_crop", "SOAP_061")
METHODS = ("random", "alps", "slic", "binary")


@dataclass
class Settings:
    out: Path
    methods: tuple[str, ...] = METHODS
    fractions: tuple[float, ...] = (0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    scale: float = 0.5
    tile: int = 128
    arch: str = "unet"
    encoder: str = "resnet18"
    batch_size: int = 8
    pretrain_steps: int = 300
    finetune_steps: int = 100
    lr: float = 3e-4
    clusters: int = 16
    features: str = LabelConfig().features  # alps label's default feature source
    sam_model: str = "litemedsam"
    sam_checkpoint: str | None = None
    points_per_side: int = 16
    num_workers: int = 1


# ----------------------------------------------------------------------------------------- data


def build_tree_benchmark(samples: dict[str, TreeImage], root: Path, s: Settings) -> Path:
    """mmseg layout ``img_dir/{train,val}``, ``ann_dir/{train,val}`` of tiles, 0 = not tree, 1 = tree."""
    if (root / "classes.json").is_file():
        return root
    for split, ids in (("train", TRAIN_IMAGES), ("val", TEST_IMAGES)):
        for image_id in ids:
            sample = samples[image_id]
            assert sample.boxes is not None
            image = read_image(sample.image)
            label = rasterize_boxes(sample.boxes, image.shape[:2])
            write_tiles(
                image, label, root / "img_dir" / split, root / "ann_dir" / split, image_id, s.tile, s.scale
            )
    (root / "classes.json").write_text(json.dumps(dict(enumerate(TREE_CLASSES))))
    return root


def write_scaled_inputs(samples: dict[str, TreeImage], folder: Path, scale: float) -> Path:
    """Every sample image rescaled like the benchmark tiles, as PNG: the input of ``alps label``."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for image_id, sample in samples.items():
        dest = folder / f"{image_id}.png"
        if not dest.exists():
            image = read_image(sample.image)
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            Image.fromarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA)).save(dest)
    return folder


def pseudo_label(inputs: Path, out: Path, masks: str, s: Settings) -> tuple[dict[str, Path], int]:
    """Adapter to ``alps.labeling.run.label``: returns ``{image id: label map path}`` and the class count.

    Kept small on purpose: if the labelling API changes, only this function needs fixing.
    """
    from alps.labeling.run import label

    run = label(
        inputs,
        out,
        model=s.sam_model,
        checkpoint=s.sam_checkpoint,
        clusters=s.clusters,
        features=s.features,
        masks=masks,
        points_per_side=s.points_per_side,
        val_fraction=0.0,
        progress=False,
    )
    maps = {r.id: out / r.label for r in run.ok if r.label}
    if not maps:  # older/newer layouts: fall back to the files on disk
        maps = {p.stem: p for p in sorted((out / "labels").rglob("*.png"))}
    manifest = json.loads((out / "manifest.json").read_text())
    return maps, int(manifest.get("num_classes") or run.clusters)


def build_pretrain_dataset(
    inputs: Path, labels: dict[str, Path], root: Path, num_classes: int, s: Settings, binary: bool = False
) -> Path:
    """alps layout (flat ``images/`` + ``labels/`` of tiles, manifest) from full-image pseudo-labels."""
    if (root / "manifest.json").is_file():
        return root
    for image_id, label_path in labels.items():
        image = read_image(inputs / f"{image_id}.png")
        label = read_label(label_path)
        if binary:  # covered by a kept mask or not; no unlabeled pixels remain
            label = (label != 255).astype(np.uint16)
        write_tiles(
            image,
            label.astype(np.uint8 if num_classes <= 255 else np.uint16),
            root / "images",
            root / "labels",
            image_id,
            s.tile,
        )
    k = 2 if binary else num_classes
    (root / "manifest.json").write_text(json.dumps({"num_classes": k, "ignore_index": 255}))
    return root


# ----------------------------------------------------------------------------------------- runs


def base_config(s: Settings, data: Path, out: Path, steps: int, seed: int) -> TrainConfig:
    config: TrainConfig = cpu_train_config(
        s,
        data,
        out,
        crop=s.tile,
        steps=steps,
        seed=seed,
        scale_min=0.75,
        scale_max=1.5,
        vflip=True,
        val_every=0,
    )
    return config


def run_finetune(
    s: Settings, method: str, fraction: float, seed: int, trees: Path, pretrained: dict[str, Path]
) -> dict[str, Any]:
    out = s.out / "runs" / f"ft_{method}_f{fraction:g}_s{seed}"
    scores_path = out / "scores.json"
    if scores_path.is_file():
        return dict(json.loads(scores_path.read_text()))
    start = time.perf_counter()
    config = base_config(s, trees, out, s.finetune_steps, seed)
    config = config.replace(label_fraction=fraction, val_every=-1)  # scored by evaluate() below
    if method == "random":
        result = train(config.replace(mode="pretrain"))  # from scratch on the labelled tiles
    else:
        result = train(config.replace(mode="finetune", init=str(pretrained[method])))
    scores = evaluate(result.checkpoint, trees, split="val", device="cpu")
    record = {
        "method": method,
        "fraction": fraction,
        "seed": seed,
        "miou": scores.miou,
        "oa": scores.oa,
        "mf1": scores.mf1,
        "per_class_iou": scores.per_class_iou,
        "seconds": round(time.perf_counter() - start, 1),
    }
    scores_path.write_text(json.dumps(record, indent=1))
    return record


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {fraction: {miou_mean, miou_std, n}}}`` (std over seeds, 0 for a single seed)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        for fraction in sorted({r["fraction"] for r in records if r["method"] == method}):
            values = [r["miou"] for r in records if r["method"] == method and r["fraction"] == fraction]
            summary.setdefault(method, {})[f"{fraction:g}"] = {
                "miou_mean": statistics.fmean(values),
                "miou_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
            }
    return summary


def format_summary(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    fractions = sorted({f for per in summary.values() for f in per}, key=float)
    lines = [f"{'method':<8}" + "".join(f"  {'mIoU @ ' + f:>16}" for f in fractions)]
    for method, per in summary.items():
        cells = []
        for f in fractions:
            cell = per.get(f)
            cells.append(f"{100 * cell['miou_mean']:6.2f} ± {100 * cell['miou_std']:5.2f}" if cell else "-")
        lines.append(f"{method:<8}" + "".join(f"  {c:>16}" for c in cells))
    return "\n".join(lines)


def run_benchmark(s: Settings) -> dict[str, Any]:
    s.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    samples = {x.id: x for x in tree_images()}
    trees = build_tree_benchmark(samples, s.out / "trees", s)
    timings["data"] = time.perf_counter() - clock

    pretrained: dict[str, Path] = {}
    needs = [m for m in s.methods if m != "random"]
    if needs:
        inputs = write_scaled_inputs(samples, s.out / "pseudo_inputs", s.scale)
        sources = {"alps": "sam", "binary": "sam", "slic": "slic"}
        labelled: dict[str, tuple[dict[str, Path], int]] = {}
        for masks in dict.fromkeys(sources[m] for m in needs):
            clock = time.perf_counter()
            labelled[masks] = pseudo_label(inputs, s.out / f"label_{masks}", masks, s)
            timings[f"label_{masks}"] = time.perf_counter() - clock
        for method in needs:
            maps, k = labelled[sources[method]]
            data = build_pretrain_dataset(
                inputs, maps, s.out / f"pretrain_data_{method}", k, s, binary=method == "binary"
            )
            run_dir = s.out / "runs" / f"pre_{method}"
            clock = time.perf_counter()
            if not (run_dir / "model.ckpt").is_file():
                train(base_config(s, data, run_dir, s.pretrain_steps, seed=0).replace(mode="pretrain"))
            timings[f"pretrain_{method}"] = time.perf_counter() - clock
            pretrained[method] = run_dir / "model.ckpt"

    records = []
    clock = time.perf_counter()
    for fraction in s.fractions:
        for method in s.methods:
            for seed in s.seeds:
                record = run_finetune(s, method, fraction, seed, trees, pretrained)
                log.info("%s fraction=%g seed=%d: mIoU %.4f", method, fraction, seed, record["miou"])
                records.append(record)
    timings["finetune"] = time.perf_counter() - clock
    summary = summarise(records)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}
    result = {
        "settings": settings,
        "train_images": TRAIN_IMAGES,
        "test_images": TEST_IMAGES,
        "summary": summary,
        "runs": records,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (s.out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench_pretrain_effect"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=Settings.lr, help="peak learning rate (AdamW, cosine)")
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument(
        "--features", default=Settings.features, help="pseudo-label features (alps label --features)"
    )
    parser.add_argument("--sam-model", default="litemedsam")
    parser.add_argument("--sam-checkpoint", default=None, help="weights file; 'random' for plumbing tests")
    parser.add_argument("--points-per-side", type=int, default=16, help="SAM prompt grid (ALPS: 32)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 seed, 64 px tiles, a few steps, coarse prompt grid"
    )
    args = parser.parse_args(argv)
    for name in ("alps", "alps.benchmarks"):  # Lightning logs through its own handler already
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler())
        logger.propagate = False
    s = Settings(
        out=args.out,
        methods=tuple(args.methods),
        fractions=tuple(args.fractions),
        seeds=tuple(args.seeds),
        scale=args.scale,
        tile=args.tile,
        arch=args.arch,
        encoder=args.encoder,
        batch_size=args.batch_size,
        lr=args.lr,
        pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps,
        clusters=args.clusters,
        features=args.features,
        sam_model=args.sam_model,
        sam_checkpoint=args.sam_checkpoint,
        points_per_side=args.points_per_side,
    )
    if args.quick:
        s.seeds, s.tile, s.scale, s.batch_size = s.seeds[:1], 64, 0.2, 4
        s.pretrain_steps, s.finetune_steps, s.points_per_side, s.clusters = 4, 3, 8, 6
    result = run_benchmark(s)
    print(format_summary(result["summary"]))
    print(f"timings (s): {result['timings_s']}")
    print(f"results: {s.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
