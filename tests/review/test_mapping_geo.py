"""`alps map` on scene outputs (label GeoTIFF + GeoPackage/GeoJSON polygons) and label volumes (NIfTI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from alps.geo.outputs import write_label_geotiff
from alps.geo.vectors import write_label_vectors
from alps.labeling.paint import cluster_to_label_value
from alps.review.mapping import apply_mapping, parse_mapping

CRS = 'PROJCS["WGS 84 / UTM zone 17N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-81],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32617"]]'  # noqa: E501


def scene_dataset(root: Path) -> tuple[Path, np.ndarray]:
    """A 600 x 700 scene labelled with clusters 0..4 in vertical bands (255 on the left strip)."""
    clusters = np.repeat(np.arange(-1, 6)[None, :], 100, axis=1).repeat(600, axis=0)[:, :700]
    clusters[clusters == 5] = 4
    values = cluster_to_label_value(clusters).astype(np.uint8)
    label = root / "labels" / "train" / "scene.tif"
    transform = (0.1, 0.0, 400000.0, 0.0, -0.1, 3300000.0)
    write_label_geotiff(label, 600, 700, CRS, transform, "uint8",
                        lambda box: values[box[0] : box[1], box[2] : box[3]])  # fmt: skip
    write_label_vectors(label, [root / "vectors" / "scene.gpkg", root / "vectors" / "scene.geojson"])
    record = {"id": "scene", "status": "ok", "split": "train", "height": 600, "width": 700,
              "label": "labels/train/scene.tif", "vector": "vectors/scene.gpkg",
              "overlay": "overlays/scene.jpg", "table": "tables/scene", "image": None}  # fmt: skip
    manifest = {"num_classes": 5, "cluster_sizes": [1] * 5, "class_pixels": [0] * 5, "images": [record]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, clusters


def test_scene_geotiff_and_vectors_are_remapped(tmp_path: Path) -> None:
    import rasterio
    from pyogrio.raw import read

    run, clusters = scene_dataset(tmp_path / "run")
    mapping = parse_mapping({"classes": {"water": [0, 2], "forest": [1, 4]}, "ignore": [3]})
    result = apply_mapping(run, mapping)
    out = result.out
    with (
        rasterio.open(run / "labels" / "train" / "scene.tif") as src,
        rasterio.open(out / "labels" / "train" / "scene.tif") as dst,
    ):
        assert dst.crs == src.crs and dst.transform == src.transform and dst.nodata == 255
        assert dst.profile["tiled"] and (dst.width, dst.height) == (700, 600)
        got = dst.read(1)
    lut = np.array([0, 1, 0, 255, 1])
    np.testing.assert_array_equal(got, np.where(clusters >= 0, lut[clusters.clip(0)], 255))
    meta, _, _, fields = read(out / "vectors" / "scene.gpkg")
    columns = dict(zip(meta["fields"], fields, strict=True))
    assert {"class", "class_name", "cluster", "area", "pixels"} <= set(columns)
    assert 3 not in set(columns["cluster"].tolist())  # the ignored cluster's polygons are gone
    for cls, name, cluster in zip(columns["class"], columns["class_name"], columns["cluster"], strict=True):
        assert lut[int(cluster)] == cls and name == ["water", "forest"][int(cls)]
    assert int(np.sum(columns["pixels"])) == int((got != 255).sum())
    geojson = json.loads((out / "vectors" / "scene.geojson").read_text())
    assert {f["properties"]["class_name"] for f in geojson["features"]} == {"water", "forest"}
    assert result.class_pixels == [int((got == 0).sum()), int((got == 1).sum())]


def test_label_volume_is_remapped_with_its_header(tmp_path: Path) -> None:
    import nibabel as nib

    root = tmp_path / "run"
    (root / "labels").mkdir(parents=True)
    rng = np.random.default_rng(1)
    clusters = rng.integers(-1, 4, size=(9, 8, 5))
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nib.save(
        nib.Nifti1Image(cluster_to_label_value(clusters).astype(np.uint8), affine),
        root / "labels" / "ct.nii.gz",
    )
    volume = {"id": "ct", "status": "ok", "label_volume": "labels/ct.nii.gz", "slice_ids": []}
    manifest = {"num_classes": 4, "cluster_sizes": [1] * 4, "images": [], "volumes": [volume]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    apply_mapping(root, parse_mapping({"classes": {"lesion": [3], "tissue": [0, 1]}, "ignore": [2]}))
    mapped = nib.load(root / "mapped" / "labels" / "ct.nii.gz")
    np.testing.assert_allclose(mapped.affine, affine)
    assert mapped.get_data_dtype() == np.uint8
    lut = np.array([1, 1, 255, 0])
    np.testing.assert_array_equal(
        np.asarray(mapped.dataobj), np.where(clusters >= 0, lut[clusters.clip(0)], 255)
    )
    assert json.loads((root / "mapped" / "manifest.json").read_text())["volumes"][0]["id"] == "ct"
