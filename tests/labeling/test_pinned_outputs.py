"""Outputs of ``alps label`` pinned by hashes on a fixed corpus, so that refactors cannot change them.

The corpus: real NEON aerial tiles (8-bit RGB) labelled with the real LiteMedSAM weights in exact and
fast mode, the same tiles plus a 16-bit copy through the SLIC source, the georeferenced NEON GeoTIFF cut
into tiles, and a CT crop of a real NIfTI volume. For each run the test hashes every label map
(PNG/GeoTIFF pixels, label volume voxels), every mask table's *content* (column values, not the Parquet
bytes, whose metadata names the writer), the cluster centres and the manifest fields that describe
the result, and compares them with ``tests/labeling/pinned_outputs.json``.

Floating point is not portable between CPUs: the same code gives last-bit differences in the SAM
scores, pooled features and k-means centres on an AVX2 and an AVX-512 machine (BLAS and oneDNN pick
other kernels), and now and then a mask logit on the threshold flips a pixel (measured here with
``ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2``: 2 of 173 masks one pixel apart, every
label map the same). So the pinned file holds, per run:

* ``platforms``: the exact digests (every bit of the label maps, tables, centres and records) for each
  platform it was pinned on (:func:`platform_key`: CPU architecture, vendor and torch's vector
  capability). On such a platform the outputs must be identical.
* ``portable``: what any machine must reproduce. Records and counts that no rounding moves exactly;
  mask counts, cluster sizes, class pixels and each label map's histogram within a few pixels or
  masks (:data:`PIXEL_SLACK`); every floating-point table column and the centres as a sketch (size,
  norm, sum and three fixed random projections) within 1e-4 of its norm, which a changed, added or
  dropped mask moves by orders of magnitude more.

A change that is meant to change outputs updates that file in a commit of its own (which keeps only
this platform's digests)::

    ALPS_UPDATE_PINNED=1 python -m pytest -q tests/labeling/test_pinned_outputs.py

and a new platform whose outputs reproduce the portable part adds its exact digests with
``ALPS_PIN_PLATFORM=1`` in place of ``ALPS_UPDATE_PINNED=1``.
"""

from __future__ import annotations

import contextlib
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
# add this platform's exact digests to a pinned file whose portable part it reproduces
ADD_PLATFORM = os.environ.get("ALPS_PIN_PLATFORM") == "1"
# manifest fields that describe the result (timings, dates, paths and versions do not)
RECORD_FIELDS = (
    "id", "status", "split", "height", "width", "source_mode", "conversion", "n_masks", "n_masks_kept",
    "n_labelled_pixels", "image", "label", "table", "tiles", "vector",
)  # fmt: skip


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _table(path: Path) -> tuple[str, dict[str, Any]]:
    """A mask table read once: the exact digest of its content, and its portable part (row count, the
    histogram of its clusters, every other numeric column as a sketch)."""
    table = pq.read_table(path)
    digest = hashlib.sha256(",".join(table.column_names).encode())
    columns: dict[str, list[float]] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        values = column.to_pylist()
        digest.update(json.dumps(values, default=str).encode())
        kind = column.type
        while hasattr(kind, "value_type"):  # (fixed-size) lists
            kind = kind.value_type
        if name != "cluster" and str(kind).startswith(("float", "double", "half", "int", "uint")):
            columns[name] = _sketch([v for v in values if v is not None])
    clusters = np.asarray(table.column("cluster").to_pylist()) if "cluster" in table.column_names else []
    histogram = {str(k): int(n) for k, n in zip(*np.unique(clusters, return_counts=True), strict=True)}
    return digest.hexdigest()[:16], {"rows": table.num_rows, "columns": columns, "clusters": histogram}


SKETCH_RTOL = 1e-4
PIXEL_SLACK = 0.005  # portable: share of pixels (or of masks) by which counts may differ
# records fields that rounding can move (a mask on a threshold): compared within the slack
ROUNDED_FIELDS = ("n_masks", "n_masks_kept", "n_labelled_pixels")


def platform_key() -> str:
    """Where bit-identical outputs can be expected: CPU architecture, vendor, torch's vector ISA."""
    import platform

    import torch

    vendor = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    return f"{platform.machine()}-{vendor}-{torch.backends.cpu.get_cpu_capability()}"


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


def _counts_close(got: Any, want: Any) -> bool:
    """Counts (a number, a list or a dict of numbers) within PIXEL_SLACK of their total (at least 2)."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = set(want) | set(got)
        return _counts_close([got.get(k, 0) for k in sorted(keys)], [want.get(k, 0) for k in sorted(keys)])
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return False
        diff = sum(abs(g - w) for g, w in zip(got, want, strict=True))
        return diff <= max(2, PIXEL_SLACK * sum(abs(w) for w in want))
    if isinstance(want, int | float) and isinstance(got, int | float):
        return abs(got - want) <= max(2, PIXEL_SLACK * abs(want))
    return bool(got == want)


def compare_pinned(summary: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """The parts of ``expected`` (one run of the pinned file) that ``summary`` does not reproduce."""
    summary = json.loads(json.dumps(summary))  # tuples -> lists, as in the file
    differ = []
    exact = expected.get("platforms", {}).get(platform_key())
    if exact is not None:
        mine = {k: v for k, v in summary.items() if k != "portable"}
        differ += [f"exact.{k}" for k in sorted(set(exact) | set(mine)) if mine.get(k) != exact.get(k)]
    got, want = summary["portable"], expected["portable"]
    for key in ("records", "labels_shape"):
        if got[key] != want[key]:
            differ.append(f"portable.{key}")
    for key in ("rounded", "labels"):
        for name in sorted(set(got[key]) | set(want[key])):
            if not _counts_close(got[key].get(name), want[key].get(name)):
                differ.append(f"portable.{key}[{name}]")
    if not _sketch_close(got["centres"], want["centres"]):
        differ.append("portable.centres")
    if set(got["tables"]) != set(want["tables"]):
        return [*differ, "portable.tables"]
    for path, table in want["tables"].items():
        mine_t = got["tables"][path]
        if mine_t["rows"] != table["rows"]:
            differ.append(f"portable.tables[{path}].rows")
            continue
        if not _counts_close(mine_t["clusters"], table["clusters"]):
            differ.append(f"portable.tables[{path}].clusters")
        for column in sorted(set(table["columns"]) | set(mine_t["columns"])):
            a, b = mine_t["columns"].get(column), table["columns"].get(column)
            if a is None or b is None or not _sketch_close(a, b):
                differ.append(f"portable.tables[{path}].{column}")
    return differ


def _pixels(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        array = np.asarray(Image.open(path))
    elif path.name.endswith(".nii.gz"):
        import nibabel as nib

        array = np.asarray(nib.load(str(path)).dataobj)
    else:
        import rasterio

        with rasterio.open(path) as src:
            array = src.read()
    return array


def _pixels_digest(array: np.ndarray) -> str:
    return _digest(f"{array.dtype}{array.shape}".encode() + np.ascontiguousarray(array).tobytes())


def _histogram(array: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(array, return_counts=True)
    return {str(v): int(n) for v, n in zip(values, counts, strict=True)}


def summarise(out: Path) -> dict[str, Any]:
    """Hashes of everything a run produced that must not change under a refactor."""
    manifest = json.loads((out / "manifest.json").read_text())
    centres = np.load(out / "cluster_model.npz")["centers"]
    tables = {p.relative_to(out).as_posix(): _table(p) for p in sorted((out / "tables").rglob("*.parquet"))}
    labels = {
        p.relative_to(out).as_posix(): _pixels(p) for p in sorted((out / "labels").rglob("*")) if p.is_file()
    }
    summary: dict[str, Any] = {
        "num_classes": manifest["num_classes"],
        "cluster_sizes": manifest["cluster_sizes"],
        "class_pixels": manifest["class_pixels"],
        "counts": {k: v for k, v in manifest["counts"].items() if k != "resumed"},
        "dataset": manifest["dataset"],
        "images": [{k: r.get(k) for k in RECORD_FIELDS} for r in manifest["images"]],
        "centres": _digest(np.ascontiguousarray(centres, dtype=np.float64).tobytes()),
        "tables": {name: digest for name, (digest, _) in tables.items()},
        "labels": {name: _pixels_digest(array) for name, array in labels.items()},
    }
    if "volumes" in manifest:
        summary["volumes"] = [
            {k: v.get(k) for k in ("id", "status", "shape", "axis", "window", "slices", "label")}
            for v in manifest["volumes"]
        ]
    records = [{k: v for k, v in r.items() if k not in ROUNDED_FIELDS} for r in summary["images"]]
    rounded: dict[str, Any] = {
        "cluster_sizes": summary["cluster_sizes"],
        "class_pixels": summary["class_pixels"],
        "masks": summary["counts"].get("masks"),
    }
    for record in summary["images"]:
        for field in ROUNDED_FIELDS:
            rounded[f"{record['id']}.{field}"] = record.get(field)
    summary["portable"] = {
        "records": {
            "num_classes": summary["num_classes"],
            "counts": {k: v for k, v in summary["counts"].items() if k != "masks"},
            "dataset": summary["dataset"],
            "images": records,
            "volumes": summary.get("volumes"),
        },
        "rounded": rounded,
        "labels_shape": {name: f"{a.dtype}{a.shape}" for name, a in labels.items()},
        "labels": {name: _histogram(a) for name, a in labels.items()},
        "centres": _sketch(centres),
        "tables": {name: portable for name, (_, portable) in tables.items()},
    }
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
    if (UPDATE or ADD_PLATFORM) and collected:
        old = json.loads(PINNED.read_text()) if PINNED.exists() else {}
        PINNED.write_text(json.dumps({**old, **collected}, indent=1, sort_keys=True) + "\n")


def pinned_entry(summary: dict[str, Any], platforms: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's entry of the pinned file: its portable part, and this platform's exact digests added to
    ``platforms`` (the digests of other platforms, kept when the outputs did not change)."""
    summary = json.loads(json.dumps(summary))
    exact = {k: v for k, v in summary.items() if k != "portable"}
    return {"portable": summary["portable"], "platforms": {**(platforms or {}), platform_key(): exact}}


def _check(name: str, out: Path, pinned: dict[str, Any], results: dict[str, Any]) -> None:
    summary = summarise(out)
    if UPDATE:
        # a change of outputs drops the digests of other platforms: they no longer hold
        results[name] = pinned_entry(summary)
        return
    assert name in pinned, f"no pinned hashes for {name!r}: run with ALPS_UPDATE_PINNED=1 once"
    if ADD_PLATFORM:
        differ = compare_pinned(summary, {**pinned[name], "platforms": {}})
        assert not differ, f"{name}: {', '.join(differ)} changed; not pinning this platform"
        results[name] = pinned_entry(summary, pinned[name].get("platforms"))
        return
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
    """Another platform's last-bit noise and a flipped pixel pass; a changed centre, a dropped mask,
    a changed record or a repainted label map do not; the pinning platform needs every bit."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 256))
    features = rng.normal(size=(60, 256)).astype(np.float32)
    label = rng.integers(0, 6, size=(100, 100)).astype(np.uint8)

    def summary(c: np.ndarray, f: np.ndarray, lab: np.ndarray, records: Any = "r") -> dict[str, Any]:
        table = {"rows": len(f), "columns": {"feature": _sketch(f)}, "clusters": {"0": len(f)}}
        portable = {
            "records": records,
            "rounded": {"masks": len(f), "class_pixels": np.bincount(lab.ravel(), minlength=6).tolist()},
            "labels_shape": {"l.png": f"{lab.dtype}{lab.shape}"},
            "labels": {"l.png": _histogram(lab)},
            "centres": _sketch(c),
            "tables": {"t.parquet": table},
        }
        return {"labels": {"l.png": _pixels_digest(lab)}, "portable": portable}

    here = summary(centres, features, label)
    elsewhere = {**pinned_entry(here), "platforms": {"other-platform": {"labels": "other bits"}}}
    noisy = centres * (1 + 1e-7 * rng.standard_normal(centres.shape))
    flipped = label.copy()
    flipped[0, 0] = (label[0, 0] + 1) % 6
    rounded = np.nextafter(features, np.float32(np.inf))
    assert compare_pinned(summary(noisy, rounded, flipped), elsewhere) == []
    assert compare_pinned(summary(centres, features, flipped), pinned_entry(here)) == ["exact.labels"]
    assert compare_pinned(here, pinned_entry(here)) == []
    moved = centres.copy()
    moved[2] *= 1.01
    assert compare_pinned(summary(moved, features, label), elsewhere) == ["portable.centres"]
    # one mask fewer is within the counts' slack of 2, not in the table's rows
    fewer = summary(centres, features[:-1], label)
    assert compare_pinned(fewer, elsewhere) == ["portable.tables[t.parquet].rows"]
    one_row = features.copy()
    one_row[7] = features[8]
    feature_changed = ["portable.tables[t.parquet].feature"]
    assert compare_pinned(summary(centres, one_row, label), elsewhere) == feature_changed
    repainted = label.copy()
    repainted[:10] = 0
    assert compare_pinned(summary(centres, features, repainted), elsewhere) == [
        "portable.rounded[class_pixels]",
        "portable.labels[l.png]",
    ]
    assert compare_pinned(summary(centres, features, label, "s"), elsewhere) == ["portable.records"]
