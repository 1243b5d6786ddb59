"""Raster outputs of a labelled scene: the label GeoTIFF and its decimated colour overlay.

* :func:`write_label_geotiff`: single band, same size, CRS and transform as the scene, 256-px
  internal tiles, DEFLATE, ``nodata = 255`` (unlabeled / invalid). Written block by block from a
  painting callback, so memory is bounded by one block.
* :class:`DecimatedPreview`: a nearest-neighbour thumbnail of the label raster gathered from the
  blocks as they are written, so the overlay never reads the label raster back.
* :func:`save_scene_overlay`: a decimated (longest side <= ``max_side``) colour overlay JPEG; the
  scene is read decimated (GDAL uses its overviews when it has them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps.core.files import atomic_path

__all__ = ["BLOCK", "DecimatedPreview", "save_scene_overlay", "write_label_geotiff"]

BLOCK = 512  # paint/write granularity (a multiple of the 256-px internal tiles)


def write_label_geotiff(
    path: Path,
    height: int,
    width: int,
    crs_wkt: str | None,
    transform: Sequence[float],
    dtype: str,
    paint: Callable[[tuple[int, int, int, int]], npt.NDArray[Any]],
    *,
    block: int = BLOCK,
    on_block: Callable[[tuple[int, int, int, int], npt.NDArray[Any]], None] | None = None,
) -> None:
    """Write ``paint((y0, y1, x0, x1))`` for every block, row-major, into a tiled GeoTIFF (atomically).

    ``on_block(box, values)`` sees every block once (counts, previews) without reading the file back.
    """
    import rasterio
    from affine import Affine

    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": dtype,
        "crs": rasterio.crs.CRS.from_wkt(crs_wkt) if crs_wkt else None,
        "transform": Affine(*transform[:6]),
        "nodata": 255,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, height, block):
            for x0 in range(0, width, block):
                box = (y0, min(y0 + block, height), x0, min(x0 + block, width))
                values = paint(box)
                if on_block is not None:
                    on_block(box, values)
                window = rasterio.windows.Window(box[2], box[0], box[3] - box[2], box[1] - box[0])
                dst.write(values, 1, window=window)


def _sample_positions(length: int, factor: float) -> npt.NDArray[np.int64]:
    """Pixel centres picked by a nearest-neighbour decimation by ``factor`` (GDAL's convention)."""
    n = max(1, round(length / factor))
    return np.minimum(((np.arange(n) + 0.5) * (length / n)).astype(np.int64), length - 1)


class DecimatedPreview:
    """Nearest-neighbour thumbnail (longest side <= ``max_side``) of a raster written block by block."""

    def __init__(self, height: int, width: int, dtype: npt.DTypeLike, *, max_side: int = 2048) -> None:
        factor = max(1.0, max(height, width) / max_side)
        self.rows = _sample_positions(height, factor)
        self.cols = _sample_positions(width, factor)
        self.array = np.full((self.rows.size, self.cols.size), 255, dtype=dtype)

    def add(self, box: tuple[int, int, int, int], values: npt.NDArray[Any]) -> None:
        y0, y1, x0, x1 = box
        ri = np.flatnonzero((self.rows >= y0) & (self.rows < y1))
        ci = np.flatnonzero((self.cols >= x0) & (self.cols < x1))
        if ri.size and ci.size:
            self.array[np.ix_(ri, ci)] = values[np.ix_(self.rows[ri] - y0, self.cols[ci] - x0)]


def save_scene_overlay(
    path: Path, scene_path: Path, labels: npt.NDArray[Any], stretch: Any, colours: Any
) -> None:
    """Colour overlay of a decimated read of a scene and its label thumbnail (same shape)."""
    import rasterio
    from rasterio.enums import Resampling

    from alps.labeling.paint import save_overlay

    with rasterio.open(scene_path) as src:
        data = src.read(
            list(stretch.bands), out_shape=(len(stretch.bands), *labels.shape), resampling=Resampling.nearest
        )
    save_overlay(path, stretch.apply(data), labels, colours=colours)
