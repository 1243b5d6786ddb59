"""The dataset ``alps label`` writes: per-image records, splits, and ``manifest.json``.

Layout (mmsegmentation style)::

    DIR/images/<split>/<id>.*    the labelled images (hard link or copy of a plain 8-bit RGB PNG/JPEG,
                                 else the converted pixels as PNG; scenes keep their GeoTIFF)
    DIR/labels/<split>/<id>.png  pseudo-label maps (uint8, or uint16 when K > 255; 255 = unlabeled)
    DIR/splits/<split>.txt       ids per split
    DIR/manifest.json            everything about the run (written atomically, last)
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from alps import __version__
from alps.core.files import write_json, write_text

SPLITS = ("train", "val")


@dataclass
class ImageRecord:
    """What happened to one input image (one entry of ``manifest.json["images"]``)."""

    id: str
    source: str
    relpath: str
    status: str = "pending"  # "ok" or "failed"
    resumed: bool = False  # stages 1-4 were skipped: an earlier run had done them
    error: str | None = None
    sha256: str | None = None
    height: int | None = None
    width: int | None = None
    source_mode: str | None = None
    conversion: list[str] = field(default_factory=list)
    n_masks: int = 0  # from the mask source
    n_masks_kept: int = 0  # after the gate
    n_labelled_pixels: int = 0
    split: str | None = None
    image: str | None = None  # paths relative to the output directory
    label: str | None = None
    overlay: str | None = None
    table: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    tiles: int | None = None  # scenes only: tiles (alps.labeling.inputs.scene)
    vector: str | None = None  # scenes only: polygons of the labelled regions


@dataclass
class LabelRun:
    """Result of :func:`label`: where everything is and what happened."""

    out: Path
    manifest_path: Path
    images: list[ImageRecord]
    clusters: int  # number of clusters actually used (may be < requested with few masks)
    cluster_sizes: list[int]  # masks per cluster
    class_pixels: list[int]  # labelled pixels per class over all label maps
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    volumes: list[Any] = field(default_factory=list)  # VolumeRecord per input volume

    @property
    def ok(self) -> list[ImageRecord]:
        return [r for r in self.images if r.status == "ok"]

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.images if r.status == "failed"]

    @property
    def overlays(self) -> list[Path]:
        return [self.out / r.overlay for r in self.images if r.overlay]

    @property
    def labels(self) -> list[Path]:
        return [self.out / r.label for r in self.images if r.label]

    def summary_table(self) -> Any:
        """A :class:`rich.table.Table` with counts and timings (print it with a rich console)."""
        from rich.table import Table

        table = Table(title=f"alps label -> {self.out}", show_header=True, header_style="bold")
        table.add_column("item")
        table.add_column("value", justify="right")
        resumed = sum(r.resumed for r in self.ok)
        if self.volumes:
            ok_volumes = sum(v.status == "ok" for v in self.volumes)
            table.add_row("volumes read", f"{ok_volumes} of {len(self.volumes)}")
        table.add_row("images found", str(len(self.images)))
        table.add_row("labelled", f"{len(self.ok)} ({resumed} resumed)")
        table.add_row("failed", f"[red]{len(self.failed)}[/red]" if self.failed else "0")
        for split in SPLITS:
            n = sum(r.split == split for r in self.ok)
            if n:
                table.add_row(f"  {split}", str(n))
        table.add_row("masks generated", str(sum(r.n_masks for r in self.ok)))
        table.add_row("masks kept by the gate", str(sum(r.n_masks_kept for r in self.ok)))
        table.add_row("clusters used", str(self.clusters))
        pixels = sum((r.height or 0) * (r.width or 0) for r in self.ok)
        labelled = sum(r.n_labelled_pixels for r in self.ok)
        table.add_row("pixels labelled", f"{100.0 * labelled / pixels:.1f}%" if pixels else "-")
        for stage, seconds in self.timings.items():
            table.add_row(f"time: {stage}", f"{seconds:.1f} s")
        table.add_row("manifest", str(self.manifest_path))
        table.add_row("overlays", str(self.out / "overlays"))
        return table

    def print_summary(self) -> None:
        from rich.console import Console

        console = Console(stderr=True)
        console.print(self.summary_table())
        for record in self.failed:
            console.print(f"[red]failed[/red] {record.source}: {record.error}", highlight=False)
        for note in self.warnings:
            console.print(f"[yellow]warning[/yellow] {note}", highlight=False)


def runtime_info() -> dict[str, Any]:
    from alps.core.runtime import allocator_tuned

    return {"torch_threads": torch.get_num_threads(), "malloc_tuned": allocator_tuned()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "alps-seg": __version__, "torch": torch.__version__}
    for dist in (
        "segment-anything",
        "numpy",
        "pillow",
        "pyarrow",
        "scikit-learn",
        "scikit-image",
        "pycocotools",
        "opencv-python-headless",
        "tifffile",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_splits(out: Path, splits: dict[str, str]) -> dict[str, list[str]]:
    """``out/splits/<split>.txt`` (ids in the given order; an empty split has no file); the lists."""
    lists = {s: [i for i, split in splits.items() if split == s] for s in SPLITS}
    for split, ids in lists.items():
        path = out / "splits" / f"{split}.txt"
        if ids:
            write_text(path, "".join(f"{i}\n" for i in ids))
        else:
            path.unlink(missing_ok=True)
    return lists


def write_manifest(
    run: LabelRun,
    spec: Any,
    p: dict[str, Any],
    table_params: dict[str, Any],
    params_hash: str,
    cluster_meta: dict[str, Any],
    split_lists: dict[str, list[str]],
    extra: dict[str, Any],
) -> None:
    """Write ``manifest.json``: model, parameters, versions, dataset layout, counts, every record.

    ``spec`` is the run's :class:`alps.labeling.sources.ResolvedModel`; ``extra`` adds sections
    (e.g. the engine).
    """
    k = run.clusters
    dtype = "uint16" if k > 255 else "uint8"
    manifest = {
        "alps_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "name": spec.name,
            "checkpoint": p["checkpoint"],
            "checkpoint_sha256": spec.checkpoint_sha256,
            "random_init": spec.checkpoint_sha256 is None,
        },
        "parameters": p,
        "params_hash": params_hash,
        "table_params": table_params,
        "versions": versions(),
        "runtime": runtime_info(),
        # top-level copies for dataset readers (alps.train and mmsegmentation-style loaders)
        "num_classes": k,
        "ignore_index": 255,
        "dataset": {
            "layout": "mmsegmentation",
            "img_dir": {s: f"images/{s}" for s in SPLITS if split_lists[s]},
            "ann_dir": {s: f"labels/{s}" for s in SPLITS if split_lists[s]},
            "split_files": {s: f"splits/{s}.txt" for s in SPLITS if split_lists[s]},
            "seg_map_suffix": ".png",
            "num_classes": k,
            "ignore_index": 255,
            "label_dtype": dtype,
            "label_encoding": "cluster c is stored as c if c < 255 else c + 1; 255 = unlabeled",
            "splits": {s: len(ids) for s, ids in split_lists.items()},
        },
        "counts": {
            "images": len(run.images),
            "labelled": len(run.ok),
            "resumed": sum(r.resumed for r in run.ok),
            "failed": len(run.failed),
            "masks": sum(r.n_masks for r in run.ok),
            "masks_kept": sum(r.n_masks_kept for r in run.ok),
        },
        "clustering": cluster_meta,
        "cluster_sizes": run.cluster_sizes,
        "class_pixels": run.class_pixels,
        "timings": run.timings,
        "warnings": run.warnings,
        "images": [asdict(r) for r in run.images],
        **({"volumes": [asdict(v) for v in run.volumes]} if run.volumes else {}),
        **extra,
    }
    write_json(run.manifest_path, manifest)
