"""Sample medical volumes: the CT and MR test cases with lesion masks shipped in pyradiomics.

The ``pyradiomics-bhklab==3.1.4`` source distribution is fetched once with pip's client (never
installed nor built, :func:`alps.core.fetch.pip_download`) and its ``data/*.nrrd`` volumes are
converted to NIfTI in the alps cache, so tests and benchmarks run on real scans:

=========  ========  ===================  =================================================
case       modality  size (i x j x k)     lesion mask
=========  ========  ===================  =================================================
brain1     MR        256 x 256 x 25       one brain lesion
brain2     MR        256 x 256 x 23       one brain lesion
breast1    MR        45 x 120 x 21        one breast lesion (a cropped region)
lung1      CT        512 x 512 x 48       one lung tumour
lung2      CT        512 x 512 x 61       one lung tumour
=========  ========  ===================  =================================================

Data and code of pyradiomics: BSD 3-Clause licence, (c) the pyradiomics contributors
(Computational Imaging & Bioinformatics Lab, Harvard Medical School); the test cases are
published with pyradiomics for its regression tests.

Conversion (:func:`read_nrrd`, read by ``pynrrd``; :func:`nrrd_to_nifti`): NRRD stores voxels
fastest axis first with ``space directions`` (one vector per axis, in mm) and ``space origin`` in
``space`` (here ``left-posterior-superior``); the NIfTI affine is
``diag(-1, -1, 1, 1) @ [directions | origin]`` (LPS -> RAS), voxel values are kept in their stored
integer type. Masks become ``uint8`` 0/1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps.core.fetch import cache_dir, extract_member, pip_download

MEDICAL_SDIST = "pyradiomics-bhklab==3.1.4"
_MEMBER_DIR = "data/"
CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")
MODALITY = {"brain1": "MR", "brain2": "MR", "breast1": "MR", "lung1": "CT", "lung2": "CT"}

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class MedicalCase:
    """One patient: image volume and lesion mask (NIfTI files with the same geometry)."""

    id: str
    image: Path
    label: Path
    modality: str  # "CT" or "MR"


def read_nrrd(path: str | Path) -> tuple[npt.NDArray[Any], npt.NDArray[np.float64]]:
    """Read a 3-D NRRD file with ``pynrrd``.

    Returns the voxels as a C-contiguous ``(I, J, K)`` array (first NRRD axis first) in the stored
    type, native byte order, and the 4 x 4 RAS affine (see the module docstring). Raises
    ``ValueError`` (one line, naming the file) for another dimension or an unsupported space.
    """
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="F")
    except nrrd.NRRDError as err:
        raise ValueError(f"{path}: not a readable NRRD file ({err})") from err
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got sizes {tuple(data.shape)}")
    directions = np.asarray(header["space directions"], dtype=np.float64)  # row n: axis n, in mm
    origin = np.asarray(header["space origin"], dtype=np.float64)
    space = str(header.get("space", "left-posterior-superior")).lower()
    affine = np.eye(4)
    affine[:3, :3] = directions.T  # column n = direction of axis n
    affine[:3, 3] = origin
    if space in ("left-posterior-superior", "lps"):
        affine = _LPS_TO_RAS @ affine
    elif space not in ("right-anterior-superior", "ras"):
        raise ValueError(f"{path}: NRRD space {space!r} is not supported")
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("=")), affine


def nrrd_to_nifti(source: str | Path, dest: str | Path, *, mask: bool = False) -> Path:
    """Convert an NRRD volume to ``.nii.gz`` (atomically); ``mask=True`` stores ``uint8`` 0/1."""
    import nibabel as nib

    from alps.core.files import atomic_path

    voxels, affine = read_nrrd(source)
    if mask:
        voxels = (voxels > 0).astype(np.uint8)
    image = nib.Nifti1Image(voxels, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        gz = tmp.with_name(tmp.name + ".nii.gz")
        try:
            nib.save(image, str(gz))
            gz.replace(tmp)
        finally:
            gz.unlink(missing_ok=True)
    return dest


def default_dir() -> Path:
    """Where the converted volumes are kept unless ``dest`` is given."""
    return cache_dir() / "samples" / MEDICAL_SDIST.replace("==", "-")


def sample_volumes(
    dest: str | Path | None = None, *, cases: Sequence[str] | None = None
) -> list[MedicalCase]:
    """The pyradiomics test cases as NIfTI image + lesion mask pairs, fetched on first use.

    ``cases`` picks any of :data:`CASES` (default: all five). Files are ``DEST/<case>_image.nii.gz``
    and ``DEST/<case>_label.nii.gz``. Raises :class:`alps.core.fetch.FetchError` (with a manual
    alternative) when the source distribution cannot be fetched.
    """
    names = list(CASES if cases is None else cases)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    folder = Path(dest) if dest is not None else default_dir()
    out = []
    archive: Path | None = None
    for case in names:
        paths = {}
        for part in ("image", "label"):
            target = folder / f"{case}_{part}.nii.gz"
            if not target.exists():
                archive = archive or pip_download(MEDICAL_SDIST, sdist=True)
                nrrd = extract_member(
                    archive, f"{_MEMBER_DIR}{case}_{part}.nrrd", folder / "nrrd" / f"{case}_{part}.nrrd"
                )
                nrrd_to_nifti(nrrd, target, mask=part == "label")
            paths[part] = target
        out.append(MedicalCase(case, paths["image"], paths["label"], MODALITY[case]))
    return out
