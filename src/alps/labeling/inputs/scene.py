"""Stages 1-4 and 6 of ``alps label`` for large rasters (GeoTIFF scenes), tile by tile.

A scene is cut into overlapping tiles (:func:`alps.geo.raster.plan_tiles`); each tile is one image
for the mask source, the gate and the features, with its own mask table::

    DIR/tables/<scene id>/<tile key>.parquet   kept masks of one tile (image id "<scene id>/<tile key>")
    DIR/tables/<scene id>/<tile key>.empty     marker: the tile holds no valid pixel
    DIR/labels/<split>/<scene id>.tif          stitched label raster (CRS, transform, size of the scene)
    DIR/overlays/<scene id>.jpg                decimated colour preview
    DIR/vectors/<scene id>.gpkg                polygons of the labelled regions (cluster, area, pixels);
    DIR/vectors/<scene id>.geojson             GeoPackage, GeoJSON or both (``vector_format``)

Tables are written atomically, so an interrupted run resumes at the first missing tile. Which
masks a tile keeps, how cut objects merge and how the raster is painted: :mod:`alps.geo.tiles`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alps.core.files import link_or_copy
from alps.core.images import ImageFile, ImageReadError
from alps.geo.raster import (
    BandStretch,
    Scene,
    Tile,
    bounded_gdal_cache,
    default_tile_overlap,
    default_tile_size,
    estimate_stretch,
    open_scene,
    plan_tiles,
    read_tile,
)
from alps.labeling.inputs.base import PaintContext, Painted, Records, UnitPixels, UnitResult

log = logging.getLogger("alps.labeling.inputs.scene")

ESTIMATE_WARN_SECONDS = 600.0  # estimates above this are logged as warnings (shown by the CLI)


@dataclass(frozen=True)
class TileSettings:
    """Tiling asked for by the caller (None = defaults for the model)."""

    bands: tuple[int, ...] | None = None
    tile_size: int | None = None
    tile_overlap: int | None = None

    def resolve(self, model_input: int) -> tuple[int, int]:
        size = self.tile_size if self.tile_size is not None else default_tile_size(model_input)
        overlap = self.tile_overlap if self.tile_overlap is not None else default_tile_overlap(size)
        return size, overlap


@dataclass
class ScenePlan:
    """Everything fixed before a scene's first tile is read."""

    scene: Scene
    tiles: list[Tile]
    stretch: BandStretch
    tile_size: int
    tile_overlap: int

    def source_mode(self) -> str:
        """Data types and band count, e.g. ``uint16x4``."""
        return f"{'/'.join(sorted(set(self.scene.dtypes)))}x{self.scene.count}"

    def settings(self) -> dict[str, Any]:
        """What the tile tables depend on besides the run parameters (kept in the state file)."""
        return {
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap,
            "bands": list(self.scene.bands),
            "height": self.scene.height,
            "width": self.scene.width,
            "tiles": len(self.tiles),
        }


def plan_scene(path: Path, settings: TileSettings, model_input: int) -> ScenePlan:
    scene = open_scene(path, settings.bands)
    size, overlap = settings.resolve(model_input)
    tiles = plan_tiles(scene.height, scene.width, size, overlap)
    with bounded_gdal_cache():
        stretch = estimate_stretch(path, scene.bands)
    return ScenePlan(scene, tiles, stretch, size, overlap)


def tile_table(out: Path, scene_id: str, tile: Tile) -> Path:
    return out / "tables" / scene_id / f"{tile.key}.parquet"


def _tile_done(out: Path, scene_id: str, tile: Tile) -> bool:
    path = tile_table(out, scene_id, tile)
    return path.exists() or path.with_suffix(".empty").exists()


def scene_complete(out: Path, scene_id: str, plan: ScenePlan) -> bool:
    return all(_tile_done(out, scene_id, t) for t in plan.tiles)


def scene_tables(out: Path, scene_id: str, plan: ScenePlan) -> list[Path]:
    return [p for p in (tile_table(out, scene_id, t) for t in plan.tiles) if p.exists()]


@dataclass(frozen=True)
class TileUnit:
    """One tile of a scene as phase A sees it (windowed read with the scene-wide stretch)."""

    scene_id: str
    plan: ScenePlan
    tile: Tile

    @property
    def id(self) -> str:
        return f"{self.scene_id}/{self.tile.key}"

    @property
    def item_id(self) -> str:
        return self.scene_id

    @property
    def table(self) -> str:
        return f"tables/{self.scene_id}/{self.tile.key}.parquet"

    def read(self) -> UnitPixels:
        import rasterio
        from rasterio.errors import RasterioError

        try:
            with bounded_gdal_cache(), rasterio.open(self.plan.scene.path) as src:
                rgb, valid = read_tile(src, self.tile, self.plan.stretch)
        except (RasterioError, OSError) as err:
            raise ImageReadError(f"{self.plan.scene.path}: cannot read raster tile ({err})") from err
        return UnitPixels(rgb, valid, self.plan.source_mode(), [])

    def restrict(self, records: Records, pixels: UnitPixels) -> Records:
        from alps.geo.tiles import clip_to_valid

        return clip_to_valid(records, pixels.valid) if pixels.valid is not None else records

    def own(self, records: Records) -> Records:
        from alps.geo.tiles import owned_masks

        return owned_masks(records, self.tile)


@dataclass(frozen=True)
class SceneItem:
    """A raster scene: tiles in phase A, one stitched label GeoTIFF, overlay and vectors in phase C."""

    file: ImageFile
    plan: ScenePlan
    group: str
    unit_name: str = "tile"

    def settings(self) -> dict[str, Any]:
        return self.plan.settings()

    def units(self) -> Sequence[TileUnit]:
        return [TileUnit(self.file.id, self.plan, t) for t in self.plan.tiles]

    def unit_done(self, out: Path, unit: Any) -> bool:
        path = out / unit.table
        return path.exists() or path.with_suffix(".empty").exists()

    def discard(self, out: Path) -> None:
        shutil.rmtree(out / "tables" / self.file.id, ignore_errors=True)

    def tables(self, out: Path) -> list[Path]:
        return scene_tables(out, self.file.id, self.plan)

    def describe(self, results: Sequence[UnitResult], out: Path) -> dict[str, Any]:
        """Generated masks: the tiles done by this run; kept masks: every tile table of the scene."""
        import pyarrow.parquet as pq

        plan, scene = self.plan, self.plan.scene
        notes = [f"bands {','.join(str(b) for b in scene.bands)} of {scene.count}"]
        if not plan.stretch.passthrough:
            lo, hi = plan.stretch.percentiles
            notes.append(f"stretched, all bands together ({lo:g}-{hi:g}%, whole-scene sample)")
        notes.append(f"tiled {plan.tile_size} px, overlap {plan.tile_overlap} px")
        tile_seconds = [sum(r.seconds.values()) for r in results if r.status == "ok"]
        return {
            "height": scene.height,
            "width": scene.width,
            "source_mode": plan.source_mode(),
            "conversion": notes,
            "tiles": len(plan.tiles),
            "n_masks": sum(r.n_masks for r in results),
            "n_masks_kept": sum(pq.ParquetFile(t).metadata.num_rows for t in self.tables(out)),
            "seconds": {
                "total": round(sum(tile_seconds), 3),
                "per_tile": round(float(np.mean(tile_seconds)), 3) if tile_seconds else 0.0,
            },
        }

    def paint(self, ctx: PaintContext, split: str) -> Painted:
        from rasterio.errors import RasterioError

        predict = ctx.model.predict if ctx.model is not None and ctx.k else None
        try:
            made = label_scene(
                self.file.id, self.plan, ctx.out, split, ctx.assignments, predict, ctx.k, ctx.colours,
                ctx.vector_format,
            )  # fmt: skip
        except (RasterioError, OSError) as err:  # the raster changed or vanished since phase A
            raise ImageReadError(f"{self.file.path}: {type(err).__name__}: {err}") from err
        dest = ctx.out / "images" / split / f"{self.file.id}{self.file.path.suffix}"
        image_path = place_scene(self.file.path, dest)
        return Painted(
            image=image_path.relative_to(ctx.out).as_posix(),
            label=made["label"].relative_to(ctx.out).as_posix(),
            overlay=made["overlay"].relative_to(ctx.out).as_posix(),
            table=f"tables/{self.file.id}",
            counts=made["counts"],
            files=[made["label"], made["overlay"], *made["vectors"], image_path],
            vector=made["vector"].relative_to(ctx.out).as_posix(),
        )


def _loader(out: Path, scene_id: str, assignments: dict[str, np.ndarray], features: bool) -> Any:
    from alps.geo.tiles import TileMasks
    from alps.labeling.table import read_mask_table, table_features, table_rles

    def load(tile: Tile) -> TileMasks:
        path = tile_table(out, scene_id, tile)
        if not path.exists():
            empty = np.zeros(0, np.int64)
            return TileMasks(tile, [], np.zeros((0, 4)), empty, empty.copy(), np.zeros((0, 0), np.float32))
        table = read_mask_table(path)
        clusters = assignments.get(f"{scene_id}/{tile.key}", np.zeros(0, np.int32)).astype(np.int64)
        return TileMasks(
            tile,
            table_rles(table),
            np.asarray(table.column("bbox").to_pylist(), dtype=np.float64).reshape(-1, 4),
            np.asarray(table.column("area").to_numpy(), dtype=np.int64),
            clusters.copy(),
            table_features(table) if features else None,
        )

    return load


def label_scene(
    scene_id: str,
    plan: ScenePlan,
    out: Path,
    split: str,
    assignments: dict[str, np.ndarray],
    predict: Callable[[np.ndarray], np.ndarray] | None,
    k: int,
    colours: Any,
    vector_format: str = "gpkg",
) -> dict[str, Any]:
    """Stage 6 for a scene: label GeoTIFF (windowed writes), overlay preview, vectors.

    Memory is bounded by the blocks and two tile rows of mask tables, never the scene: the label
    raster is painted and written block by block, the overlay's label thumbnail is sampled from
    those blocks, and the polygons are traced and streamed per block of the written raster.

    Returns paths (relative to ``out``), per-class pixel counts and the number of merged objects.
    """
    from alps.geo.outputs import DecimatedPreview, save_scene_overlay, write_label_geotiff
    from alps.geo.tiles import TileMasks, apply_links, link_scene, paint_block
    from alps.geo.vectors import vector_suffixes, write_label_vectors

    links = link_scene(plan.tiles, _loader(out, scene_id, assignments, True), predict) if predict else {}
    load = _loader(out, scene_id, assignments, False)
    held: dict[str, TileMasks] = {}

    def paint(box: tuple[int, int, int, int]) -> np.ndarray:
        y0, y1, x0, x1 = box
        needed = [t for t in plan.tiles if t.y0 < y1 and t.y1 > y0]
        keys = {t.key for t in needed}
        for key in [k for k in held if k not in keys]:
            del held[key]
        for t in needed:
            if t.key not in held:
                held[t.key] = apply_links(load(t), links)
        near = [held[t.key] for t in needed if t.x0 < x1 and t.x1 > x0]
        return paint_block(box, near, dtype)

    dtype = "uint16" if k > 255 else "uint8"
    counts = np.zeros(max(k, 1), dtype=np.int64)
    s = plan.scene
    preview = DecimatedPreview(s.height, s.width, dtype)

    def on_block(box: tuple[int, int, int, int], values: np.ndarray) -> None:
        from alps.labeling.paint import label_value_to_cluster

        c = label_value_to_cluster(values).reshape(-1)
        c = c[(c >= 0) & (c < counts.size)]
        counts[:] += np.bincount(c, minlength=counts.size)[: counts.size]
        preview.add(box, values)

    label_path = out / "labels" / split / f"{scene_id}.tif"
    overlay_path = out / "overlays" / f"{scene_id}.jpg"
    vector_paths = [out / "vectors" / f"{scene_id}{suffix}" for suffix in vector_suffixes(vector_format)]
    with bounded_gdal_cache():
        write_label_geotiff(
            label_path, s.height, s.width, s.crs, s.transform, dtype, paint, on_block=on_block
        )
        save_scene_overlay(overlay_path, s.path, preview.array, plan.stretch, colours)
        n_polygons = write_label_vectors(label_path, vector_paths)
    return {
        "label": label_path,
        "overlay": overlay_path,
        "vector": vector_paths[0],
        "vectors": vector_paths,
        "counts": counts[:k],
        "linked_masks": len(links),
        "polygons": n_polygons,
    }


def place_scene(path: Path, dest: Path) -> Path:
    """Put the scene itself in the dataset (hard link, else copy), keeping its suffix."""
    return link_or_copy(path, dest)
