"""``alps label`` on GeoTIFF scenes: real NEON imagery and rasters built from it.

Masks come from SLIC (deterministic, plenty of them, many crossing tile borders) with the tiny
random SAM of ``test_pipeline`` as the encoder, so the tiling, merging, stitching and exports are
tested in seconds; the mask source itself is tested elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.features import rasterize

from alps.geo.raster import plan_tiles
from alps.geo.tiles import TileMasks, link_pair
from alps.labeling.run import label
from tests.labeling.test_run import tiny_sam

FAST: dict[str, Any] = {"masks": "slic", "points_per_side": 6, "clusters": 4, "progress": False}


@pytest.fixture(scope="module")
def neon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alps.samples.neon import sample_geotiff
    from tests.conftest import require_asset

    return require_asset("the deepforest wheel", lambda: sample_geotiff(tmp_path_factory.mktemp("neon")))


def _mirror_2x2(neon: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(neon) as src:
        a, profile = src.read(), src.profile
    top = np.concatenate([a, a[:, :, ::-1]], axis=2)
    return np.concatenate([top, top[:, ::-1]], axis=1), profile


def _write(path: Path, data: np.ndarray, profile: dict[str, Any], **changes: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prof = {**profile, "height": data.shape[1], "width": data.shape[2], "count": data.shape[0]}
    prof.update(dtype=data.dtype.name, tiled=True, blockxsize=256, blockysize=256, **changes)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def _vector_features(path: Path) -> tuple[list[tuple[dict[str, Any], int]], np.ndarray, Any]:
    """``[(geometry, cluster)]``, ``(2, n)`` areas and pixel counts and the CRS of a vector file."""
    import shapely
    from pyogrio import read_info
    from pyogrio.raw import read

    info = read_info(path)
    assert info["geometry_type"] == "Polygon" and list(info["fields"]) == ["cluster", "area", "pixels"]
    meta, _, geometry, (cluster, area, pixels) = read(path)
    polygons = shapely.from_wkb(geometry)
    assert shapely.is_valid(polygons).all()
    assert np.allclose(shapely.area(polygons), area, rtol=1e-9)
    shapes = [(shapely.geometry.mapping(g), int(c)) for g, c in zip(polygons, cluster, strict=True)]
    return shapes, np.stack([area, pixels]), meta["crs"]


def _check_vectors(run_out: Path, image_id: str, label_path: Path, suffix: str = ".gpkg") -> Any:
    """Rasterising the polygons reproduces the label raster up to boundary pixels; returns the CRS."""
    shapes, (areas, pixels), crs = _vector_features(run_out / "vectors" / f"{image_id}{suffix}")
    with rasterio.open(label_path) as src:
        labels, transform, shape = src.read(1), src.transform, (src.height, src.width)
        pixel_area = abs(transform.determinant)
    assert shapes and (areas > 0).all() and (pixels >= 1).all()
    assert areas == pytest.approx(pixels * pixel_area, rel=1e-6)
    # areas are in CRS units: the labelled pixels times the pixel area
    assert areas.sum() == pytest.approx((labels != 255).sum() * pixel_area, rel=1e-6)
    burned = rasterize(shapes, out_shape=shape, transform=transform, fill=255, dtype="int32")
    assert (burned == labels).mean() > 0.99
    return crs


def test_real_geotiff_keeps_crs_transform_and_vectors_round_trip(neon: Path, tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "OSBS_029.tif").write_bytes(neon.read_bytes())
    run = label(inp, tmp_path / "out", model=tiny_sam(), vector_format="both", **FAST)
    record = run.images[0]
    assert record.status == "ok" and record.tiles == 1 and record.label == "labels/train/OSBS_029.tif"
    assert record.vector == "vectors/OSBS_029.gpkg"
    with rasterio.open(neon) as src, rasterio.open(tmp_path / "out" / record.label) as lab:
        assert lab.crs == src.crs and lab.transform == src.transform and lab.shape == src.shape
        assert lab.profile["tiled"] and lab.profile["compress"] == "deflate" and lab.nodata == 255
        labels = lab.read(1)
    assert (labels != 255).mean() > 0.5
    assert (tmp_path / "out" / "overlays" / "OSBS_029.jpg").stat().st_size > 0
    crs = _check_vectors(tmp_path / "out", "OSBS_029", tmp_path / "out" / record.label, ".geojson")
    assert crs.endswith("32617")
    crs = _check_vectors(tmp_path / "out", "OSBS_029", tmp_path / "out" / record.label, ".gpkg")
    with rasterio.open(neon) as src:
        assert rasterio.crs.CRS.from_user_input(crs) == src.crs


def test_large_scene_tiles_merges_and_resumes(
    neon: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data, profile = _mirror_2x2(neon)
    scene = _write(tmp_path / "in" / "scene.tif", data, profile)
    out = tmp_path / "out"
    opts = {**FAST, "tile_size": 256, "tile_overlap": 48}
    with caplog.at_level("INFO", logger="alps"):
        run = label(scene, out, model=tiny_sam(), **opts)
    # the estimate after the first tile: tiles to do, seconds per tile, minutes for the scene
    assert any("16 tiles to do, first tile took" in m and "min for the scene" in m for m in caplog.messages)
    record = run.images[0]
    assert record.tiles == len(plan_tiles(800, 800, 256, 48)) == 16
    assert len(list((out / "tables" / "scene").glob("*.parquet"))) == 16
    with rasterio.open(out / record.label) as lab:
        labels = lab.read(1)
        assert lab.transform == profile["transform"] and lab.crs == profile["crs"]
    assert (labels != 255).mean() > 0.5
    # no seams: along every core boundary, labels agree across the line as often as elsewhere
    bounds = sorted({t.core[1] for t in plan_tiles(800, 800, 256, 48)} - {800})
    across = np.mean([(labels[:, b - 1] == labels[:, b]).mean() for b in bounds])
    inside = np.mean([(labels[:, b - 1] == labels[:, b]).mean() for b in (100, 300, 500, 700)])
    assert across > inside - 0.02  # measured 0.9725 vs 0.9834
    _check_vectors(out, "scene", out / record.label)
    before = (out / record.label).read_bytes()
    # interrupted run: drop two tile tables and the state; the rerun redoes only those tiles
    for name in ("r0001_c0001.parquet", "r0002_c0003.parquet"):
        (out / "tables" / "scene" / name).unlink()
    (out / "state" / "scene.json").unlink()
    again = label(scene, out, model=tiny_sam(), **opts)
    assert again.images[0].status == "ok" and again.images[0].n_masks > 0
    assert (out / record.label).read_bytes() == before
    third = label(scene, out, model=tiny_sam(), **opts)
    assert third.images[0].resumed and (out / record.label).read_bytes() == before


def test_object_cut_by_tile_border_is_one_mask() -> None:
    from pycocotools import mask as mask_utils

    a_tile, b_tile = plan_tiles(128, 224, 128, 32)  # overlap strip: x in [96, 128)
    disc = np.zeros((128, 224), bool)
    yy, xx = np.mgrid[:128, :224]
    disc[(yy - 64) ** 2 + (xx - 112) ** 2 < 50**2] = True  # wider than the overlap

    def masks(tile: Any) -> TileMasks:
        part = disc[:, tile.x0 : tile.x1]
        rle = mask_utils.encode(np.asfortranarray(part.astype(np.uint8)))
        rle = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        bbox = np.asarray([mask_utils.toBbox(rle)], np.float64)
        return TileMasks(tile, [rle], bbox, np.array([part.sum()]), np.array([0]))

    assert link_pair(masks(a_tile), masks(b_tile)) == [(0, 0)]


def test_object_crossing_a_tile_corner_is_one_mask(
    neon: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A band across the corner of four tiles, whose small side pieces the gate drops: only the
    diagonal tiles keep a part, and the merge must still make it one object."""
    import alps.labeling.sources
    from alps.geo.tiles import link_scene
    from alps.labeling.inputs.scene import TileSettings, _loader, plan_scene

    data, profile = _mirror_2x2(neon)  # 800 x 800; tiles of 256 px, overlap 64: corner at (224, 224)
    yy, xx = np.mgrid[:800, :800]
    band = (np.abs(yy - xx) <= 6 * np.sqrt(2)) & ((yy + xx) / 2 >= 120) & ((yy + xx) / 2 <= 330)
    data[:, band] = np.array([255, 0, 255], np.uint8)[:, None]
    scene = _write(tmp_path / "in" / "scene.tif", data, profile)
    slic = alps.labeling.sources.slic_records

    def with_band(image: np.ndarray, **kwargs: Any) -> list[dict[str, Any]]:
        """SLIC superpixels plus the magenta band as one mask (a stand-in for SAM finding it)."""
        from pycocotools import mask as mask_utils

        records = slic(image, **kwargs)
        magenta = (image == (255, 0, 255)).all(axis=-1)
        if magenta.any():
            rle = mask_utils.encode(np.asfortranarray(magenta.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            records.append({**records[0], "segmentation": rle, "area": int(magenta.sum()),
                            "bbox": [float(v) for v in mask_utils.toBbox(rle)]})  # fmt: skip
        return records

    monkeypatch.setattr(alps.labeling.sources, "slic_records", with_band)
    out = tmp_path / "out"
    opts = {**FAST, "points_per_side": 5, "tile_size": 256, "tile_overlap": 64, "min_area": 1500}
    run = label(scene, out, model=tiny_sam(), **opts)
    assert run.images[0].status == "ok"
    plan = plan_scene(scene, TileSettings(None, 256, 64), 256)
    load = _loader(out, "scene", {}, True)
    band_masks = {}
    for tile in plan.tiles:
        masks = load(tile)
        for i, rle in enumerate(masks.rles):
            from alps.core.rle import decode_rles

            dense = decode_rles([rle])[0]
            inside = band[tile.y0 : tile.y1, tile.x0 : tile.x1]
            if (dense & inside).sum() > 0.9 * dense.sum():
                band_masks[tile.key] = i
    # the side tiles' pieces (1088 px) fell under min_area: only the diagonal pair holds a part
    assert set(band_masks) == {"r0000_c0000", "r0001_c0001"}
    links = link_scene(plan.tiles, load, lambda f: np.zeros(len(f), np.int64))
    parts = [(key, i) for key, i in band_masks.items()]
    assert all(part in links for part in parts)
    assert links[parts[0]] == links[parts[1]] and links[parts[0]][1] == 2272 + 2323  # one object
    with rasterio.open(out / run.images[0].label) as lab:
        labels = lab.read(1)
    core = band & (np.abs(yy - xx) <= 3)  # away from the band's edge (SLIC masks may paint there)
    assert len(np.unique(labels[core])) == 1 and labels[core][0] != 255


def test_uint16_multispectral_nodata_and_band_choice(neon: Path, tmp_path: Path) -> None:
    with rasterio.open(neon) as src:
        rgb, profile = src.read().astype(np.uint16), src.profile
    nir = (rgb.mean(axis=0, keepdims=True) * 1.5).astype(np.uint16)
    data = np.concatenate([rgb[2:3], rgb[1:2], rgb[0:1], nir, nir // 2]) * 40 + 100  # B, G, R, NIR, SWIR
    data[:, :, :40] = 0  # nodata border
    data[:, -30:, :] = 0
    scene = _write(tmp_path / "in" / "ms.tif", data.astype(np.uint16), profile, nodata=0)
    run = label(scene, tmp_path / "out", model=tiny_sam(), bands="3,2,1", **FAST)
    record = run.images[0]
    assert record.status == "ok" and "bands 3,2,1 of 5" in record.conversion
    assert any("stretched, all bands together" in note for note in record.conversion)
    with rasterio.open(tmp_path / "out" / record.label) as lab:
        labels = lab.read(1)
        assert lab.crs == profile["crs"] and lab.transform == profile["transform"]
    assert (labels[:, :40] == 255).all() and (labels[-30:] == 255).all()
    assert (labels[:-30, 40:] != 255).mean() > 0.2


def test_rotated_transform_other_crs(neon: Path, tmp_path: Path) -> None:
    with rasterio.open(neon) as src:
        data, profile = src.read(), src.profile
    transform = Affine.translation(1_000_000, 5_000_000) * Affine.rotation(20) * Affine.scale(0.3, -0.3)
    scene = _write(tmp_path / "in" / "rot.tif", data, profile, crs="EPSG:3035", transform=transform)
    run = label(scene, tmp_path / "out", model=tiny_sam(), **FAST)
    with rasterio.open(tmp_path / "out" / run.images[0].label) as lab:
        assert lab.transform == transform and lab.crs == rasterio.crs.CRS.from_epsg(3035)
    crs = _check_vectors(tmp_path / "out", "rot", tmp_path / "out" / run.images[0].label)
    assert rasterio.crs.CRS.from_user_input(crs) == rasterio.crs.CRS.from_epsg(3035)
    assert not (tmp_path / "out" / "vectors" / "rot.geojson").exists()  # GeoPackage only by default


def test_plain_images_get_coco_instances(tmp_path: Path) -> None:
    from PIL import Image

    from tests.labeling.test_run import synthetic_image

    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray(synthetic_image(i)).save(tmp_path / "in" / f"img_{i}.png")
    run = label(tmp_path / "in", tmp_path / "out", model=tiny_sam(), **FAST)
    coco = json.loads((tmp_path / "out" / "coco" / "instances.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == [r.image for r in run.images]
    assert len(coco["categories"]) == run.clusters
    assert len(coco["annotations"]) == sum(r.n_masks_kept for r in run.images)
    assert all(r.label and r.label.endswith(".png") and r.tiles is None for r in run.images)
