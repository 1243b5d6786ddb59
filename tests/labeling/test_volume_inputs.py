"""``alps label`` on medical volumes: slices in, label volumes out (real CT/MR crops).

Fast tests use the tiny random SAM of ``test_pipeline`` with SLIC masks (every stage after the mask
source is the real one); one test runs the real LiteMedSAM weights on CT slices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from alps.cli import main as cli_main
from alps.labeling.paint import load_label_png
from alps.labeling.run import label
from alps.medical.volume import read_label_volume, slice_2d
from tests.labeling.test_run import tiny_sam
from tests.medical.test_volume import assert_same_geometry

FAST: dict[str, Any] = {"masks": "slic", "points_per_side": 4, "clusters": 3, "progress": False}


def lesion_crop(case: Any, dest: Path, size: int = 64, depth: int = 6) -> Path:
    """A ``size x size x depth`` crop centred on the lesion (nibabel's slicer fixes the affine)."""
    image: Any = nib.load(str(case.image))
    mask = read_label_volume(case.label)
    centre = np.argwhere(mask > 0).mean(axis=0).round().astype(int)
    lo = [
        int(np.clip(c - s // 2, 0, n - s))
        for c, s, n in zip(centre, (size, size, depth), mask.shape, strict=True)
    ]
    crop = image.slicer[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + depth]
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(crop, str(dest))
    return dest


@pytest.fixture
def volume_inputs(medical_cases: dict, tmp_path: Path) -> Path:
    """brain1 (MR) and lung1 (CT) lesion crops, plus a volume without foreground (constant)."""
    root = tmp_path / "in"
    lesion_crop(medical_cases["brain1"], root / "brain1.nii.gz")
    lesion_crop(medical_cases["lung1"], root / "ct" / "lung1.nii.gz", depth=4)
    empty: Any = nib.load(str(root / "brain1.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.zeros(empty.shape, np.int16), empty.affine, empty.header),
        str(root / "empty.nii.gz"),
    )
    return root


def test_label_volumes_keep_geometry_and_match_the_slices(volume_inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = label([volume_inputs], out, model=tiny_sam(), val_fraction=0.5, **FAST)
    by_id = {v.id: v for v in run.volumes}
    assert sorted(by_id) == ["brain1", "ct__lung1", "empty"]
    assert all(v.status == "ok" for v in run.volumes)
    assert by_id["brain1"].slice_ids == [f"brain1_z{n:04d}" for n in range(6)]
    assert by_id["empty"].slices_kept == 0 and by_id["empty"].slice_ids == []
    assert run.clusters == 3 and not run.failed
    records = {r.id: r for r in run.images}
    for vid, source in (
        ("brain1", "brain1.nii.gz"),
        ("ct__lung1", "ct/lung1.nii.gz"),
        ("empty", "empty.nii.gz"),
    ):
        target = out / "labels" / f"{vid}.nii.gz"
        assert_same_geometry(target, volume_inputs / source)
        labels = read_label_volume(target)
        kept = {int(s[-4:]) for s in by_id[vid].slice_ids}
        for n in range(labels.shape[2]):
            if n in kept:
                record = records[f"{vid}_z{n:04d}"]
                png = load_label_png(out / str(record.label))
                assert np.array_equal(slice_2d(labels, 2, n), png)
                image = np.asarray(nib.load(str(volume_inputs / source)).dataobj)
                assert png.shape == slice_2d(image, 2, n).shape
            else:
                assert (labels[:, :, n] == 255).all()
        if vid != "empty":
            assert (labels != 255).mean() > 0.5  # SLIC covers almost everything
            splits = {records[s].split for s in by_id[vid].slice_ids}
            assert len(splits) == 1  # all slices of a volume in one split (by patient)
    assert (read_label_volume(out / "labels" / "empty.nii.gz") == 255).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["volumes"] == {"axis": 2, "window": "p0.5-p99.5", "min_foreground": 0.05}
    assert {v["id"]: v["label_volume"] for v in manifest["volumes"]}["brain1"] == "labels/brain1.nii.gz"
    assert {records[s].split for s in by_id["brain1"].slice_ids} != {
        records[s].split for s in by_id["ct__lung1"].slice_ids
    }
    # the per-slice training layout is the ordinary one
    assert (out / "images" / str(records["brain1_z0000"].split) / "brain1_z0000.png").is_file()

    # re-running resumes every slice and reproduces the label volumes byte for byte
    before = {p.name: p.read_bytes() for p in (out / "labels").glob("*.nii.gz")}
    again = label([volume_inputs], out, model=tiny_sam(), val_fraction=0.5, **FAST)
    assert all(r.resumed for r in again.ok) and len(again.ok) == len(run.ok)
    assert {p.name: p.read_bytes() for p in (out / "labels").glob("*.nii.gz")} == before

    # a fixed window changes the slices' pixels: those slices are redone, the rest of the layout holds
    windowed = label([volume_inputs], out, model=tiny_sam(), val_fraction=0.5, window="40,400", **FAST)
    assert not any(r.resumed for r in windowed.ok if r.id.startswith("ct__lung1"))
    assert {v.id: v.window for v in windowed.volumes}["ct__lung1"] == "40,400"


def test_volumes_mixed_with_images_and_a_broken_volume(volume_inputs: Path, tmp_path: Path) -> None:
    from PIL import Image

    from tests.labeling.test_run import synthetic_image

    Image.fromarray(synthetic_image(0)).save(volume_inputs / "photo.png")
    (volume_inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    run = label([volume_inputs], tmp_path / "out", model=tiny_sam(), **FAST)
    status = {v.id: (v.status, v.error) for v in run.volumes}
    assert status["broken"][0] == "failed" and "broken.nii.gz" in str(status["broken"][1])
    assert "photo" in {r.id for r in run.ok}
    assert any("volume(s) could not be read" in w for w in run.warnings)
    assert (tmp_path / "out" / "labels" / "brain1.nii.gz").is_file()


def test_cli_axis_and_window(medical_cases: dict, tmp_path: Path) -> None:
    """``alps label VOL --axis 1 --window 40,400``: slices along j, a CT soft-tissue window."""
    source = lesion_crop(medical_cases["lung1"], tmp_path / "in" / "lung1.nii.gz", size=40, depth=36)
    small: Any = nib.load(str(source))
    nib.save(small.slicer[:, 18:21, :], str(source))  # 40 x 3 x 36: three slices along j
    out = tmp_path / "out"
    args = ["label", str(source), "--out", str(out), "--axis", "1", "--window", "40,400", "--masks", "slic"]
    args += ["--checkpoint", "random", "--points-per-side", "4", "--clusters", "2", "--no-progress"]
    assert cli_main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    volume = manifest["volumes"][0]
    assert volume["axis"] == 1 and volume["window"] == "40,400" and volume["window_bounds"] == [-160.0, 240.0]
    assert volume["slice_ids"] == ["lung1_y0000", "lung1_y0001", "lung1_y0002"]
    labels = read_label_volume(out / "labels" / "lung1.nii.gz")
    assert labels.shape == (40, 3, 36)
    png = load_label_png(next((out / "labels").rglob("lung1_y0001.png")))
    assert png.shape == (36, 40) and np.array_equal(slice_2d(labels, 1, 1), png)
    assert cli_main([*args[:6], "--window", "40"]) == 2  # malformed window: refused


def test_real_litemedsam_labels_ct_slices(
    medical_cases: dict, litemedsam_checkpoint: Path, tmp_path: Path
) -> None:
    """The default model on real CT: box-prompted LiteMedSAM masks paint the tumour slices."""
    source = lesion_crop(medical_cases["lung1"], tmp_path / "in" / "lung1.nii.gz", size=128, depth=2)
    run = label(
        [source],
        tmp_path / "out",
        checkpoint=str(litemedsam_checkpoint),
        clusters=4,
        points_per_side=6,
        progress=False,
    )
    assert run.volumes[0].status == "ok" and len(run.ok) == 2
    assert sum(r.n_masks_kept for r in run.ok) > 0
    labels = read_label_volume(tmp_path / "out" / "labels" / "lung1.nii.gz")
    assert labels.shape == (128, 128, 2) and 0 < (labels != 255).mean() < 1
    assert_same_geometry(tmp_path / "out" / "labels" / "lung1.nii.gz", source)
