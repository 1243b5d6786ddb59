"""Tiled raster reading: tile plans, band choice, the whole-scene stretch and validity masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from alps.geo.raster import estimate_stretch, is_scene, open_scene, parse_bands, plan_tiles, read_tile


@pytest.mark.parametrize(("height", "width", "size", "overlap"), [(800, 1000, 256, 32), (300, 200, 512, 64)])
def test_plan_tiles_cores_partition_the_scene(height: int, width: int, size: int, overlap: int) -> None:
    tiles = plan_tiles(height, width, size, overlap)
    owner = np.zeros((height, width), np.int32)
    for t in tiles:
        assert 0 <= t.y0 < t.y1 <= height and 0 <= t.x0 < t.x1 <= width
        assert t.height == min(size, height) and t.width == min(size, width)  # last tile flush, full size
        cy0, cy1, cx0, cx1 = t.core
        assert t.y0 <= cy0 < cy1 <= t.y1 and t.x0 <= cx0 < cx1 <= t.x1
        owner[cy0:cy1, cx0:cx1] += 1
    assert (owner == 1).all()
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, 128, 64)


def test_parse_bands() -> None:
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert parse_bands("1") == (1,)
    assert parse_bands(None) is None
    for bad in ("0,1,2", "1,2", "a,b,c"):
        with pytest.raises(ValueError):
            parse_bands(bad)


def _write(path: Path, data: np.ndarray, **extra: object) -> Path:
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": "EPSG:32617",
        "transform": Affine(0.5, 0, 400000, 0, -0.5, 3285000),
        **extra,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_stretch_is_joint_excludes_nodata_and_is_shared_by_tiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = np.zeros((5, 300, 400), np.uint16)
    for b in range(5):
        data[b] = rng.integers(1000 * (b + 1), 1000 * (b + 1) + 500, (300, 400))
    data[:, :20, :] = 0  # nodata border
    path = _write(tmp_path / "ms.tif", data, nodata=0)
    scene = open_scene(path, (4, 3, 2))
    assert scene.georeferenced and scene.bands == (4, 3, 2) and scene.count == 5
    stretch = estimate_stretch(path, scene.bands)
    assert stretch.low is not None and stretch.high is not None
    # one pair for the chosen bands together, from valid pixels only (nodata 0 would pull low to 0)
    valid_values = data[[3, 2, 1], 20:, :].astype(np.float64)
    assert (stretch.low, stretch.high) == pytest.approx(tuple(np.percentile(valid_values, (2, 98))), rel=0.01)
    assert 2000 <= stretch.low < 2100 and 4400 < stretch.high <= 4500
    tiles = plan_tiles(300, 400, 256, 32)
    with rasterio.open(path) as src:
        rgb, valid = read_tile(src, tiles[0], stretch)
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    assert not valid[:20].any() and valid[20:].all()
    assert (rgb[:20] == 0).all() and 60 < rgb[20:].mean() < 195
    # joint: the brighter band 4 (shown as red) stays brighter than band 2 (blue)
    assert rgb[20:, :, 0].mean() > rgb[20:, :, 1].mean() > rgb[20:, :, 2].mean() + 50
    with pytest.raises(ValueError, match="band"):
        open_scene(path, (6, 1, 2))


def test_uint8_passes_unchanged_and_single_band_is_replicated(tmp_path: Path) -> None:
    data = np.arange(64 * 80, dtype=np.uint32).reshape(1, 64, 80).astype(np.uint8)
    path = _write(tmp_path / "grey.tif", data)
    scene = open_scene(path)
    assert scene.bands == (1,)
    stretch = estimate_stretch(path, scene.bands)
    assert stretch.passthrough and stretch.low is None
    with rasterio.open(path) as src:
        rgb, valid = read_tile(src, plan_tiles(64, 80, 128, 16)[0], stretch)
    assert valid.all() and (rgb == data[0][:, :, None]).all()


def test_is_scene(tmp_path: Path) -> None:
    geo = _write(tmp_path / "geo.tif", np.zeros((3, 64, 64), np.uint8))
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", height=64, width=64, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 64, 64), np.uint8))
    assert is_scene(geo, max_plain_side=512)
    assert not is_scene(plain, max_plain_side=512)
    assert is_scene(plain, max_plain_side=32)  # larger than a tile
    assert is_scene(plain, max_plain_side=512, bands_given=True)
    assert not is_scene(tmp_path / "x.png", max_plain_side=512)
