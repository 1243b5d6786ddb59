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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

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
from alps.sam.types import MaskResult

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


def process_scene(
    scene_id: str,
    plan: ScenePlan,
    source: Callable[[np.ndarray], MaskResult],
    out: Path,
    area_threshold: float,
    min_area: int,
    *,
    fresh: bool,
    progress: bool,
) -> dict[str, Any]:
    """Stages 1-4 for every tile not done yet; returns counts and timings for the state file."""
    import rasterio

    from alps.geo.tiles import clip_to_valid, owned_masks
    from alps.labeling.features import filter_masks, pool_mask_features
    from alps.labeling.table import write_mask_table

    folder = out / "tables" / scene_id
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [t for t in plan.tiles if not _tile_done(out, scene_id, t)]
    s = plan.scene
    log.info(
        "%s: %d x %d px, %d band(s) %s, %d tile(s) of %d px (overlap %d), %d to do",
        scene_id, s.width, s.height, s.count, list(s.bands), len(plan.tiles),
        plan.tile_size, plan.tile_overlap, len(todo),
    )  # fmt: skip
    n_masks = n_kept = 0
    seconds: list[float] = []
    with bounded_gdal_cache(), rasterio.open(s.path) as src:
        for tile in tqdm(todo, desc=f"tiles {scene_id}", unit="tile", disable=not progress or len(todo) < 2):
            start = time.perf_counter()
            rgb, valid = read_tile(src, tile, plan.stretch)
            path = tile_table(out, scene_id, tile)
            if not valid.any():
                path.with_suffix(".empty").touch()
                continue
            result = source(rgb)
            records = clip_to_valid(result.masks, valid)
            kept = filter_masks(
                records, tile.height * tile.width, max_area_fraction=area_threshold, min_area=min_area
            )
            kept = owned_masks(kept, tile)
            features = pool_mask_features(result.embedding, kept, result.geometry)
            write_mask_table(path, f"{scene_id}/{tile.key}", kept, features, (tile.height, tile.width))
            n_masks += len(result.masks)
            n_kept += len(kept)
            seconds.append(time.perf_counter() - start)
            if len(seconds) == 1 and len(todo) > 1:
                _report_estimate(scene_id, len(todo), seconds[0], progress)
    return {"n_masks": n_masks, "n_masks_kept": n_kept, "tile_seconds": seconds}


def _report_estimate(scene_id: str, n_tiles: int, first: float, progress: bool) -> None:
    total = first * n_tiles
    message = (
        f"{scene_id}: {n_tiles} tiles to do, first tile took {first:.1f} s: about "
        f"{total / 60:.1f} min for the scene (resumable per tile)"
    )
    if total > ESTIMATE_WARN_SECONDS:
        log.warning(message)
    else:
        log.info(message)
        if progress:
            tqdm.write(message)


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
    from alps.geo.export import (
        DecimatedPreview,
        save_scene_overlay,
        vector_suffixes,
        write_label_geotiff,
        write_label_vectors,
    )
    from alps.geo.tiles import TileMasks, apply_links, link_scene, paint_block

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
    import os

    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            if os.path.samefile(dest, path) or (
                dest.stat().st_size == path.stat().st_size
                and dest.stat().st_mtime_ns == path.stat().st_mtime_ns
            ):
                return dest
        except OSError:
            pass
        dest.unlink()
    try:
        os.link(path, dest)
    except OSError:
        shutil.copy2(path, dest)
    return dest
