"""Volumes: NIfTI / DICOM reading, slicing, windowing, the empty-slice rule, label volumes.

Real data: the CT and MR cases with lesion masks from the pyradiomics source distribution
(``medical_cases`` fixture); the DICOM series is written here from a real CT crop with pydicom.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from alps.medical.volume import (
    FOREGROUND_LEVEL,
    Volume,
    VolumeReadError,
    Window,
    apply_window,
    find_volumes,
    kept_slices,
    parse_window,
    put_slice,
    read_dicom_series,
    read_label_volume,
    read_nifti,
    read_volume,
    slice_2d,
    slice_id,
    write_label_volume,
)
from alps.samples.medical import read_nrrd

HEADER_FIELDS = (
    *("dim", "pixdim", "qform_code", "sform_code", "xyzt_units"),
    *(
        "quatern_b",
        "quatern_c",
        "quatern_d",
        "qoffset_x",
        "qoffset_y",
        "qoffset_z",
        "srow_x",
        "srow_y",
        "srow_z",
    ),
)


def assert_same_geometry(written: Path, source: Path) -> None:
    a, b = nib.load(str(written)), nib.load(str(source))
    assert a.shape == b.shape
    assert np.array_equal(a.affine, b.affine)
    for key in HEADER_FIELDS:
        assert np.array_equal(a.header[key], b.header[key]), key


# ----------------------------------------------------------------------------------------------
# the sample data


def test_sample_volumes_keep_the_nrrd_geometry(medical_cases: dict) -> None:
    """NRRD (LPS, fastest axis first) -> NIfTI (RAS): same voxels, affine = diag(-1,-1,1) @ NRRD's."""
    case = medical_cases["breast1"]
    nrrd_path = case.image.parent / "nrrd" / "breast1_image.nrrd"
    voxels, affine = read_nrrd(nrrd_path)
    image = read_nifti(case.image)
    assert image.shape == (45, 120, 21)  # NRRD "sizes: 45 120 21"
    assert np.array_equal(image.data, voxels.astype(np.float32))
    # header: space directions (0.664062,0,0) (0,0.664062,0) (0,0,2.1), origin (-116.54304,-48.144654,9.45)
    expected = np.diag([-0.664062, -0.664062, 2.1, 1.0])
    expected[:3, 3] = [116.54304, 48.14465400000001, 9.4500000000000295]
    assert np.allclose(affine, expected, atol=1e-9)
    assert np.allclose(image.affine, expected, atol=1e-5)  # stored as float32 in the NIfTI header
    labels = read_label_volume(case.label)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}


# ----------------------------------------------------------------------------------------------
# label volumes on the real scans


@pytest.mark.parametrize("case_id", ["brain1", "breast1", "lung2"])
def test_label_volume_keeps_affine_shape_and_header(
    medical_cases: dict, tmp_path: Path, case_id: str
) -> None:
    case = medical_cases[case_id]
    volume = read_volume(case.image)
    mask = read_label_volume(case.label)
    labels = np.where(mask > 0, 7, 255).astype(np.uint8)
    out = write_label_volume(tmp_path / f"{case_id}.nii.gz", labels, volume)
    assert_same_geometry(out, case.image)
    back = read_label_volume(out)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)
    header = nib.load(str(out)).header
    assert header.get_intent()[0] == "label"
    assert header.get_slope_inter() in ((None, None), (1.0, 0.0))


def test_labels_round_trip_between_volume_and_slices(medical_cases: dict) -> None:
    """Every slice along every axis, put back where it came from, rebuilds the lesion mask exactly."""
    mask = read_label_volume(medical_cases["lung1"].label)
    for axis in (0, 1, 2):
        rebuilt = np.full_like(mask, 255)
        for n in range(mask.shape[axis]):
            image = slice_2d(mask, axis, n)
            rest = [s for a, s in enumerate(mask.shape) if a != axis]
            assert image.shape == (rest[1], rest[0])  # rows = the later remaining axis
            put_slice(rebuilt, axis, n, image)
        assert np.array_equal(rebuilt, mask)
    # the orientation rule, on one voxel: slice k of an axis-2 stack is data[:, :, k].T
    lesion = np.argwhere(mask > 0)[0]
    i, j, k = (int(v) for v in lesion)
    assert slice_2d(mask, 2, k)[j, i] == mask[i, j, k] == 1


def test_uint16_label_volume_when_values_exceed_255(medical_cases: dict, tmp_path: Path) -> None:
    volume = read_volume(medical_cases["breast1"].image)
    labels = np.full(volume.shape, 255, np.uint16)
    labels[:, :, 3] = 300
    out = write_label_volume(tmp_path / "wide.nii.gz", labels, volume)
    back = read_label_volume(out)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)
    with pytest.raises(ValueError, match="do not match"):
        write_label_volume(tmp_path / "bad.nii.gz", labels[:, :, :2], volume)


def test_four_d_singleton_volume_keeps_its_file_shape(medical_cases: dict, tmp_path: Path) -> None:
    source = nib.load(str(medical_cases["breast1"].image))
    data4 = np.asarray(source.dataobj)[..., None]
    path = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(data4, source.affine, source.header), str(path))
    volume = read_volume(path)
    assert volume.shape == (45, 120, 21) and volume.file_shape == (45, 120, 21, 1)
    out = write_label_volume(tmp_path / "labels.nii.gz", np.zeros(volume.shape, np.uint8), volume)
    assert_same_geometry(out, path)


# ----------------------------------------------------------------------------------------------
# windowing and the empty-slice rule


def test_window_parsing_and_mapping() -> None:
    assert parse_window("40,400") == Window(40.0, 400.0)
    assert parse_window(None) == parse_window("auto") == Window()
    for bad in ("40", "a,b", "40,0", "1,2,3"):
        with pytest.raises(ValueError):
            parse_window(bad)
    low, high = Window(40.0, 400.0).bounds(np.zeros((2, 2, 2), np.float32))
    assert (low, high) == (-160.0, 240.0)
    values = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0, np.nan], np.float32)
    assert apply_window(values, low, high).tolist() == [0, 0, 128, 255, 255, 0]
    assert apply_window(values, 5.0, 5.0).tolist() == [0] * 6  # constant volume


def test_robust_window_uses_the_volume_percentiles(medical_cases: dict) -> None:
    volume = read_volume(medical_cases["lung1"].image)  # CT in HU: air near -1000
    low, high = Window().bounds(volume.data)
    assert np.isclose(low, np.percentile(volume.data, 0.5)) and np.isclose(
        high, np.percentile(volume.data, 99.5)
    )
    assert -1100 < low < -900 and 200 < high < 1500


def test_empty_slice_rule() -> None:
    data = np.zeros((40, 40, 6), np.float32)
    data[:, :, 1][:4, :] = 100.0  # 10 % foreground: kept
    data[:, :, 2][:1, :] = 100.0  # 2.5 % foreground: skipped
    data[:, :, 4] = 100.0  # all foreground: kept
    windowed = apply_window(data, 0.0, 100.0)
    assert kept_slices(windowed, 2) == [1, 4]
    assert kept_slices(windowed, 2, min_foreground=0.02) == [1, 2, 4]
    assert kept_slices(windowed, 2, min_foreground=0) == list(range(6))
    faint = apply_window(np.full((40, 40, 2), 9.0, np.float32), 0.0, 100.0)  # 9 % of the window
    assert int(faint.max()) <= FOREGROUND_LEVEL and kept_slices(faint, 2) == []
    # no foreground at all: a constant volume keeps nothing
    flat = np.full((40, 40, 5), 123.0, np.float32)
    assert kept_slices(apply_window(flat, *Window().bounds(flat)), 2) == []


def test_real_scans_keep_every_lesion_slice(medical_cases: dict) -> None:
    for case in medical_cases.values():
        volume = read_volume(case.image)
        windowed = apply_window(volume.data, *Window().bounds(volume.data))
        lesion = set(np.flatnonzero(read_label_volume(case.label).any(axis=(0, 1))).tolist())
        assert lesion and lesion <= set(kept_slices(windowed, 2)), case.id


# ----------------------------------------------------------------------------------------------
# DICOM series


def write_dicom_series(volume: Volume, folder: Path, intercept: float = -1024.0) -> list[Path]:
    """One CT slice file per k, in shuffled order and with names unrelated to the position."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series = generate_uid()
    order = list(range(volume.shape[2]))
    random.Random(0).shuffle(order)
    paths = []
    for name_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{name_index:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, generate_uid()
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.PixelSpacing = [f"{spacing[1]:.10g}", f"{spacing[0]:.10g}"]
        ds.SliceThickness = f"{spacing[2]:.10g}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, int(intercept)
        stored = np.rint(volume.data[:, :, k].T - intercept).astype(np.int16)
        ds.PixelData = stored.tobytes()
        try:
            ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
        except TypeError:
            ds.save_as(path, write_like_original=False)
        paths.append(path)
    return paths


@pytest.fixture
def ct_crop(medical_cases: dict, tmp_path: Path) -> tuple[Path, Volume]:
    """A 48 x 40 x 6 crop of lung1 around the tumour, as NIfTI."""
    image: Any = nib.load(str(medical_cases["lung1"].image))
    crop = image.slicer[300:348, 250:290, 30:36]
    path = tmp_path / "crop.nii.gz"
    nib.save(crop, str(path))
    return path, read_volume(path)


def test_dicom_series_round_trip(ct_crop: tuple[Path, Volume], tmp_path: Path) -> None:
    _, nifti = ct_crop
    write_dicom_series(nifti, tmp_path / "series")
    dicom = read_dicom_series(tmp_path / "series")
    assert dicom.kind == "dicom" and dicom.shape == nifti.shape
    assert np.array_equal(dicom.data, nifti.data)  # sorted by position, rescaled to HU
    assert np.allclose(dicom.affine, nifti.affine, atol=1e-4)
    # the label volume of a DICOM series carries the series' geometry
    labels = np.full(dicom.shape, 255, np.uint8)
    out = write_label_volume(tmp_path / "dicom_labels.nii.gz", labels, dicom)
    written: Any = nib.load(str(out))
    assert written.shape == dicom.shape and np.allclose(written.affine, dicom.affine, atol=1e-4)
    assert read_volume(tmp_path / "series").shape == nifti.shape  # read_volume dispatches folders


def test_dicom_problems_are_refused(ct_crop: tuple[Path, Volume], tmp_path: Path) -> None:
    _, nifti = ct_crop
    paths = write_dicom_series(nifti, tmp_path / "two")
    write_dicom_series(nifti, tmp_path / "other")
    (tmp_path / "other" / "IM000.dcm").rename(tmp_path / "two" / "EXTRA.dcm")  # another series
    with pytest.raises(VolumeReadError, match="series"):
        read_volume(tmp_path / "two")
    (tmp_path / "two" / "EXTRA.dcm").unlink()
    paths[0].write_bytes(paths[1].read_bytes())  # two files at one position
    with pytest.raises(VolumeReadError, match="same position"):
        read_volume(tmp_path / "two")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(VolumeReadError, match=r"broken\.nii\.gz"):
        read_volume(tmp_path / "broken.nii.gz")


def test_find_volumes(ct_crop: tuple[Path, Volume], tmp_path: Path) -> None:
    path, nifti = ct_crop
    root = tmp_path / "inputs"
    (root / "a").mkdir(parents=True)
    path.rename(root / "a" / "case 1.nii.gz")
    write_dicom_series(nifti, root / "patient2" / "ct")
    (root / "notes.png").write_bytes(b"")
    (root / ".hidden.nii").write_bytes(b"")
    found = find_volumes(root)
    assert [(v.id, v.kind) for v in found] == [("a__case_1", "nifti"), ("patient2__ct", "dicom")]
    assert [v.id for v in find_volumes(root / "patient2" / "ct")] == ["ct"]  # a series folder given directly
    assert slice_id("a__case_1", 2, 7) == "a__case_1_z0007"
    with pytest.raises(FileNotFoundError):
        find_volumes(tmp_path / "missing")
