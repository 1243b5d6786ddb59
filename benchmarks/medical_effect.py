"""Does ALPS pre-training help on medical volumes? Lesion segmentation on the pyradiomics CT/MR cases.

Data
    The five pyradiomics test cases (``alps.samples.medical.sample_volumes``: brain1, brain2, breast1 MR;
    lung1, lung2 CT), each a volume with one lesion mask. Slices along k, robust 0.5-99.5 % window,
    the documented empty-slice rule (:mod:`alps.medical.volume`).

Protocol
    1. ``alps label`` pseudo-labels every ``--slice-step``-th slice (default 2: 89 of 178) of all
       five volumes with LiteMedSAM (real weights, box grid ``--points-per-side``, ``--clusters``
       k-means classes). No mask is used here; the test patients' images are among the unlabeled
       inputs (transductive, as in ALPS).
    2. Pre-training on those pseudo-labels (U-Net / ResNet-18, ``--crop`` px crops).
    3. Fine-tuning on the lesion slices (slices whose mask holds lesion) of the training patients,
       split by patient (default: train = brain1, breast1, lung1; test = brain2, lung2), from the
       ALPS pre-trained network and from random initialisation, ``--seeds`` seeds each.
    4. Scores on the test patients' lesion slices: lesion IoU, mIoU (lesion, background) from one
       accumulated confusion matrix; mean ± std over seeds.

Defaults take about 18 minutes on 2 CPU cores (measured); ``--quick`` is a minutes-long smoke run of
the plumbing (random SAM weights, a few steps). Finished runs are skipped on a re-run (delete
``WORK/runs`` to redo them). Prints JSON and writes ``benchmarks/results/medical_effect.json``.

    python benchmarks/medical_effect.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import cpu_train_config, emit, machine_info
from alps.samples.medical import CASES, MedicalCase, sample_volumes
from alps.train.config import TrainConfig
from alps.train.run import evaluate, train

log = logging.getLogger("alps.benchmarks.medical_effect")

RESULTS = Path(__file__).resolve().parent / "results" / "medical_effect.json"
METHODS = ("random", "alps")


@dataclass
class Settings:
    work: Path
    test_cases: tuple[str, ...] = ("brain2", "lung2")
    seeds: tuple[int, ...] = (0, 1, 2)
    crop: int = 128
    arch: str = "unet"
    encoder: str = "resnet18"
    batch_size: int = 8
    pretrain_steps: int = 300
    finetune_steps: int = 150
    lr: float = 3e-4
    clusters: int = 16
    points_per_side: int = 8
    sam_checkpoint: str | None = None  # None: the real LiteMedSAM weights; "random" for plumbing runs
    masks: str = "sam"  # "slic" only for the --quick plumbing run
    slice_step: int = 2
    num_workers: int = 0


def build_lesion_dataset(cases: dict[str, MedicalCase], root: Path, test_cases: Sequence[str]) -> Path:
    """nnU-Net layout with links to the volumes: imagesTr/labelsTr (train), imagesTs/labelsTs (test)."""
    for case in cases.values():
        split = "Ts" if case.id in test_cases else "Tr"
        for kind, source, name in (
            ("images", case.image, f"{case.id}_0000.nii.gz"),
            ("labels", case.label, f"{case.id}.nii.gz"),
        ):
            dest = root / f"{kind}{split}" / name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(source.resolve(), dest)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    return root


def pseudo_label(cases: dict[str, MedicalCase], out: Path, s: Settings) -> dict[str, Any]:
    """``alps label`` on every ``slice_step``-th slice of each volume (LiteMedSAM); a summary of the run."""
    import nibabel as nib

    from alps.labeling.run import label

    inputs = []
    for case in cases.values():
        path = s.work / "pseudo_inputs" / f"{case.id}.nii.gz"
        if not path.exists():
            image: Any = nib.load(str(case.image))
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(image.slicer[:, :, :: s.slice_step], str(path))  # the slicer keeps the affine right
        inputs.append(path)
    run = label(
        inputs,
        out,
        masks=s.masks,
        model="litemedsam",
        checkpoint=s.sam_checkpoint,
        clusters=s.clusters,
        points_per_side=s.points_per_side,
        val_fraction=0.0,
        progress=False,
    )
    return {
        "slices": len(run.ok),
        "failed": len(run.failed),
        "clusters": run.clusters,
        "masks_kept": sum(r.n_masks_kept for r in run.ok),
        "labelled_pixels": round(
            sum(r.n_labelled_pixels for r in run.ok)
            / max(1, sum((r.height or 0) * (r.width or 0) for r in run.ok)),
            4,
        ),
        "timings_s": run.timings,
    }


def base_config(s: Settings, data: Path, out: Path, steps: int, seed: int) -> TrainConfig:
    config: TrainConfig = cpu_train_config(
        s,
        data,
        out,
        crop=s.crop,
        steps=steps,
        seed=seed,
        scale_min=0.75,
        scale_max=1.25,
        val_every=-1,
        val_fraction=0.0,
        eval_stride=s.crop,  # non-overlapping windows at evaluation: 2.3x fewer forward passes
    )
    return config


def run_finetune(
    s: Settings, method: str, seed: int, lesions: Path, pretrained: Path | None
) -> dict[str, Any]:
    out = s.work / "runs" / f"ft_{method}_s{seed}"
    scores_path = out / "scores.json"
    if scores_path.is_file():
        return dict(json.loads(scores_path.read_text()))
    start = time.perf_counter()
    config = base_config(s, lesions, out, s.finetune_steps, seed).replace(
        volume_slices="labelled",
        num_classes=2,
        loss="ce+dice",  # lesions are ~1 % of a slice
    )
    if method == "random":
        result = train(config.replace(mode="pretrain"))  # from scratch on the lesion slices
    else:
        result = train(config.replace(mode="finetune", init=str(pretrained)))
    scores = evaluate(result.checkpoint, lesions, split="test", device="cpu", volume_slices="labelled")
    record = {
        "method": method,
        "seed": seed,
        "lesion_iou": scores.per_class_iou[1],
        "miou": scores.miou,
        "oa": scores.oa,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    scores_path.write_text(json.dumps(record, indent=1))
    return record


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{method: {lesion_iou_mean, lesion_iou_std, miou_mean, miou_std, n}}`` (std over seeds)."""
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        entry: dict[str, float] = {"n": len(rows)}
        for key in ("lesion_iou", "miou"):
            values = [float(r[key]) for r in rows]
            entry[f"{key}_mean"] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out[method] = entry
    return out


def run_benchmark(s: Settings) -> dict[str, Any]:
    s.work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    cases = {c.id: c for c in sample_volumes()}
    unknown = sorted(set(s.test_cases) - set(CASES))
    if unknown or set(s.test_cases) == set(CASES):
        raise ValueError(f"test cases must be a proper subset of {list(CASES)}, got {list(s.test_cases)}")
    lesions = build_lesion_dataset(cases, s.work / "lesions", s.test_cases)
    timings["data"] = time.perf_counter() - clock

    clock = time.perf_counter()
    labelling = pseudo_label(cases, s.work / "pseudo", s)
    timings["label"] = time.perf_counter() - clock

    clock = time.perf_counter()
    pre = s.work / "runs" / "pre_alps"
    if not (pre / "model.ckpt").is_file():
        train(base_config(s, s.work / "pseudo", pre, s.pretrain_steps, seed=0).replace(mode="pretrain"))
    timings["pretrain"] = time.perf_counter() - clock

    records = []
    clock = time.perf_counter()
    for method in METHODS:
        for seed in s.seeds:
            record = run_finetune(s, method, seed, lesions, pre / "model.ckpt")
            log.info(
                "%s seed=%d: lesion IoU %.4f, mIoU %.4f", method, seed, record["lesion_iou"], record["miou"]
            )
            records.append(record)
    timings["finetune"] = time.perf_counter() - clock
    train_cases = [c for c in CASES if c not in s.test_cases]
    return {
        "benchmark": "medical_effect",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
        "train_cases": train_cases,
        "test_cases": list(s.test_cases),
        "pseudo_labels": labelling,
        "summary": summarise(records),
        "runs": records,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": machine_info(),
    }


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    lines = [f"{'init':<8}  {'lesion IoU':>16}  {'mIoU':>16}"]
    for method, e in summary.items():
        lesion = f"{100 * e['lesion_iou_mean']:6.2f} ± {100 * e['lesion_iou_std']:5.2f}"
        miou = f"{100 * e['miou_mean']:6.2f} ± {100 * e['miou_std']:5.2f}"
        lines.append(f"{method:<8}  {lesion:>16}  {miou:>16}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--work", type=Path, default=Path("bench_medical_effect"), help="runs and data")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="JSON report (default: benchmarks/results/)"
    )
    parser.add_argument("--test-cases", nargs="+", default=["brain2", "lung2"], choices=CASES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-steps", type=int, default=Settings.pretrain_steps)
    parser.add_argument("--finetune-steps", type=int, default=Settings.finetune_steps)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--points-per-side", type=int, default=8, help="LiteMedSAM box grid")
    parser.add_argument("--slice-step", type=int, default=2, help="pseudo-label every N-th slice")
    parser.add_argument("--sam-checkpoint", default=None, help="weights file; 'random' for plumbing tests")
    parser.add_argument("--quick", action="store_true", help="smoke run: random SAM, 1 seed, a few steps")
    args = parser.parse_args(argv)
    for name in ("alps.benchmarks",):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler(sys.stderr))
        logger.propagate = False
    s = Settings(
        work=args.work,
        test_cases=tuple(args.test_cases),
        seeds=tuple(args.seeds),
        crop=args.crop,
        arch=args.arch,
        encoder=args.encoder,
        batch_size=args.batch_size,
        pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps,
        clusters=args.clusters,
        points_per_side=args.points_per_side,
        sam_checkpoint=args.sam_checkpoint,
        slice_step=args.slice_step,
    )
    if args.quick:
        s.seeds, s.crop, s.batch_size, s.sam_checkpoint = s.seeds[:1], 64, 2, "random"
        s.masks, s.slice_step = "slic", 8
        s.pretrain_steps, s.finetune_steps, s.points_per_side, s.clusters = 3, 2, 4, 4
    report = run_benchmark(s)
    emit(report, None if args.quick else args.out)
    print(format_summary(report["summary"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
