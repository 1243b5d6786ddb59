"""Exports of label maps for GIS and detection tools: label GeoTIFF, preview overlay, polygons, COCO.

* :func:`write_label_geotiff`: single band, same size, CRS and transform as the scene, 256-px
  internal tiles, DEFLATE, ``nodata = 255`` (unlabeled / invalid). Written block by block from a
  painting callback, so memory is bounded by one block.
* :func:`save_scene_overlay`: a decimated (longest side <= ``max_side``) colour overlay JPEG.
* :func:`write_label_vectors`: polygons of the labelled regions as GeoJSON (QGIS/GDAL open it),
  properties ``cluster`` (id) and ``area`` (in CRS units squared, or pixels without a CRS); the
  ``crs`` member names the EPSG code when the CRS has one. Polygons are traced per block of
  ``block`` px, so a region crossing a block line is split there (rasterising the polygons still
  reproduces the raster).
* :func:`write_coco_instances`: COCO instances JSON for plain images: one category per cluster,
  one annotation (compressed RLE) per clustered mask.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps.table import atomic_path

__all__ = ["save_scene_overlay", "write_coco_instances", "write_label_geotiff", "write_label_vectors"]

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
    on_block: Callable[[npt.NDArray[Any]], None] | None = None,
) -> None:
    """Write ``paint((y0, y1, x0, x1))`` for every block, row-major, into a tiled GeoTIFF (atomically)."""
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
                    on_block(values)
                window = rasterio.windows.Window(box[2], box[0], box[3] - box[2], box[1] - box[0])
                dst.write(values, 1, window=window)


def save_scene_overlay(
    path: Path, scene_path: Path, label_path: Path, stretch: Any, colours: Any, *, max_side: int = 2048
) -> None:
    """Decimated colour overlay of a scene and its label GeoTIFF (nearest-neighbour reads)."""
    import rasterio
    from rasterio.enums import Resampling

    from alps.labels import save_overlay

    with rasterio.open(scene_path) as src, rasterio.open(label_path) as lab:
        factor = max(1.0, max(src.height, src.width) / max_side)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        data = src.read(
            list(stretch.bands), out_shape=(len(stretch.bands), *shape), resampling=Resampling.nearest
        )
        labels = lab.read(1, out_shape=shape, resampling=Resampling.nearest)
    save_overlay(path, stretch.apply(data), labels, colours=colours)


def _ring_area(ring: Sequence[Sequence[float]]) -> float:
    xy = np.asarray(ring, dtype=np.float64)
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


def write_label_vectors(label_path: Path, out_path: Path, *, block: int = 4096) -> int:
    """Polygons of the labelled regions of a label GeoTIFF as GeoJSON; returns the number written."""
    import rasterio
    from rasterio.features import shapes
    from rasterio.windows import Window

    from alps.labels import label_value_to_cluster

    count = 0
    with (
        rasterio.open(label_path) as src,
        atomic_path(out_path) as tmp,
        tmp.open("w", encoding="utf-8") as fh,
    ):
        crs_wkt = src.crs.to_wkt() if src.crs is not None else None
        head: dict[str, Any] = {"type": "FeatureCollection", "name": out_path.stem}
        crs = _crs_member(crs_wkt)
        if crs is not None:
            head["crs"] = crs
        fh.write(json.dumps(head)[:-1] + ', "features": [\n')
        for y0 in range(0, src.height, block):
            for x0 in range(0, src.width, block):
                window = Window(x0, y0, min(block, src.width - x0), min(block, src.height - y0))
                values = src.read(1, window=window)
                valid = values != 255
                if not valid.any():
                    continue
                data = values.astype(np.int32)
                for geometry, value in shapes(data, mask=valid, transform=src.window_transform(window)):
                    feature = {
                        "type": "Feature",
                        "properties": {
                            "cluster": int(label_value_to_cluster(int(value))),
                            "area": round(_polygon_area(geometry), 6),
                        },
                        "geometry": geometry,
                    }
                    fh.write((",\n" if count else "") + json.dumps(feature))
                    count += 1
        fh.write("\n]}\n")
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
        clusters: cluster per mask by image id (as from :func:`alps.cluster.assign_clusters`).
        k: number of clusters (categories ``1..k`` stand for clusters ``0..k-1``).
    """
    from alps.table import read_mask_table, table_rles

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
