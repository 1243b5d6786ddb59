"""Medical volumes in ``alps label``: volumes in as slices, label volumes out.

Before the per-image stages, every input volume (NIfTI file or DICOM series folder, see
:mod:`alps.medical.volume`) is read once, windowed (one window per volume), and the slices that the
empty-slice rule keeps are written as RGB PNGs to ``DIR/slices/<volume id>/<slice id>.png``.
Those PNGs then go through the ordinary per-image stages (masks -> gate -> features -> mask
table -> clustering -> painting) like any other image, so resuming and determinism work as for
images: a slice whose PNG bytes are unchanged keeps its table. After painting,
:meth:`VolumeSet.assemble` stacks the slice label maps back into ``DIR/labels/<volume id>.nii.gz``
with the input's affine and header (skipped or failed slices: 255). The per-slice images and labels
stay in the training layout (``images/<split>/``, ``labels/<split>/``); all slices of a volume go to
the same split (split by patient).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alps.core.files import remove_stale_files
from alps.core.images import ImageFile
from alps.labeling.inputs.image import ImageItem
from alps.medical.volume import (
    AXIS_NAMES,
    MIN_FOREGROUND,
    UNLABELED,
    Volume,
    VolumeFile,
    VolumeReadError,
    Window,
    apply_window,
    kept_slices,
    put_slice,
    read_volume,
    slice_2d,
    slice_id,
    to_rgb,
    write_label_volume,
)

log = logging.getLogger("alps.labeling.inputs.volume")


@dataclass
class VolumeRecord:
    """What happened to one input volume (one entry of ``manifest.json["volumes"]``)."""

    id: str
    source: str
    relpath: str
    kind: str  # "nifti" or "dicom"
    status: str = "pending"  # "ok" or "failed"
    error: str | None = None
    shape: list[int] = field(default_factory=list)  # (I, J, K)
    spacing_mm: list[float] = field(default_factory=list)
    axis: int = 2
    window: str = ""  # the rule ("40,400" or "p0.5-p99.5")
    window_bounds: list[float] = field(default_factory=list)  # [low, high] in scanner units
    min_foreground: float = MIN_FOREGROUND
    slices_total: int = 0
    slices_kept: int = 0
    slice_ids: list[str] = field(default_factory=list)  # kept slices, in index order
    slices_labelled: int = 0  # kept slices whose label map made it into the volume
    label_volume: str | None = None  # path relative to the output directory
    notes: list[str] = field(default_factory=list)


@dataclass
class VolumeSet:
    """The volumes of one run: their records and their kept slices as images."""

    records: list[VolumeRecord]
    files: list[ImageFile]  # one per kept slice (PNG under DIR/slices/)
    group: dict[str, str]  # slice id -> volume id
    index: dict[str, int]  # slice id -> index along the axis
    sources: dict[str, Path]  # volume id -> input path

    @property
    def failed(self) -> list[VolumeRecord]:
        return [r for r in self.records if r.status == "failed"]

    def items(self) -> list[ImageItem]:
        """One item per kept slice; its group is its volume, so all slices land in one split."""
        return [ImageItem(f, self.group[f.id], "slice") for f in self.files]

    def finish(self, out: Path, labels: dict[str, Path]) -> set[Path]:
        """Stack the slices' label maps back into label volumes (:meth:`assemble`)."""
        return self.assemble(out, {sid: path for sid, path in labels.items() if sid in self.group})

    def manifest(self) -> dict[str, Any]:
        return {"volumes": [asdict(r) for r in self.records]} if self.records else {}

    def notes(self) -> list[str]:
        n = len(self.failed)
        return [f"{n} volume(s) could not be read and were skipped (see manifest)"] if n else []

    def assemble(self, out: Path, label_paths: dict[str, Path]) -> set[Path]:
        """Write ``DIR/labels/<volume id>.nii.gz`` from the slice label PNGs; return the paths written.

        ``label_paths`` maps slice ids to their painted label PNGs (slices missing there, and
        slices the empty-slice rule skipped, are all 255). A volume that cannot be read again is
        marked failed.
        """
        from alps.labeling.paint import load_label_png

        written: set[Path] = set()
        for record in self.records:
            if record.status != "ok":
                continue
            try:
                volume = read_volume(self.sources[record.id])
            except VolumeReadError as err:
                record.status, record.error = "failed", str(err)
                continue
            maps = {sid: load_label_png(label_paths[sid]) for sid in record.slice_ids if sid in label_paths}
            wide = any(m.dtype == np.uint16 for m in maps.values())
            labels = np.full(volume.shape, UNLABELED, dtype=np.uint16 if wide else np.uint8)
            for sid, label_map in maps.items():
                put_slice(labels, record.axis, self.index[sid], label_map.astype(labels.dtype))
            target = out / "labels" / f"{record.id}.nii.gz"
            write_label_volume(target, labels, volume)
            record.slices_labelled = len(maps)
            record.label_volume = target.relative_to(out).as_posix()
            written.add(target)
        return written


def _write_png_if_changed(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` as PNG unless the file already holds exactly these bytes (keeps hard links)."""
    import io

    from PIL import Image

    from alps.core.files import atomic_path

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def window_volume(volume: Volume, window: Window) -> tuple[np.ndarray, tuple[float, float]]:
    """The whole volume windowed to ``uint8`` (``(I, J, K)``) and the window bounds used."""
    low, high = window.bounds(volume.data)
    return apply_window(volume.data, low, high), (low, high)


def prepare_volumes(
    volumes: Sequence[VolumeFile],
    out: Path,
    axis: int,
    window: Window,
    min_foreground: float = MIN_FOREGROUND,
    taken_ids: Sequence[str] = (),
) -> VolumeSet:
    """Read, window and slice every volume; write the kept slices to ``out/slices`` (see module doc).

    ``taken_ids`` are the ids of plain images in the same run: a slice id equal to one of them is
    refused (rename the input). Slice PNGs of earlier runs that are no longer produced are deleted.
    """
    taken = {i.casefold() for i in taken_ids}
    records: list[VolumeRecord] = []
    files: list[ImageFile] = []
    group: dict[str, str] = {}
    index: dict[str, int] = {}
    written: set[Path] = set()
    for item in volumes:
        record = VolumeRecord(item.id, str(item.path), item.relpath, item.kind, axis=axis)
        record.window, record.min_foreground = window.describe(), min_foreground
        records.append(record)
        try:
            volume = read_volume(item.path)
        except VolumeReadError as err:
            record.status, record.error = "failed", str(err)
            log.warning("skipped %s", err)
            continue
        windowed, bounds = window_volume(volume, window)
        keep = kept_slices(windowed, axis, min_foreground)
        record.shape = list(volume.shape)
        record.spacing_mm = [round(s, 6) for s in volume.spacing]
        record.window_bounds = [round(float(b), 6) for b in bounds]
        record.slices_total = volume.shape[axis]
        record.notes = list(volume.notes)
        if not keep:
            record.notes.append("no slice has foreground: the label volume is all 255")
        for n in keep:
            sid = slice_id(item.id, axis, n)
            if sid.casefold() in taken:
                raise ValueError(
                    f"slice id {sid} of {item.path} equals an image id; rename one of the inputs"
                )
            path = out / "slices" / item.id / f"{sid}.png"
            _write_png_if_changed(path, to_rgb(slice_2d(windowed, axis, n)))
            written.add(path)
            files.append(ImageFile(path=path, id=sid, relpath=f"{item.relpath}#{AXIS_NAMES[axis]}{n}"))
            group[sid], index[sid] = item.id, n
            record.slice_ids.append(sid)
        record.slices_kept = len(keep)
        record.status = "ok"
    remove_stale_files(out / "slices", written)
    sources = {v.id: v.path for v in volumes}
    return VolumeSet(records, files, group, index, sources)


@dataclass(frozen=True)
class VolumeJob:
    """The volumes of a run and how to slice them (what :func:`prepare_volumes` needs besides ``out``)."""

    volumes: tuple[VolumeFile, ...]
    axis: int = 2
    window: Window = field(default_factory=Window)
    min_foreground: float = MIN_FOREGROUND

    def settings(self) -> dict[str, Any]:
        """How volumes become slices (recorded in the manifest's parameters)."""
        return {"axis": self.axis, "window": self.window.describe(), "min_foreground": self.min_foreground}

    def prepare(self, out: Path, taken_ids: Sequence[str] = ()) -> VolumeSet:
        return prepare_volumes(self.volumes, out, self.axis, self.window, self.min_foreground, taken_ids)
