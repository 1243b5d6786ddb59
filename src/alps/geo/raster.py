"""Large rasters (GeoTIFF, COG, anything rasterio opens) read tile by tile, never whole.

A *scene* is read in square windows (:class:`Tile`); memory is bounded by one tile, not the scene.

Conversion rule (what SAM sees; the same for every tile of a scene, so tiles never differ in tone):

=========================  ==========================================================================
bands                      ``bands`` (1-based, e.g. ``(4, 3, 2)``) picks the three bands shown as R, G, B;
                           default: bands 1-3 (or the colour-interpretation red/green/blue bands when
                           they are tagged), a single band is replicated to three channels
uint8 bands                unchanged (an 8-bit orthophoto is seen exactly as a viewer shows it)
other dtypes (uint16,      the input rule of :mod:`alps.core.rgb`: one robust stretch for the chosen
int, float)                bands together (2nd and 98th percentiles of their valid pixels map to 0 and
                           255, clipped), estimated once per scene on a decimated read of the whole
                           scene (at most ~1 Mpx, GDAL uses overviews when present): all tiles share it
invalid pixels             nodata (per-band nodata value, internal mask or alpha band, via GDAL's
                           dataset mask) and non-finite values: shown as 0 and never labelled (255)
=========================  ==========================================================================

Tiling (:func:`plan_tiles`): windows of ``tile_size`` px overlapping by ``overlap`` px; the last
window of a row/column is aligned to the scene edge (full size). Each tile *owns* a core: the
pixels nearer to it than to its neighbour, i.e. cores meet at the middle of each overlap and
partition the scene. Ownership decides which tile keeps a mask seen by two tiles (see
:mod:`alps.geo.tiles`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "STRETCH_PERCENTILES",
    "BandStretch",
    "Scene",
    "Tile",
    "bounded_gdal_cache",
    "default_tile_overlap",
    "default_tile_size",
    "estimate_stretch",
    "is_scene",
    "open_scene",
    "parse_bands",
    "plan_tiles",
    "read_tile",
]

STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE_PIXELS = 1 << 20  # pixels of the decimated read the percentiles come from
RASTER_SUFFIXES = (".tif", ".tiff")
GDAL_CACHE_BYTES = 128 << 20  # GDAL's block cache during scene work (its default: 5 % of the RAM)


def bounded_gdal_cache() -> Any:
    """A :class:`rasterio.Env` capping GDAL's block cache at :data:`GDAL_CACHE_BYTES`.

    A decimated read of a scene without overviews (stretch, preview) decodes every block, and GDAL
    keeps decoded blocks up to its cache size, by default 5 % of the RAM: on a large machine a
    whole 20000 x 20000 scene. Tiles are read once each, so a small cache costs nothing. (rasterio
    passes an integer to GDAL as bytes: a value meant as megabytes would disable the cache, and a
    decimated read would then decode a block per pixel.)
    """
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def default_tile_size(model_input: int) -> int:
    """Tile side for a model whose encoder input is ``model_input`` px (longest side).

    SAM (1024 px input) sees a 1024-px tile at full resolution. Models with a small input
    (LiteMedSAM: 256 px) get 512-px tiles: a 2x downscale keeps tree-crown-sized objects visible
    while needing a quarter of the encoder passes that native 256-px tiles would.
    """
    return max(512, int(model_input))


def default_tile_overlap(tile_size: int) -> int:
    """Overlap of neighbouring tiles: an eighth of a tile (64 px at 512, 128 px at 1024)."""
    return max(0, tile_size // 8)


def parse_bands(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"4,3,2"`` -> ``(4, 3, 2)``; one band (``"1"``) is allowed and replicated; None passes."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
        except ValueError as err:
            raise ValueError(f"bands must be comma-separated band numbers like 4,3,2, got {text!r}") from err
    else:
        values = tuple(int(v) for v in text)
    if len(values) not in (1, 3) or min(values) < 1:
        raise ValueError(f"bands must be one or three 1-based band numbers, got {values}")
    return values


# ----------------------------------------------------------------------------------------------
# tiling


@dataclass(frozen=True)
class Tile:
    """One window of a scene (pixels; ``row``/``col`` index the tile grid).

    ``y0:y1, x0:x1`` is the window read for the model; ``core`` = ``(cy0, cy1, cx0, cx1)`` the
    part of it this tile owns (cores partition the scene).
    """

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int
    core: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        return f"r{self.row:04d}_c{self.col:04d}"

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def window(self) -> Any:
        """The tile as a :class:`rasterio.windows.Window`."""
        from rasterio.windows import Window

        return Window(self.x0, self.y0, self.width, self.height)


def _starts(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    stride = size - overlap
    n = math.ceil((length - overlap) / stride)
    starts = [i * stride for i in range(n - 1)]
    starts.append(length - size)  # last window flush with the edge, full size
    return sorted(set(starts))


def _cores(starts: list[int], length: int, size: int) -> list[tuple[int, int]]:
    ends = [min(s + size, length) for s in starts]
    bounds = [0] + [(ends[i] + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(bounds[i], bounds[i + 1]) for i in range(len(starts))]


def plan_tiles(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Tiles covering an ``height x width`` scene, row-major.

    Raises ValueError unless ``0 <= overlap < tile_size / 2`` (cores must stay inside windows).
    """
    if tile_size < 64:
        raise ValueError(f"tile_size must be at least 64 px, got {tile_size}")
    if not 0 <= overlap < tile_size / 2:
        raise ValueError(f"tile_overlap must be in [0, tile_size/2), got {overlap} for tile_size {tile_size}")
    ys, xs = _starts(height, tile_size, overlap), _starts(width, tile_size, overlap)
    ycores, xcores = _cores(ys, height, tile_size), _cores(xs, width, tile_size)
    return [
        Tile(r, c, y0, min(y0 + tile_size, height), x0, min(x0 + tile_size, width), (*yc, *xc))
        for r, (y0, yc) in enumerate(zip(ys, ycores, strict=True))
        for c, (x0, xc) in enumerate(zip(xs, xcores, strict=True))
    ]


# ----------------------------------------------------------------------------------------------
# opening and reading


@dataclass(frozen=True)
class BandStretch:
    """How the chosen bands become 8-bit: the input rule of :mod:`alps.core.rgb` (one joint
    ``low``/``high`` pair for all chosen bands, estimated once per scene), applied tile by tile.

    ``low``/``high`` are None for uint8 bands passed through unchanged, and for a scene whose
    valid values are constant (it becomes black, as a constant image does).
    """

    bands: tuple[int, ...]
    low: float | None
    high: float | None
    percentiles: tuple[float, float] = STRETCH_PERCENTILES
    passthrough: bool = False  # uint8 bands: no stretch

    def apply(self, data: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """``(B, h, w)`` band data -> ``(h, w, 3)`` uint8 (one band is replicated)."""
        from alps.core.rgb import apply_stretch

        if self.passthrough:
            out = data.astype(np.uint8, copy=False)
        else:
            limits = (self.low, self.high) if self.low is not None and self.high is not None else None
            out = apply_stretch(data, limits)
        if out.shape[0] == 1:
            out = np.repeat(out, 3, axis=0)
        return np.ascontiguousarray(np.moveaxis(out, 0, -1))

    def to_json(self) -> dict[str, Any]:
        return {
            "bands": list(self.bands),
            "low": self.low,
            "high": self.high,
            "percentiles": self.percentiles,
        }


@dataclass(frozen=True)
class Scene:
    """What the pipeline needs to know about a raster before reading any tile."""

    path: Path
    height: int
    width: int
    count: int
    dtypes: tuple[str, ...]
    crs: str | None  # WKT, None when the file has none
    transform: tuple[float, ...]  # affine a, b, c, d, e, f (pixel -> CRS)
    georeferenced: bool
    bands: tuple[int, ...]  # the bands shown to SAM (1-based; one band is replicated)

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


def _default_bands(src: Any) -> tuple[int, ...]:
    from rasterio.enums import ColorInterp

    interp = list(src.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(w in interp for w in wanted):
        return tuple(interp.index(w) + 1 for w in wanted)
    data_bands = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha] or [1]
    return tuple(data_bands[:3]) if len(data_bands) >= 3 else (data_bands[0],)


def _georeferenced(src: Any) -> bool:
    from affine import Affine

    return src.crs is not None or src.transform != Affine.identity() or bool(src.gcps[0])


def open_scene(path: str | Path, bands: Sequence[int] | None = None) -> Scene:
    """Describe the raster at ``path``; raise ValueError for a band it does not have."""
    import rasterio

    with rasterio.open(path) as src:
        chosen = tuple(bands) if bands is not None else _default_bands(src)
        bad = [b for b in chosen if not 1 <= b <= src.count]
        if bad:
            raise ValueError(f"{path}: band(s) {bad} requested, the raster has {src.count} band(s)")
        return Scene(
            path=Path(path),
            height=int(src.height),
            width=int(src.width),
            count=int(src.count),
            dtypes=tuple(src.dtypes),
            crs=src.crs.to_wkt() if src.crs is not None else None,
            transform=tuple(src.transform)[:6],
            georeferenced=_georeferenced(src),
            bands=chosen,
        )


def is_scene(path: str | Path, *, max_plain_side: int, bands_given: bool = False) -> bool:
    """Whether ``path`` goes through the tiled raster path instead of the plain-image path.

    TIFFs that rasterio opens do when they are georeferenced, larger than ``max_plain_side`` on a
    side, or when bands were chosen explicitly. PNG/JPEG and small plain TIFFs stay plain images.
    """
    if Path(path).suffix.lower() not in RASTER_SUFFIXES:
        return False
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return bands_given or _georeferenced(src) or max(src.height, src.width) > max_plain_side
    except (RasterioIOError, OSError):
        return False


def _valid(
    src: Any, data: npt.NDArray[Any], window: Any = None, out_shape: tuple[int, int] | None = None
) -> Any:
    """Bool validity of pixels: GDAL's dataset mask (nodata, mask band, alpha) and finite values."""
    from rasterio.enums import Resampling

    if out_shape is None:
        mask = src.dataset_mask(window=window)
    else:
        mask = src.dataset_mask(window=window, out_shape=out_shape, resampling=Resampling.nearest)
    valid = np.asarray(mask) > 0
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    return valid


def estimate_stretch(
    path: str | Path,
    bands: Sequence[int],
    *,
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
    sample_pixels: int = STRETCH_SAMPLE_PIXELS,
) -> BandStretch:
    """The scene's joint percentile stretch (:mod:`alps.core.rgb`), from one decimated read of its
    valid pixels."""
    import rasterio
    from rasterio.enums import Resampling

    from alps.core.rgb import stretch_limits

    with rasterio.open(path) as src:
        dtypes = {src.dtypes[b - 1] for b in bands}
        if dtypes == {"uint8"}:
            return BandStretch(tuple(bands), None, None, percentiles, passthrough=True)
        factor = max(1.0, math.sqrt(src.height * src.width / sample_pixels))
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        valid = _valid(src, data, out_shape=shape)
    limits = stretch_limits(data[:, valid], percentiles)  # all chosen bands together: the input rule
    low, high = limits if limits is not None else (None, None)
    return BandStretch(tuple(bands), low, high, percentiles)


def read_tile(
    src: Any, tile: Tile, stretch: BandStretch
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Windowed read of one tile of an open rasterio dataset.

    Returns:
        ``(h, w, 3)`` uint8 RGB (invalid pixels 0) and the ``(h, w)`` bool validity mask.
    """
    window = tile.window()
    data = src.read(list(stretch.bands), window=window)
    valid = _valid(src, data, window=window)
    rgb = stretch.apply(data)
    rgb[~valid] = 0
    return rgb, valid


def iter_preview_blocks(height: int, width: int, block: int = 2048) -> Iterator[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` blocks covering a raster, row-major (for windowed writes)."""
    for y0 in range(0, height, block):
        for x0 in range(0, width, block):
            yield y0, min(y0 + block, height), x0, min(x0 + block, width)
