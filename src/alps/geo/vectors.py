"""Polygons of a label GeoTIFF for GIS tools: GeoPackage and/or GeoJSON, written through GDAL (pyogrio).

:func:`write_label_vectors` traces the labelled regions with :func:`rasterio.features.shapes` per
block of ``block`` px, turns them into :mod:`shapely` polygons (areas from shapely) and streams them,
one Arrow record batch per block, into :func:`pyogrio.write_arrow`; memory is bounded by one block.
A region crossing a block line is split there (rasterising the polygons still reproduces the
raster).

* GeoPackage (``.gpkg``): one ``Polygon`` layer named after the file's stem, CRS set, R-tree
  spatial index (GDAL's default).
* GeoJSON (``.geojson``): GDAL's GeoJSON writer, whose ``crs`` member names the EPSG code when the
  CRS has one. Written after the GeoPackage by streaming its features back when both are asked for,
  so the polygons are traced once.

Attributes: ``cluster`` (int32 cluster id), ``area`` (float64, CRS units squared; pixels without a
CRS) and ``pixels`` (int64 pixel count). QGIS/GDAL open both files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alps.core.files import atomic_path

__all__ = ["VECTOR_BLOCK", "VECTOR_FORMATS", "vector_suffixes", "write_label_vectors"]

VECTOR_BLOCK = 2048  # polygon tracing granularity (an int32 copy of a block: 16 MiB)
VECTOR_FORMATS = ("gpkg", "geojson", "both")
_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON"}


def vector_suffixes(vector_format: str) -> tuple[str, ...]:
    """File suffixes written for ``--vector-format`` (``gpkg``, ``geojson`` or ``both``)."""
    if vector_format not in VECTOR_FORMATS:
        raise ValueError(f"vector_format must be one of {VECTOR_FORMATS}, got {vector_format!r}")
    return {"gpkg": (".gpkg",), "geojson": (".geojson",), "both": (".gpkg", ".geojson")}[vector_format]


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "geoarrow.wkb"}),
            pa.field("cluster", pa.int32()),
            pa.field("area", pa.float64()),
            pa.field("pixels", pa.int64()),
        ]
    )


def _block_batches(src: Any, block: int) -> Iterator[Any]:
    """One Arrow record batch (WKB polygon, cluster, area, pixels) per block of the open label raster."""
    import pyarrow as pa
    import shapely
    from rasterio.features import shapes
    from rasterio.windows import Window

    from alps.labeling.paint import label_value_to_cluster

    schema = _schema()
    pixel_area = abs(src.transform.determinant) or 1.0
    for y0 in range(0, src.height, block):
        for x0 in range(0, src.width, block):
            window = Window(x0, y0, min(block, src.width - x0), min(block, src.height - y0))
            values = src.read(1, window=window)
            valid = values != 255
            if not valid.any():
                continue
            traced = list(shapes(values.astype(np.int32), mask=valid, transform=src.window_transform(window)))
            polygons = np.array([shapely.geometry.shape(g) for g, _ in traced], dtype=object)
            area = shapely.area(polygons)
            columns = [
                pa.array(shapely.to_wkb(polygons), pa.binary()),
                pa.array(label_value_to_cluster([v for _, v in traced]).astype(np.int32)),
                pa.array(area),
                pa.array(np.rint(area / pixel_area).astype(np.int64)),
            ]
            yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _write(path: Path, layer: str, stream: Any, crs_wkt: str | None, geometry: str = "geometry") -> None:
    import warnings

    from pyogrio import write_arrow

    path.unlink(missing_ok=True)  # GDAL creates the file itself
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)  # pixel coordinates
        write_arrow(
            stream,
            path,
            layer=layer,
            driver=_DRIVERS[path.suffix],
            geometry_name=geometry,
            geometry_type="Polygon",
            crs=crs_wkt,
        )


def write_label_vectors(label_path: Path, out_paths: Sequence[Path], *, block: int = VECTOR_BLOCK) -> int:
    """Polygons of the labelled regions (value != 255) of a label GeoTIFF; returns the number of polygons.

    Args:
        label_path: single-band label GeoTIFF (uint8/uint16 label values, 255 = unlabeled).
        out_paths: files to write, the format from the suffix (``.gpkg`` and/or ``.geojson``), each
            atomically; the layer is named after the file's stem.
        block: tracing block side in pixels (memory is bounded by one block).
    """
    import pyarrow as pa
    import rasterio
    from pyogrio import open_arrow, read_info

    bad = [p for p in out_paths if p.suffix not in _DRIVERS]
    if bad:
        raise ValueError(f"vector files must end in .gpkg or .geojson, got {bad}")
    if not out_paths:
        return 0
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(rasterio.open(label_path))
        crs_wkt = src.crs.to_wkt() if src.crs is not None else None
        tmps = [stack.enter_context(atomic_path(p)) for p in out_paths]
        first = tmps[0]
        batches = pa.RecordBatchReader.from_batches(_schema(), _block_batches(src, block))
        _write(first, out_paths[0].stem, batches, crs_wkt)
        for out_path, tmp in zip(out_paths[1:], tmps[1:], strict=True):
            with open_arrow(first, use_pyarrow=True) as (meta, reader):
                _write(tmp, out_path.stem, reader, crs_wkt, meta["geometry_name"] or "wkb_geometry")
        return int(read_info(first)["features"])
