"""Polygons of label GeoTIFFs: attributes, CRS, formats and block streaming, read back through GDAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyogrio import read_info
from pyogrio.raw import read
from rasterio.crs import CRS
from rasterio.features import rasterize

from alps.geo.vectors import vector_suffixes, write_label_vectors

# 0.5 m pixels in UTM 17N: large map coordinates, as real scenes have
TRANSFORM = Affine(0.5, 0.0, 400_000.0, 0.0, -0.5, 3_280_000.0)


def _label_tif(path: Path, labels: np.ndarray, crs: str | None = "EPSG:32617") -> Path:
    profile = {"driver": "GTiff", "height": labels.shape[0], "width": labels.shape[1], "count": 1}
    profile.update(dtype=labels.dtype.name, crs=crs, transform=TRANSFORM, nodata=255)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels, 1)
    return path


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str | None]:
    """Polygons (shapely), cluster, area, pixels and the CRS of a vector file."""
    meta, _, geometry, (cluster, area, pixels) = read(path)
    return shapely.from_wkb(geometry), cluster, area, pixels, meta["crs"]


def _two_regions() -> np.ndarray:
    labels = np.full((60, 80), 255, np.uint8)
    labels[5:15, 10:30] = 0  # 200 px
    labels[30:55, 40:70] = 3  # 750 px, with a 5 x 4 hole of unlabeled pixels
    labels[40:45, 50:54] = 255
    return labels


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_known_polygon_area_and_attributes(tmp_path: Path, suffix: str) -> None:
    labels = np.full((20, 20), 255, np.uint8)
    labels[2:6, 3:11] = 7  # 4 x 8 px = 32 px = 8 m2
    out = tmp_path / f"one{suffix}"
    assert write_label_vectors(_label_tif(tmp_path / "l.tif", labels), [out]) == 1
    polygons, cluster, area, pixels, crs = _read(out)
    assert cluster.tolist() == [7] and pixels.tolist() == [32] and area.tolist() == [8.0]
    x0, y0 = TRANSFORM @ (3, 6)
    assert polygons[0].equals(shapely.box(x0, y0, x0 + 4.0, y0 + 2.0))
    assert shapely.area(polygons[0]) == 8.0
    assert CRS.from_user_input(crs) == CRS.from_epsg(32617)
    info = read_info(out)
    assert info["layer_name"] == "one" and info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == ["cluster", "area", "pixels"]


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_regions_exact_attributes_crs_and_rasterise_back(tmp_path: Path, suffix: str) -> None:
    labels = _two_regions()
    out = tmp_path / f"two{suffix}"
    assert write_label_vectors(_label_tif(tmp_path / "l.tif", labels), [out]) == 2
    polygons, cluster, area, pixels, crs = _read(out)
    order = np.argsort(cluster)
    assert cluster[order].tolist() == [0, 3]
    assert pixels[order].tolist() == [200, 730]
    assert area[order].tolist() == [50.0, 182.5]  # pixels x 0.25 m2
    assert len(polygons[order][1].interiors) == 1  # the hole
    assert CRS.from_user_input(crs) == CRS.from_epsg(32617)
    burned = rasterize(
        zip(polygons, cluster.tolist(), strict=True),
        out_shape=labels.shape,
        transform=TRANSFORM,
        fill=255,
        dtype="uint8",
    )
    assert np.array_equal(burned, labels)


def test_geopackage_has_a_spatial_index(tmp_path: Path) -> None:
    out = tmp_path / "scene.gpkg"
    write_label_vectors(_label_tif(tmp_path / "l.tif", _two_regions()), [out])
    with sqlite3.connect(out) as db:
        tables = {name for (name,) in db.execute("select name from sqlite_master where type = 'table'")}
        (extension,) = db.execute("select extension_name from gpkg_extensions").fetchone()
    assert "rtree_scene_geom" in tables and extension == "gpkg_rtree_index"


def test_blocks_split_regions_and_append_across_blocks(tmp_path: Path) -> None:
    """Traced per 16-px block: regions are cut at block lines, every block's polygons land in both files."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(8, 10), dtype=np.uint16).repeat(6, 0).repeat(6, 1)  # 48 x 60
    labels[:20, :20] = 255
    labels[30:, 50:] = 300  # a cluster id past 255 (stored as 300 = cluster 299) in a uint16 raster
    label_path = _label_tif(tmp_path / "l.tif", labels)
    outs = [tmp_path / f"blocks{s}" for s in vector_suffixes("both")]
    n = write_label_vectors(label_path, outs, block=16)
    whole = write_label_vectors(label_path, [tmp_path / "whole.gpkg"], block=4096)
    assert n > whole  # cut at the block lines
    for out in outs:
        polygons, cluster, area, pixels, _ = _read(out)
        assert len(polygons) == n
        assert pixels.sum() == (labels != 255).sum() and area.sum() == pixels.sum() * 0.25
        bounds = shapely.bounds(polygons)  # every polygon inside one 16-px block (8 m)
        cols = np.floor((bounds[:, 0] - 400_000.0) / 8 + 1e-9)
        assert (bounds[:, 2] - 400_000.0 <= (cols + 1) * 8 + 1e-9).all()
        assert set(cluster.tolist()) == {0, 1, 2, 299}
        values = np.where(cluster >= 255, cluster + 1, cluster)
        burned = rasterize(
            zip(polygons, values.tolist(), strict=True),
            out_shape=labels.shape,
            transform=TRANSFORM,
            fill=255,
            dtype="uint16",
        )
        assert np.array_equal(burned, labels)


def test_no_crs_and_no_labels(tmp_path: Path) -> None:
    out = tmp_path / "empty.gpkg"
    empty = np.full((10, 10), 255, np.uint8)
    assert write_label_vectors(_label_tif(tmp_path / "e.tif", empty, crs=None), [out]) == 0
    info = read_info(out)
    assert info["features"] == 0 and info["crs"] is None and info["geometry_type"] == "Polygon"


def test_bad_suffix_and_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.gpkg or \.geojson"):
        write_label_vectors(tmp_path / "l.tif", [tmp_path / "x.shp"])
    with pytest.raises(ValueError, match="vector_format must be one of"):
        vector_suffixes("shp")
