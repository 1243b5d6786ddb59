"""Medical volumes (NIfTI files, DICOM series folders) as stacks of RGB ``uint8`` slices, and back.

Geometry. A :class:`Volume` holds ``data`` of shape ``(I, J, K)`` in voxel index order (nibabel's
order; float32, in the scanner's units: Hounsfield units for CT after ``RescaleSlope`` /
``RescaleIntercept``, arbitrary units for MR) and ``affine``, the 4 x 4 matrix (float64) taking
voxel indices ``(i, j, k, 1)`` to RAS+ world millimetres, as NIfTI defines it.

Slicing. ``axis`` is a voxel axis: 0, 1 or 2 (= i, j, k; default 2, the slice axis of almost every
scan). Slice ``n`` is ``np.take(data, n, axis)``; its two remaining axes ``(a, b)`` become the image
with rows = ``b`` and columns = ``a`` (the slice transposed), so a slice along ``k`` is a
``J x I`` image. :func:`slice_2d` and :func:`put_slice` are exact inverses. Slice ids are
``<volume id>_<x|y|z><n:04d>`` (x, y, z naming voxel axes 0, 1, 2), e.g. ``lung1_z0042``.

Windowing (:class:`Window`). Either a fixed ``center,width`` (e.g. ``40,400`` for CT soft tissue)
or, by default, robust percentiles of the volume: the 0.5th and 99.5th percentile of all finite
voxels of the volume (every n-th voxel above 16.7 M voxels; one window for all its slices, so
neighbouring slices look alike). Values
map linearly from ``[center - width/2, center + width/2]`` (or ``[p0.5, p99.5]``) to 0..255 and
are clipped; NaN becomes 0. A constant volume maps to 0 everywhere. The grey slice is replicated
to three channels.

Empty-slice rule (:func:`foreground_fraction`, :func:`kept_slices`). A pixel is *foreground* when
its windowed value exceeds :data:`FOREGROUND_LEVEL` (25 of 255, i.e. 10 % of the window above its
lower bound, the background level: air around a CT patient, the dark surround of an MR image). A
slice is skipped when fewer than ``min_foreground`` (default :data:`MIN_FOREGROUND`, 5 %) of its
pixels are foreground; ``min_foreground=0`` keeps every slice. A volume with no foreground at all
keeps no slice.

Label volumes (:func:`write_label_volume`). Written as ``.nii.gz`` with the input's affine and
header (a NIfTI input's header is copied; only the data type, scaling, intent and display range
change), values as in :mod:`alps.labeling.paint` (255 = unlabeled, ``uint8``, or ``uint16`` when a value
exceeds 255); skipped slices are all 255.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps.core.images import _safe_id

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")  # files checked for the DICM preamble
AXIS_NAMES = "xyz"
DEFAULT_AXIS = 2
ROBUST_PERCENTILES = (0.5, 99.5)
FOREGROUND_LEVEL = 25  # windowed uint8 value above which a pixel is foreground (10 % of the window)
MIN_FOREGROUND = 0.05  # slices with a smaller foreground share are skipped
UNLABELED = 255
_PERCENTILE_SAMPLE = 1 << 24  # larger volumes: every n-th voxel for the robust window (deterministic)


class VolumeReadError(RuntimeError):
    """A volume could not be read; the message names the file or folder and the reason."""


@dataclass(frozen=True)
class VolumeFile:
    """One input volume: a NIfTI file or a folder holding one DICOM series."""

    path: Path
    id: str
    relpath: str  # posix path relative to the input root it was found under
    kind: str  # "nifti" or "dicom"


@dataclass
class Volume:
    """Voxels, geometry and the header to write results with."""

    data: npt.NDArray[np.float32]  # (I, J, K), scanner units
    affine: npt.NDArray[np.float64]  # (4, 4): voxel (i, j, k, 1) -> RAS+ mm
    header: Any  # nibabel Nifti1Header / Nifti2Header (a DICOM series gets a fresh one)
    source: Path
    kind: str  # "nifti" or "dicom"
    file_shape: tuple[int, ...] = ()  # shape on disk (e.g. (I, J, K, 1)); () = data.shape
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        i, j, k = self.data.shape
        return int(i), int(j), int(k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm (column norms of the affine)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[0]), float(norms[1]), float(norms[2])


# ----------------------------------------------------------------------------------------------
# finding


def is_nifti(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: str | Path) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with Path(path).open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _dicom_candidates(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DICOM_SUFFIXES
    )


def is_dicom_series(folder: str | Path) -> bool:
    """True for a folder that directly holds DICOM files."""
    folder = Path(folder)
    return folder.is_dir() and any(is_dicom_file(p) for p in _dicom_candidates(folder))


def is_volume(path: str | Path) -> bool:
    """A NIfTI file or a DICOM series folder."""
    return is_nifti(path) or is_dicom_series(path)


def volume_id(relpath: str) -> str:
    """Filesystem-safe id from a path relative to its input root (``.nii``/``.nii.gz`` dropped)."""
    low = relpath.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            relpath = relpath[: -len(suffix)]
            break
    return _safe_id(relpath + ".volume")  # the dummy suffix is what _safe_id strips


def find_volumes(inputs: str | Path | Sequence[str | Path]) -> list[VolumeFile]:
    """Find NIfTI files and DICOM series folders under ``inputs`` (files or folders, recursively).

    A folder that directly holds DICOM files is one series (its sub-folders are searched too).
    Hidden files and folders are skipped. Ids follow :func:`alps.core.images.find_images` (path
    relative to the input, ``/`` -> ``__``); clashing ids get a short hash appended.
    Returns ``[]`` when there is none; raises ``FileNotFoundError`` for a missing input.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[tuple[Path, str, str, str]] = []  # path, relpath, kind, key
    seen: set[Path] = set()
    for index, item in enumerate(inputs):
        root = Path(item).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"input not found: {root}")
        entries: list[tuple[Path, str, str]] = []
        if root.is_file():
            if is_nifti(root):
                entries.append((root, root.name, "nifti"))
        else:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                here = Path(dirpath)
                rel_dir = here.relative_to(root).as_posix()
                for name in sorted(filenames):
                    if not name.startswith(".") and is_nifti(name):
                        entries.append(
                            (here / name, name if rel_dir == "." else f"{rel_dir}/{name}", "nifti")
                        )
                if is_dicom_series(here):
                    entries.append((here, root.name if rel_dir == "." else rel_dir, "dicom"))
        for path, rel, kind in sorted(entries, key=lambda e: e[1]):
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                found.append((path, rel, kind, f"{index}:{rel}"))
    ids = [volume_id(rel) for _, rel, _, _ in found]
    out = []
    for (path, rel, kind, key), vid in zip(found, ids, strict=True):
        if sum(i.casefold() == vid.casefold() for i in ids) > 1:
            vid = f"{vid}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        out.append(VolumeFile(path=path, id=vid, relpath=rel, kind=kind))
    return out


def non_volume_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The inputs that are not themselves a volume (what the image finder should search)."""
    return [Path(p) for p in inputs if not is_volume(p)]


# ----------------------------------------------------------------------------------------------
# reading


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI file or a DICOM series folder; raise :class:`VolumeReadError` on failure."""
    path = Path(path)
    try:
        if path.is_dir():
            return read_dicom_series(path)
        return read_nifti(path)
    except VolumeReadError:
        raise
    except Exception as err:  # nibabel / pydicom / zlib raise many types for broken files
        raise VolumeReadError(f"{path}: cannot read volume ({type(err).__name__}: {err})") from err


def read_nifti(path: str | Path) -> Volume:
    """Read a 3-D NIfTI-1/2 file (``.nii``/``.nii.gz``; 4-D with one volume and 2-D are accepted).

    Scaling (``scl_slope``/``scl_inter``) is applied; the affine is nibabel's (sform if set, else
    qform).
    """
    import nibabel as nib

    path = Path(path)
    image: Any = nib.load(str(path))
    file_shape = tuple(int(s) for s in image.shape)
    data = np.asarray(image.get_fdata(dtype=np.float32))
    if data.ndim == 2:
        data = data[:, :, None]
    elif data.ndim > 3:
        if int(np.prod(data.shape[3:])) != 1:
            raise VolumeReadError(f"{path}: a {data.ndim}-D image with shape {data.shape}; expected 3-D")
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise VolumeReadError(f"{path}: unsupported image shape {file_shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    return Volume(data, affine, image.header.copy(), path, "nifti", file_shape)


def _floats(values: Any, n: int, what: str, path: Path) -> npt.NDArray[np.float64]:
    try:
        array = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise VolumeReadError(f"{path}: bad {what} ({values!r})") from err
    if array.size != n:
        raise VolumeReadError(f"{path}: {what} has {array.size} values, expected {n}")
    return array


def read_dicom_series(folder: str | Path) -> Volume:
    """Read the single-frame DICOM files of one series in ``folder`` as a volume.

    Slices are sorted by their position along the slice normal (``ImagePositionPatient`` projected
    on the cross product of the two ``ImageOrientationPatient`` directions), pixel values are
    rescaled with ``RescaleSlope``/``RescaleIntercept``, and the affine is built from orientation,
    ``PixelSpacing`` and the first and last positions, converted from DICOM's LPS to RAS. Voxel axis
    i runs along a row (the column index), j down the columns (the row index), k along the sorted
    slices. A folder with several series, mixed orientations or sizes, or duplicate positions is
    refused with the reason.
    """
    import pydicom

    folder = Path(folder)
    headers = []
    for path in _dicom_candidates(folder):
        if not is_dicom_file(path):
            continue
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue  # e.g. a DICOMDIR or a structured report next to the images
        headers.append((path, ds))
    if not headers:
        raise VolumeReadError(f"{folder}: no DICOM image in this folder")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
    if len(series) > 1:
        raise VolumeReadError(
            f"{folder}: {len(series)} DICOM series in one folder ({', '.join(series[:3])}...); "
            "put each series in its own folder"
        )
    first_path, first = headers[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeReadError(f"{first_path}: multi-frame DICOM is not supported; export single frames")
    orientation = _floats(first.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", first_path)
    # direction along a row (increasing column index), and down a column (increasing row index)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    rows, cols = int(first.Rows), int(first.Columns)
    entries = []
    for path, ds in headers:
        own = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path)
        if not np.allclose(own, orientation, atol=1e-4):
            raise VolumeReadError(f"{folder}: slices with different orientations")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise VolumeReadError(f"{folder}: slices of different sizes")
        position = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
        entries.append((float(position @ normal), position, path, ds))
    entries.sort(key=lambda e: e[0])
    offsets = np.asarray([e[0] for e in entries])
    if len(offsets) > 1 and np.min(np.diff(offsets)) < 1e-4:
        raise VolumeReadError(f"{folder}: two slices at the same position")
    pixel_spacing = _floats(first.get("PixelSpacing", [1.0, 1.0]), 2, "PixelSpacing", first_path)
    notes: list[str] = []
    n = len(entries)
    if n > 1:
        step = (entries[-1][1] - entries[0][1]) / (n - 1)
        gaps = np.diff(offsets)
        if np.ptp(gaps) > 0.01 * max(float(np.mean(gaps)), 1e-6):
            notes.append(f"uneven slice spacing {gaps.min():.3g}-{gaps.max():.3g} mm; affine uses the mean")
    else:
        step = normal * float(first.get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]  # i: along a row, column spacing
    lps[:3, 1] = col_dir * pixel_spacing[0]  # j: down a column, row spacing
    lps[:3, 2] = step
    lps[:3, 3] = entries[0][1]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    data = np.empty((cols, rows, n), dtype=np.float32)
    for k, (_, _, _, ds) in enumerate(entries):
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
        if pixels.shape != (rows, cols):
            raise VolumeReadError(f"{folder}: pixel data of shape {pixels.shape}, expected {(rows, cols)}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        data[:, :, k] = (pixels * slope + intercept).T
    return Volume(data, affine, _header_for(affine), folder, "dicom", notes=notes)


def _header_for(affine: npt.NDArray[np.float64]) -> Any:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)  # 1 = scanner coordinates
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    return header


# ----------------------------------------------------------------------------------------------
# windowing and slicing


@dataclass(frozen=True)
class Window:
    """Intensity window: fixed ``center``/``width``, or robust ``percentiles`` of each volume."""

    center: float | None = None
    width: float | None = None
    percentiles: tuple[float, float] = ROBUST_PERCENTILES

    def __post_init__(self) -> None:
        if (self.center is None) != (self.width is None):
            raise ValueError("give both window center and width, or neither")
        if self.width is not None and not self.width > 0:
            raise ValueError(f"window width must be > 0, got {self.width}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"window percentiles must satisfy 0 <= lo < hi <= 100, got {self.percentiles}")

    @property
    def fixed(self) -> bool:
        return self.center is not None

    def describe(self) -> str:
        if self.center is not None and self.width is not None:
            return f"{self.center:g},{self.width:g}"
        return f"p{self.percentiles[0]:g}-p{self.percentiles[1]:g}"

    def bounds(self, data: npt.NDArray[np.floating[Any]]) -> tuple[float, float]:
        """``(low, high)`` in scanner units for ``data`` (the whole volume)."""
        if self.center is not None and self.width is not None:
            return self.center - self.width / 2, self.center + self.width / 2
        flat = data.reshape(-1)
        flat = flat[:: max(1, flat.size // _PERCENTILE_SAMPLE)]
        flat = flat[np.isfinite(flat)]
        if flat.size == 0:
            return 0.0, 0.0
        lo, hi = np.percentile(flat, self.percentiles)
        return float(lo), float(hi)


def parse_window(value: str | Sequence[float] | Window | None) -> Window:
    """``None``/``"auto"`` -> robust percentiles; ``"40,400"`` or ``(40, 400)`` -> center, width."""
    if isinstance(value, Window):
        return value
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return Window()
    parts = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise ValueError(f"window must be 'center,width' (e.g. 40,400) or 'auto', got {value!r}")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError as err:
        raise ValueError(f"window must be 'center,width' numbers, got {value!r}") from err
    return Window(center, width)


def check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (voxel axes i, j, k), got {axis}")
    return int(axis)


def apply_window(data: npt.NDArray[np.floating[Any]], low: float, high: float) -> npt.NDArray[np.uint8]:
    """Map ``[low, high]`` linearly to 0..255 (clipped, NaN -> 0); all 0 when ``high <= low``."""
    if not high > low:
        return np.zeros(data.shape, np.uint8)
    scaled = (np.nan_to_num(data.astype(np.float32), nan=low) - low) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def slice_2d(volume: npt.NDArray[Any], axis: int, index: int) -> npt.NDArray[Any]:
    """Slice ``index`` along ``axis`` as an image: rows = the later remaining axis (see module doc)."""
    return np.ascontiguousarray(np.moveaxis(volume, check_axis(axis), 0)[index].T)


def put_slice(volume: npt.NDArray[Any], axis: int, index: int, image: npt.NDArray[Any]) -> None:
    """Write ``image`` (as returned by :func:`slice_2d`) back into ``volume`` in place."""
    view = np.moveaxis(volume, check_axis(axis), 0)[index]
    if view.shape != image.T.shape:
        raise ValueError(f"slice image {image.shape} does not fit the volume slice {view.T.shape}")
    view[...] = image.T


def slice_id(volume_id: str, axis: int, index: int) -> str:
    return f"{volume_id}_{AXIS_NAMES[check_axis(axis)]}{index:04d}"


def foreground_fraction(windowed_slice: npt.NDArray[np.uint8]) -> float:
    """Share of pixels whose windowed value exceeds :data:`FOREGROUND_LEVEL`."""
    return float(np.count_nonzero(windowed_slice > FOREGROUND_LEVEL)) / max(windowed_slice.size, 1)


def kept_slices(
    windowed: npt.NDArray[np.uint8], axis: int, min_foreground: float = MIN_FOREGROUND
) -> list[int]:
    """Indices along ``axis`` of the slices the empty-slice rule keeps (see the module docstring)."""
    moved = np.moveaxis(windowed, check_axis(axis), 0)
    shares = np.count_nonzero(moved > FOREGROUND_LEVEL, axis=(1, 2)) / max(moved[0].size, 1)
    if min_foreground <= 0:
        return list(range(moved.shape[0]))
    return [int(i) for i in np.flatnonzero(shares >= min_foreground)]


def to_rgb(slice_u8: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Grey ``(H, W)`` -> ``(H, W, 3)``."""
    return np.ascontiguousarray(np.repeat(slice_u8[:, :, None], 3, axis=2))


# ----------------------------------------------------------------------------------------------
# writing


def label_dtype(max_value: int) -> type[np.unsignedinteger[Any]]:
    """``uint8`` while every value fits (255 = unlabeled), else ``uint16``."""
    return np.uint8 if max_value <= UNLABELED else np.uint16


def write_label_volume(path: str | Path, labels: npt.NDArray[np.integer[Any]], reference: Volume) -> Path:
    """Write ``labels`` (shape ``reference.shape``) as a NIfTI label volume with ``reference``'s geometry.

    The header is a copy of the reference's (dimensions, pixdim, qform/sform and their codes, units,
    orientation all unchanged); the data type becomes ``uint8`` (``uint16`` when a value exceeds 255),
    scaling is reset to identity, the intent is ``label`` and the display range 0..max. A reference
    whose file had extra singleton dimensions (``(I, J, K, 1)``) gets them back. Written atomically.
    """
    import nibabel as nib

    from alps.core.files import atomic_path

    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise ValueError(f"labels {labels.shape} do not match the volume {reference.shape}")
    dtype = label_dtype(int(labels.max(initial=0)))
    data = labels.astype(dtype)
    if reference.file_shape and int(np.prod(reference.file_shape)) == data.size:
        data = data.reshape(reference.file_shape)
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    header.set_intent("label")
    header["cal_min"], header["cal_max"] = 0, int(data.max(initial=0))
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data, None, header)  # affine None: keep the header's qform/sform exactly
    target = Path(path)
    if not target.name.endswith(".nii.gz"):
        raise ValueError(f"label volumes are written as .nii.gz, got {target.name!r}")
    with atomic_path(target) as tmp:
        gz = tmp.with_name(tmp.name + ".nii.gz")  # nibabel picks compression by the suffix
        try:
            nib.save(image, str(gz))
            os.replace(gz, tmp)
        finally:
            gz.unlink(missing_ok=True)
    return target


def read_label_volume(path: str | Path) -> npt.NDArray[Any]:
    """Label values of a NIfTI label volume as stored (``uint8``/``uint16``; shape ``(I, J, K)``)."""
    import nibabel as nib

    image: Any = nib.load(str(path))
    data = np.asarray(image.dataobj)
    if data.ndim > 3 and int(np.prod(data.shape[3:])) == 1:
        data = data.reshape(data.shape[:3])
    return data


__all__ = [
    "DEFAULT_AXIS",
    "FOREGROUND_LEVEL",
    "MIN_FOREGROUND",
    "NIFTI_SUFFIXES",
    "ROBUST_PERCENTILES",
    "Volume",
    "VolumeFile",
    "VolumeReadError",
    "Window",
    "apply_window",
    "find_volumes",
    "foreground_fraction",
    "is_dicom_series",
    "is_nifti",
    "is_volume",
    "kept_slices",
    "parse_window",
    "put_slice",
    "read_dicom_series",
    "read_label_volume",
    "read_nifti",
    "read_volume",
    "slice_2d",
    "slice_id",
    "to_rgb",
    "write_label_volume",
]
