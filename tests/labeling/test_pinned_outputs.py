"""Outputs of ``alps label`` pinned by hashes on a fixed corpus, so that refactors cannot change them.

The corpus: real NEON aerial tiles (8-bit RGB) labelled with the real LiteMedSAM weights in exact and
fast mode, the same tiles plus a 16-bit copy through the SLIC source, the georeferenced NEON GeoTIFF cut
into tiles, and a CT crop of a real NIfTI volume. For each run the test hashes every label map
(PNG/GeoTIFF pixels, label volume voxels), every mask table's *content* (column values, not the Parquet
bytes, whose metadata names the writer), the cluster centres and the manifest fields that describe
the result, and compares them with ``tests/labeling/pinned_outputs.json``.

A change that is meant to change outputs updates that file in a commit of its own::

    ALPS_UPDATE_PINNED=1 python -m pytest -q tests/labeling/test_pinned_outputs.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import alps
from tests.labeling.test_run import tiny_sam

PINNED = Path(__file__).with_name("pinned_outputs.json")
UPDATE = os.environ.get("ALPS_UPDATE_PINNED") == "1"
# manifest fields that describe the result (timings, dates, paths and versions do not)
RECORD_FIELDS = (
    "id", "status", "split", "height", "width", "source_mode", "conversion", "n_masks", "n_masks_kept",
    "n_labelled_pixels", "image", "label", "table", "tiles", "vector",
)  # fmt: skip


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _table_digest(path: Path) -> str:
    table = pq.read_table(path)
    digest = hashlib.sha256(",".join(table.column_names).encode())
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        digest.update(json.dumps(column.to_pylist(), default=str).encode())
    return digest.hexdigest()[:16]


def _pixels_digest(path: Path) -> str:
    if path.suffix == ".png":
        array = np.asarray(Image.open(path))
    elif path.name.endswith(".nii.gz"):
        import nibabel as nib

        array = np.asarray(nib.load(str(path)).dataobj)
    else:
        import rasterio

        with rasterio.open(path) as src:
            array = src.read()
    return _digest(f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes())


def summarise(out: Path) -> dict[str, Any]:
    """Hashes of everything a run produced that must not change under a refactor."""
    manifest = json.loads((out / "manifest.json").read_text())
    centres = np.load(out / "cluster_model.npz")["centers"]
    summary: dict[str, Any] = {
        "num_classes": manifest["num_classes"],
        "cluster_sizes": manifest["cluster_sizes"],
        "class_pixels": manifest["class_pixels"],
        "counts": {k: v for k, v in manifest["counts"].items() if k != "resumed"},
        "dataset": manifest["dataset"],
        "images": [{k: r.get(k) for k in RECORD_FIELDS} for r in manifest["images"]],
        "centres": _digest(np.ascontiguousarray(centres, dtype=np.float64).tobytes()),
        "tables": {
            p.relative_to(out).as_posix(): _table_digest(p)
            for p in sorted((out / "tables").rglob("*.parquet"))
        },
        "labels": {
            p.relative_to(out).as_posix(): _pixels_digest(p)
            for p in sorted((out / "labels").rglob("*"))
            if p.is_file()
        },
    }
    if "volumes" in manifest:
        summary["volumes"] = [
            {k: v.get(k) for k in ("id", "status", "shape", "axis", "window", "slices", "label")}
            for v in manifest["volumes"]
        ]
    return summary


@pytest.fixture(scope="module")
def pinned() -> dict[str, Any]:
    if UPDATE or not PINNED.exists():
        return {}
    return dict(json.loads(PINNED.read_text()))


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    collected: dict[str, Any] = {}
    yield collected
    if UPDATE and collected:
        old = json.loads(PINNED.read_text()) if PINNED.exists() else {}
        PINNED.write_text(json.dumps({**old, **collected}, indent=1, sort_keys=True) + "\n")


def _check(name: str, out: Path, pinned: dict[str, Any], results: dict[str, Any]) -> None:
    summary = json.loads(json.dumps(summarise(out)))  # tuples -> lists, as in the file
    results[name] = summary
    if UPDATE:
        return
    assert name in pinned, f"no pinned hashes for {name!r}: run with ALPS_UPDATE_PINNED=1 once"
    expected = pinned[name]
    for key in sorted(set(expected) | set(summary)):
        assert summary.get(key) == expected.get(key), f"{name}: {key} changed"


@pytest.fixture(scope="module")
def neon_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import require_asset

    paths = require_asset("NEON sample images", lambda: alps_samples().sample_images(names=_SMALL))
    folder = tmp_path_factory.mktemp("neon")
    for path in paths:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


_SMALL = ("OSBS_029.png", "SOAP_031.png", "SOAP_061.png")


def alps_samples() -> Any:
    """The sample-data module (one home for every sample set)."""
    from alps import samples

    return samples


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_litemedsam_on_neon_tiles(
    mode: str,
    neon_tiles: Path,
    litemedsam_checkpoint: Path,
    tmp_path: Path,
    pinned: dict[str, Any],
    results: dict[str, Any],
) -> None:
    out = tmp_path / "out"
    alps.label(
        neon_tiles, out, model="litemedsam", checkpoint=litemedsam_checkpoint, points_per_side=8,
        clusters=6, mode=mode, val_fraction=0.34, progress=False,
    )  # fmt: skip
    _check(f"neon_litemedsam_{mode}", out, pinned, results)


def test_slic_on_8_and_16_bit_images(
    neon_tiles: Path, tmp_path: Path, pinned: dict[str, Any], results: dict[str, Any]
) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    for path in sorted(neon_tiles.iterdir())[:2]:
        (inp / path.name).write_bytes(path.read_bytes())
    rgb = np.asarray(Image.open(neon_tiles / "SOAP_061.png").convert("RGB"))
    deep = (rgb.astype(np.uint16) * 200 + 1000)[..., 0]  # 16-bit grey
    Image.fromarray(deep).save(inp / "grey16.png")
    out = tmp_path / "out"
    alps.label(inp, out, model=tiny_sam(), masks="slic", points_per_side=6, clusters=5, progress=False)
    _check("slic_8_and_16_bit", out, pinned, results)


def test_geotiff_scene_in_tiles(tmp_path: Path, pinned: dict[str, Any], results: dict[str, Any]) -> None:
    from tests.conftest import require_asset

    scene = require_asset("NEON GeoTIFF", lambda: alps_samples().sample_geotiff())
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "scene.tif").write_bytes(scene.read_bytes())
    out = tmp_path / "out"
    alps.label(
        inp, out, model=tiny_sam(), masks="slic", points_per_side=4, clusters=4, tile_size=160,
        tile_overlap=24, vector_format="gpkg", progress=False,
    )  # fmt: skip
    _check("geotiff_scene", out, pinned, results)


def test_nifti_volume(
    medical_cases: dict, tmp_path: Path, pinned: dict[str, Any], results: dict[str, Any]
) -> None:
    from tests.labeling.test_volume_inputs import lesion_crop

    inp = tmp_path / "in"
    lesion_crop(medical_cases["lung1"], inp / "lung1.nii.gz", depth=4)
    out = tmp_path / "out"
    alps.label(inp, out, model=tiny_sam(), masks="slic", points_per_side=4, clusters=3, progress=False)
    _check("nifti_volume", out, pinned, results)
