"""Plain images (PNG, JPEG, small TIFFs) and volume slices: one item, one work unit, one label PNG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alps.core.files import atomic_path, link_or_copy
from alps.core.images import ImageFile, LoadedImage, load_image
from alps.labeling.inputs.base import PaintContext, Painted, Records, UnitPixels, UnitResult

LINKABLE = {".png", ".jpg", ".jpeg"}  # plain RGB files of these types are linked, not re-encoded


@dataclass(frozen=True)
class ImageUnit:
    """An image as phase A sees it."""

    file: ImageFile

    @property
    def id(self) -> str:
        return self.file.id

    @property
    def item_id(self) -> str:
        return self.file.id

    @property
    def table(self) -> str:
        return f"tables/{self.file.id}.parquet"

    def read(self) -> UnitPixels:
        loaded = load_image(self.file.path)
        return UnitPixels(loaded.pixels, None, loaded.source_mode, list(loaded.notes))

    def restrict(self, records: Records, pixels: UnitPixels) -> Records:
        return records

    def own(self, records: Records) -> Records:
        return records


@dataclass(frozen=True)
class ImageItem:
    """An image (or a volume slice, whose ``group`` is its volume)."""

    file: ImageFile
    group: str
    unit_name: str = "image"

    def settings(self) -> dict[str, Any]:
        return {}

    def units(self) -> Sequence[ImageUnit]:
        return [ImageUnit(self.file)]

    def unit_done(self, out: Path, unit: Any) -> bool:
        return (out / unit.table).exists()

    def discard(self, out: Path) -> None:
        (out / "tables" / f"{self.file.id}.parquet").unlink(missing_ok=True)

    def tables(self, out: Path) -> list[Path]:
        path = out / "tables" / f"{self.file.id}.parquet"
        return [path] if path.exists() else []

    def describe(self, results: Sequence[UnitResult], out: Path) -> dict[str, Any]:
        (result,) = results
        return {
            "height": result.height,
            "width": result.width,
            "source_mode": result.source_mode,
            "conversion": list(result.conversion),
            "n_masks": result.n_masks,
            "n_masks_kept": result.n_masks_kept,
            "seconds": dict(result.seconds),
        }

    def paint(self, ctx: PaintContext, split: str) -> Painted:
        from alps.labeling.paint import class_counts, paint_label_map, save_label_png, save_overlay
        from alps.labeling.table import read_mask_table, table_rles

        loaded = load_image(self.file.path)  # ImageReadError if it changed or vanished since phase A
        table = read_mask_table(ctx.out / "tables" / f"{self.file.id}.parquet")
        label_map = paint_label_map(
            loaded.pixels.shape[0],
            loaded.pixels.shape[1],
            table_rles(table),
            ctx.assignments.get(self.file.id, np.zeros(0, np.int32)),
            areas=np.asarray(table.column("area").to_numpy(), dtype=np.int64),
            num_clusters=max(ctx.k, 1),
        )
        label_path = ctx.out / "labels" / split / f"{self.file.id}.png"
        save_label_png(label_path, label_map)
        overlay_path = ctx.out / "overlays" / f"{self.file.id}.jpg"
        save_overlay(overlay_path, loaded.pixels, label_map, colours=ctx.colours)
        image_path = place_image(self.file, loaded, ctx.out / "images" / split)
        return Painted(
            image=image_path.relative_to(ctx.out).as_posix(),
            label=label_path.relative_to(ctx.out).as_posix(),
            overlay=overlay_path.relative_to(ctx.out).as_posix(),
            table=f"tables/{self.file.id}.parquet",
            counts=class_counts(label_map, ctx.k),
            files=[label_path, overlay_path, image_path],
        )


def place_image(file: ImageFile, loaded: LoadedImage, dest_dir: Path) -> Path:
    """Put the labelled image in the dataset: link/copy a plain RGB PNG/JPEG, else write a PNG."""
    from PIL import Image

    suffix = file.path.suffix.lower()
    if suffix in LINKABLE and not loaded.converted:
        return link_or_copy(file.path, dest_dir / f"{file.id}{'.jpg' if suffix == '.jpeg' else suffix}")
    dest = dest_dir / f"{file.id}.png"
    with atomic_path(dest) as tmp:
        Image.fromarray(loaded.pixels).save(tmp, format="PNG")
    return dest
