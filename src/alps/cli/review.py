"""``alps report``, ``alps map`` and ``alps export``: thin layers over :mod:`alps.review`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``report``, ``map`` and ``export`` to the ``alps`` parser."""
    report = subparsers.add_parser(
        "report",
        help="write DIR/report/index.html: look at, name, merge and ignore the clusters",
        description="Write a static, self-contained HTML page (thumbnails beside it; no server, no network) "
        "showing every cluster of an `alps label` output: share, mask crops, nearest clusters, images with "
        "overlays. Name, merge and ignore clusters in the page and download the mapping for `alps map`.",
    )
    report.add_argument("dir", metavar="DIR", help="`alps label` output directory")
    report.add_argument("--out", metavar="FOLDER", help="report folder (default: DIR/report)")
    report.add_argument("--gt", metavar="GT_DIR", help="ground-truth PNGs: class composition and purity")
    report.add_argument("--class-names", metavar="A,B,..", help="names of the GT classes 0, 1, ...")
    report.add_argument("--crops", type=int, default=8, metavar="N", help="crops per cluster (default: 8)")
    report.add_argument("--max-images", type=int, default=48, metavar="N", help="images listed (default: 48)")
    report.set_defaults(func=report_command)

    mapper = subparsers.add_parser(
        "map",
        help="turn clusters into named classes (repaint labels, vectors, COCO, manifest) from a mapping",
        description="Apply a mapping (YAML/JSON: `classes:` name -> cluster ids, `ignore:` cluster ids) "
        "to an `alps label` output without running SAM or k-means again; writes DIR/mapped/ (or --out), "
        "never "
        "touching the cluster labels, so re-applying is idempotent. Or derive a mapping from a few "
        "labelled images with --from-labels.",
    )
    mapper.add_argument("dir", metavar="DIR", help="`alps label` output directory")
    source = mapper.add_mutually_exclusive_group(required=True)
    source.add_argument("--mapping", metavar="FILE", help="mapping to apply (.yaml/.yml or .json)")
    source.add_argument("--from-labels", metavar="GT_DIR", help="derive a mapping from GT class-id PNGs")
    mapper.add_argument("--out", metavar="DIR2", help="mapped dataset root (default: DIR/mapped)")
    mapper.add_argument("--no-overlays", dest="overlays", action="store_false", help="skip class overlays")
    mapper.add_argument(
        "--class-names", metavar="A,B,..", help="--from-labels: names of GT classes 0, 1, ..."
    )
    mapper.add_argument(
        "--method",
        choices=("auto", "majority", "hungarian"),
        default="auto",
        help="--from-labels: majority vote per cluster, or Hungarian (default auto: Hungarian iff K = C)",
    )
    mapper.add_argument(
        "--write",
        metavar="FILE",
        help="--from-labels: where to write the mapping (default: DIR/mapping.from-labels.yaml)",
    )
    mapper.add_argument("--json", metavar="FILE", help="--from-labels: also write the IoU report as JSON")
    mapper.set_defaults(func=map_command)

    export = subparsers.add_parser(
        "export",
        help="export the masks for correction in Label Studio or CVAT",
        description="Label Studio: tasks.json with brush-RLE predictions (one per mask, cluster or class "
        "name as label, mask score) + label_config.xml. CVAT: COCO 1.0 instances with RLE masks "
        "(annotations/instances_default.json and cvat_coco.zip).",
    )
    export.add_argument("dir", metavar="DIR", help="`alps label` output directory")
    export.add_argument("--format", required=True, choices=("label-studio", "cvat"), help="target tool")
    export.add_argument("--out", metavar="FOLDER", help="default: DIR/exports/<format>")
    export.add_argument(
        "--mapping", metavar="FILE", help="label masks with class names (ignored ones left out)"
    )
    export.add_argument(
        "--url-prefix",
        default="/data/local-files/?d=",
        metavar="PREFIX",
        help="Label Studio: prefix of the image paths relative to DIR (default: %(default)s, Label Studio's "
        "local file serving with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=DIR)",
    )
    export.set_defaults(func=export_command)


def _names(value: str | None) -> list[str] | None:
    return [n.strip() for n in value.split(",")] if value else None


def _fail(command: str, err: Exception) -> int:
    print(f"alps {command}: {err}", file=sys.stderr)
    return 2


def report_command(args: argparse.Namespace) -> int:
    from alps.review.mapping import MappingError
    from alps.review.report import build_report

    try:
        result = build_report(args.dir, args.out, gt_dir=args.gt, class_names=_names(args.class_names),
                              crops_per_cluster=args.crops, max_images=args.max_images)  # fmt: skip
    except (MappingError, FileNotFoundError, ValueError) as err:
        return _fail("report", err)
    print(f"report: {result.path.resolve().as_uri()} ({result.clusters} clusters, {result.crops} crops, "
          f"{result.images_listed} images listed, {result.seconds:.1f} s)")  # fmt: skip
    return 0


def map_command(args: argparse.Namespace) -> int:
    from alps.review.mapping import MappingError, apply_mapping, derive_mapping, format_derive_report

    try:
        if args.from_labels:
            mapping, report = derive_mapping(args.dir, args.from_labels, class_names=_names(args.class_names),
                                             method=args.method)  # fmt: skip
            from alps.core.files import write_json, write_text

            target = Path(args.write) if args.write else Path(args.dir) / "mapping.from-labels.yaml"
            comment = (
                f"derived by alps map --from-labels {args.from_labels} ({report['method']} vote, "
                f"{report['num_images']} images)\nreview it, then: alps map {args.dir} --mapping {target}"
            )
            write_text(target, mapping.to_yaml(comment))
            if args.json:
                write_json(args.json, report)
            print(format_derive_report(report))
            print(f"\nmapping written to {target}:\n{mapping.to_yaml()}", end="")
            return 0
        result = apply_mapping(args.dir, args.mapping, args.out, overlays=args.overlays)
    except (MappingError, FileNotFoundError) as err:
        return _fail("map", err)
    total = sum(result.class_pixels) or 1
    names = result.mapping.class_names
    shares = ", ".join(
        f"{n} {100 * p / total:.1f} %" for n, p in zip(names, result.class_pixels, strict=True)
    )
    print(f"mapped {result.label_files} label maps to {len(result.mapping.classes)} classes in {result.out} "
          f"({result.seconds:.1f} s): {shares}")  # fmt: skip
    return 0


def export_command(args: argparse.Namespace) -> int:
    from alps.review.exports import export
    from alps.review.mapping import MappingError

    try:
        done = export(args.dir, args.format, args.out, mapping=args.mapping, url_prefix=args.url_prefix)
    except (MappingError, FileNotFoundError) as err:
        return _fail("export", err)
    files = ", ".join(str(v) for k, v in done.items() if isinstance(v, Path))
    note = (
        f" ({done['skipped_scenes']} scene(s) skipped: no per-image masks)" if done["skipped_scenes"] else ""
    )
    print(f"exported {done['masks']} masks of {done['images']} images for {args.format}: {files}{note}")
    return 0
