"""Outputs of ``alps label`` pinned by hashes on a fixed corpus, so that refactors cannot change them.

The corpus: real NEON aerial tiles (8-bit RGB) labelled with the real LiteMedSAM weights in exact and
fast mode, the same tiles plus a 16-bit copy through the SLIC source, the georeferenced NEON GeoTIFF cut
into tiles, and a CT crop of a real NIfTI volume. For each run the test hashes every label map
(PNG/GeoTIFF pixels, label volume voxels), every mask table's *content* (column values, not the Parquet
bytes, whose metadata names the writer), the cluster centres and the manifest fields that describe
the result, and compares them with ``tests/labeling/pinned_outputs.json``.

Floating point is not portable between CPUs: the same code gives last-bit differences in the SAM
scores, the pooled features and the k-means centres on an AVX2 and an AVX-512 machine (BLAS and
oneDNN pick other kernels). The pinned file therefore holds the discrete outputs exactly (label maps,
masks, cluster assignments and sizes, records) and every floating-point column and the centres as
a sketch (size, norm, sum and three fixed random projections) compared to 1e-4 of the norm, which
a changed, added or dropped mask moves by orders of magnitude more. ``summarise`` also gives exact
digests of the centres and the whole tables, for comparisons between two runs on one machine
(local vs Ray engine).

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


# keys of ``summarise`` that hold bits of floating point: compared between runs on one machine only
MACHINE_KEYS = ("centres", "tables")
SKETCH_RTOL = 1e-4


def _sketch(values: Any) -> list[float]:
    """Size, norm, sum and three fixed random projections of a float array (see the module docstring)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(3, x.size))
    return [float(x.size), float(np.linalg.norm(x)), float(x.sum()), *(float(v) for v in signs @ x)]


def _sketch_close(got: list[float], want: list[float]) -> bool:
    if len(got) != len(want) or got[0] != want[0]:
        return False
    tol = SKETCH_RTOL * max(abs(want[1]), 1e-12)
    return all(abs(g - w) <= tol for g, w in zip(got[1:], want[1:], strict=True))


def _portable_table(path: Path) -> dict[str, Any]:
    """A mask table's discrete columns digested exactly, its floating-point columns sketched."""
    table = pq.read_table(path)
    digest = hashlib.sha256(",".join(table.column_names).encode())
    floats: dict[str, list[float]] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        kind = column.type
        while hasattr(kind, "value_type"):  # (fixed-size) lists of floats
            kind = kind.value_type
        if str(kind) in ("float", "double", "halffloat"):
            floats[name] = _sketch([v for v in column.to_pylist() if v is not None])
        else:
            digest.update(json.dumps(column.to_pylist(), default=str).encode())
    return {"discrete": digest.hexdigest()[:16], "floats": floats}


def compare_pinned(summary: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The keys in which ``summary`` differs from a pinned ``expected`` (empty when it matches)."""
    summary = json.loads(json.dumps(summary))  # tuples -> lists, as in the file
    differ = []
    for key in sorted((set(expected) | set(summary)) - set(MACHINE_KEYS)):
        got, want = summary.get(key), expected.get(key)
        if key != "portable":
            if got != want:
                differ.append(key)
            continue
        if got is None or want is None or set(got["tables"]) != set(want["tables"]):
            differ.append("portable.tables")
            continue
        if not _sketch_close(got["centres"], want["centres"]):
            differ.append("portable.centres")
        for path, table in want["tables"].items():
            mine = got["tables"][path]
            if mine["discrete"] != table["discrete"]:
                differ.append(f"portable.tables[{path}].discrete")
            for column in sorted(set(table["floats"]) | set(mine["floats"])):
                a, b = mine["floats"].get(column), table["floats"].get(column)
                if a is None or b is None or not _sketch_close(a, b):
                    differ.append(f"portable.tables[{path}].{column}")
    return differ


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
    tables = sorted((out / "tables").rglob("*.parquet"))
    summary: dict[str, Any] = {
        "num_classes": manifest["num_classes"],
        "cluster_sizes": manifest["cluster_sizes"],
        "class_pixels": manifest["class_pixels"],
        "counts": {k: v for k, v in manifest["counts"].items() if k != "resumed"},
        "dataset": manifest["dataset"],
        "images": [{k: r.get(k) for k in RECORD_FIELDS} for r in manifest["images"]],
        "centres": _digest(np.ascontiguousarray(centres, dtype=np.float64).tobytes()),
        "tables": {p.relative_to(out).as_posix(): _table_digest(p) for p in tables},
        "portable": {
            "centres": _sketch(centres),
            "tables": {p.relative_to(out).as_posix(): _portable_table(p) for p in tables},
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
    results[name] = {k: v for k, v in summary.items() if k not in MACHINE_KEYS}
    if UPDATE:
        return
    assert name in pinned, f"no pinned hashes for {name!r}: run with ALPS_UPDATE_PINNED=1 once"
    differ = compare_pinned(summary, pinned[name])
    assert not differ, f"{name}: {', '.join(differ)} changed"


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


def test_pinned_comparison_tolerates_rounding_but_not_changes() -> None:
    """Last-bit noise (another CPU's kernels) passes; a changed centre or a dropped mask does not."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 256))
    features = rng.normal(size=(60, 256)).astype(np.float32)

    def summary(c: np.ndarray, f: np.ndarray, discrete: str = "d") -> dict[str, Any]:
        floats = {"feature": _sketch(f)}
        tables = {"tables/a.parquet": {"discrete": discrete, "floats": floats}}
        portable = {"centres": _sketch(c), "tables": tables}
        return {"num_classes": 6, "centres": "machine bits", "portable": portable}

    pinned_one = summary(centres, features)
    noisy = centres * (1 + 1e-7 * rng.standard_normal(centres.shape))
    assert compare_pinned(summary(noisy, np.nextafter(features, np.float32(np.inf))), pinned_one) == []
    assert compare_pinned({**summary(centres, features), "centres": "other bits"}, pinned_one) == []
    moved = centres.copy()
    moved[2] *= 1.01
    assert compare_pinned(summary(moved, features), pinned_one) == ["portable.centres"]
    feature_changed = ["portable.tables[tables/a.parquet].feature"]
    assert compare_pinned(summary(centres, features[:-1]), pinned_one) == feature_changed
    one_row = features.copy()
    one_row[7] = features[8]
    assert compare_pinned(summary(centres, one_row), pinned_one) == feature_changed
    assert compare_pinned(summary(centres, features, "e"), pinned_one) == [
        "portable.tables[tables/a.parquet].discrete"
    ]
    assert compare_pinned({**pinned_one, "num_classes": 7}, pinned_one) == ["num_classes"]
