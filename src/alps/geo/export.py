"""Exports of label maps for GIS and detection tools: label GeoTIFF, preview overlay, polygons, COCO.

* :func:`write_label_geotiff`: single band, same size, CRS and transform as the scene, 256-px
  internal tiles, DEFLATE, ``nodata = 255`` (unlabeled / invalid). Written block by block from a
  painting callback, so memory is bounded by one block.
* :class:`DecimatedPreview`: a nearest-neighbour thumbnail of the label raster gathered from the
  blocks as they are written, so the overlay never reads the label raster back.
* :func:`save_scene_overlay`: a decimated (longest side <= ``max_side``) colour overlay JPEG; the
  scene is read decimated (GDAL uses its overviews when it has them).
* :func:`write_label_vectors`: polygons of the labelled regions as a GeoPackage (``.gpkg``, one
  polygon layer named after the scene, CRS set, spatial index) and/or GeoJSON (``.geojson``, the
  ``crs`` member names the EPSG code when the CRS has one); QGIS/GDAL open both. Attributes:
  ``cluster`` (id), ``area`` (CRS units squared, pixels without a CRS) and ``pixels`` (pixel
  count). Polygons are traced per block of ``block`` px and streamed to the files block by block,
  so memory is bounded by one block; a region crossing a block line is split there (rasterising
  the polygons still reproduces the raster).
* :func:`write_coco_instances`: COCO instances JSON for plain images: one category per cluster,
  one annotation (compressed RLE) per clustered mask.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps.core.files import atomic_path

__all__ = [
    "VECTOR_FORMATS",
    "DecimatedPreview",
    "save_scene_overlay",
    "vector_suffixes",
    "write_coco_instances",
    "write_label_geotiff",
    "write_label_vectors",
]

BLOCK = 512  # paint/write granularity (a multiple of the 256-px internal tiles)
VECTOR_BLOCK = 2048  # polygon tracing granularity (an int32 copy of a block: 16 MiB)
VECTOR_FORMATS = ("gpkg", "geojson", "both")
GPKG_CHUNK = 20_000  # features per GeoPackage append


def vector_suffixes(vector_format: str) -> tuple[str, ...]:
    """File suffixes written for ``--vector-format`` (``gpkg``, ``geojson`` or ``both``)."""
    if vector_format not in VECTOR_FORMATS:
        raise ValueError(f"vector_format must be one of {VECTOR_FORMATS}, got {vector_format!r}")
    return {"gpkg": (".gpkg",), "geojson": (".geojson",), "both": (".gpkg", ".geojson")}[vector_format]


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


def _ring_area(ring: Sequence[Sequence[float]]) -> float:
    xy = np.asarray(ring, dtype=np.float64)
    xy = xy - xy[0]  # map coordinates are large: the shoelace sum would cancel catastrophically
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _polygon_area(geometry: dict[str, Any]) -> float:
    rings = geometry["coordinates"]
    return _ring_area(rings[0]) - sum(_ring_area(r) for r in rings[1:])


def _crs_member(crs_wkt: str | None) -> dict[str, Any] | None:
    if not crs_wkt:
        return None
    from rasterio.crs import CRS

    epsg = CRS.from_wkt(crs_wkt).to_epsg()
    return None if epsg is None else {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}}


def _polygon_wkb(rings: Sequence[Sequence[Sequence[float]]]) -> bytes:
    """Little-endian WKB of a polygon given as GeoJSON rings."""
    parts = [struct.pack("<BII", 1, 3, len(rings))]
    for ring in rings:
        xy = np.asarray(ring, dtype="<f8").reshape(-1, 2)
        parts.append(struct.pack("<I", xy.shape[0]))
        parts.append(xy.tobytes())
    return b"".join(parts)


class _GeoPackageWriter:
    """Appends polygon features to one GeoPackage layer in chunks (memory bounded by a chunk)."""

    def __init__(self, path: Path, layer: str, crs_wkt: str | None) -> None:
        self.path, self.layer, self.crs = path, layer, crs_wkt
        self.rows: list[tuple[bytes, int, float, int]] = []
        self.started = False
        path.unlink(missing_ok=True)  # GDAL creates the file itself

    def add(self, wkb: bytes, cluster: int, area: float, pixels: int) -> None:
        self.rows.append((wkb, cluster, area, pixels))
        if len(self.rows) >= GPKG_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.started and not self.rows:
            return
        from pyogrio.raw import write

        geometry = np.empty(len(self.rows), dtype=object)
        geometry[:] = [r[0] for r in self.rows]
        write(
            self.path,
            geometry,
            [
                np.array([r[1] for r in self.rows], dtype=np.int32),
                np.array([r[2] for r in self.rows], dtype=np.float64),
                np.array([r[3] for r in self.rows], dtype=np.int64),
            ],
            ["cluster", "area", "pixels"],
            layer=self.layer,
            driver="GPKG",
            geometry_type="Polygon",
            crs=self.crs,
            append=self.started,
        )
        self.started = True
        self.rows = []


def write_label_vectors(label_path: Path, out_paths: Sequence[Path], *, block: int = VECTOR_BLOCK) -> int:
    """Polygons of the labelled regions of a label GeoTIFF; returns the number of polygons.

    Args:
        out_paths: files to write, the format from the suffix (``.gpkg`` and/or ``.geojson``),
            each atomically; the GeoPackage layer is named after the file's stem.
    """
    import contextlib

    import rasterio
    from rasterio.features import shapes
    from rasterio.windows import Window

    from alps.labeling.paint import label_value_to_cluster

    bad = [p for p in out_paths if p.suffix not in (".gpkg", ".geojson")]
    if bad:
        raise ValueError(f"vector files must end in .gpkg or .geojson, got {bad}")
    count = 0
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(rasterio.open(label_path))
        crs_wkt = src.crs.to_wkt() if src.crs is not None else None
        pixel_area = abs(src.transform.determinant) or 1.0
        geojson, gpkg = None, None
        for out_path in out_paths:
            tmp = stack.enter_context(atomic_path(out_path))
            if out_path.suffix == ".gpkg":
                gpkg = _GeoPackageWriter(tmp, out_path.stem, crs_wkt)
                continue
            geojson = stack.enter_context(tmp.open("w", encoding="utf-8"))
            head: dict[str, Any] = {"type": "FeatureCollection", "name": out_path.stem}
            crs = _crs_member(crs_wkt)
            if crs is not None:
                head["crs"] = crs
            geojson.write(json.dumps(head)[:-1] + ', "features": [\n')
        for y0 in range(0, src.height, block):
            for x0 in range(0, src.width, block):
                window = Window(x0, y0, min(block, src.width - x0), min(block, src.height - y0))
                values = src.read(1, window=window)
                valid = values != 255
                if not valid.any():
                    continue
                data = values.astype(np.int32)
                for geometry, value in shapes(data, mask=valid, transform=src.window_transform(window)):
                    cluster = int(label_value_to_cluster(int(value)))
                    area = _polygon_area(geometry)
                    pixels = round(area / pixel_area)
                    if gpkg is not None:
                        gpkg.add(_polygon_wkb(geometry["coordinates"]), cluster, area, pixels)
                    if geojson is not None:
                        feature = {
                            "type": "Feature",
                            "properties": {"cluster": cluster, "area": round(area, 6), "pixels": pixels},
                            "geometry": geometry,
                        }
                        geojson.write((",\n" if count else "") + json.dumps(feature))
                    count += 1
        if gpkg is not None:
            gpkg.flush()
        if geojson is not None:
            geojson.write("\n]}\n")
            geojson.close()  # before the atomic move
    return count


def write_coco_instances(
    path: Path,
    images: Sequence[dict[str, Any]],
    tables: Sequence[Path],
    clusters: dict[str, npt.NDArray[np.int32]],
    k: int,
) -> int:
    """COCO instances JSON for plain images; returns the number of annotations.

    Args:
        images: ``{"id": image id, "file_name": path relative to the dataset, "height", "width"}``,
            in the order COCO image ids (1, 2, ...) are given.
        tables: the mask tables of those images (same order).
        clusters: cluster per mask by image id (as from :func:`alps.labeling.cluster.assign_clusters`).
        k: number of clusters (categories ``1..k`` stand for clusters ``0..k-1``).
    """
    from alps.labeling.table import read_mask_table, table_rles

    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, (image, table_path) in enumerate(zip(images, tables, strict=True), start=1):
        coco_images.append(
            {
                "id": number,
                "file_name": image["file_name"],
                "height": image["height"],
                "width": image["width"],
            }
        )
        table = read_mask_table(table_path)
        areas = table.column("area").to_pylist()
        bboxes = table.column("bbox").to_pylist()
        ids = clusters.get(image["id"], np.zeros(0, np.int32))
        for rle, area, bbox, cluster in zip(table_rles(table), areas, bboxes, ids, strict=True):
            if cluster < 0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": int(cluster) + 1,
                    "segmentation": rle,
                    "area": int(area),
                    "bbox": [float(v) for v in bbox],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": f"cluster_{c}", "supercategory": "pseudo"} for c in range(k)]
    data = {
        "info": {"description": "alps-seg pseudo-labels (category = k-means cluster of SAM masks)"},
        "images": coco_images,
        "annotations": annotations,
        "categories": categories,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return len(annotations)
