"""Volume datasets (image volume + label volume pairs) for training, read slice by slice.

Layout (nnU-Net style), picked by :func:`alps.train.data.detect_layout` as ``volumes``::

    ROOT/imagesTr/<case>_0000.nii.gz   (or <case>.nii.gz, or a DICOM series folder <case>/)
    ROOT/labelsTr/<case>.nii.gz        class ids per voxel (0 = background), same grid as the image
    ROOT/imagesTs/, ROOT/labelsTs/     optional: the ``test`` split
    ROOT/dataset.json                  optional: nnU-Net's ``{"labels": {"background": 0, ...}}``

Only the first channel (``_0000``) of multi-channel cases is read. Slicing follows
:mod:`alps.medical.volume` exactly as ``alps label`` does (same ``axis``, window rule and empty-slice
rule), so a network pre-trained on ``alps label`` output sees the same kind of images when
fine-tuned here. ``volume_slices`` picks the slices:

* ``foreground`` — the slices the empty-slice rule keeps (default);
* ``labelled``   — only slices whose label map holds a class other than 0 (e.g. the lesion slices).

The validation split is held out **by case** (patient), never by slice: ``val_fraction`` of the
training cases (at least one when ``val_fraction > 0`` and there are two or more cases; none when
``val_fraction <= 0``). Slices are materialised once as PNG pairs under
``<alps cache>/volume_slices/<key>/`` (key: the files' paths, sizes and mtimes and the slicing
settings), so every other part of training reads ordinary :class:`~alps.train.data.Sample` pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alps.core.splits import split_ids
from alps.medical.volume import (
    DEFAULT_AXIS,
    MIN_FOREGROUND,
    Window,
    apply_window,
    check_axis,
    is_volume,
    kept_slices,
    parse_window,
    read_label_volume,
    read_volume,
    slice_2d,
    slice_id,
    to_rgb,
    volume_id,
)

VOLUME_SLICES = ("foreground", "labelled")
_FORMAT = 1  # bump when the materialised slices change meaning


@dataclass(frozen=True)
class VolumePair:
    """One case: image volume (NIfTI file or DICOM folder) and its label volume."""

    id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class SliceSettings:
    """How volumes become training slices."""

    axis: int = DEFAULT_AXIS
    window: Window = field(default_factory=Window)
    volume_slices: str = "foreground"
    min_foreground: float = MIN_FOREGROUND

    def __post_init__(self) -> None:
        check_axis(self.axis)
        if self.volume_slices not in VOLUME_SLICES:
            raise ValueError(f"volume_slices must be one of {VOLUME_SLICES}, got {self.volume_slices!r}")

    def key(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "window": self.window.describe(),
            "volume_slices": self.volume_slices,
            "min_foreground": self.min_foreground,
        }


def is_volume_dataset(root: Path) -> bool:
    return (root / "imagesTr").is_dir() and (root / "labelsTr").is_dir()


def _case_id(name: str) -> str:
    return volume_id(name)


def index_pairs(image_dir: Path, label_dir: Path, notes: list[str]) -> list[VolumePair]:
    """Pair image and label volumes by case id (``<case>_0000`` images match ``<case>`` labels)."""
    labels = (
        {_case_id(p.name): p for p in sorted(label_dir.iterdir()) if is_volume(p)}
        if label_dir.is_dir()
        else {}
    )
    images: dict[str, Path] = {}
    extra_channels = 0
    for path in sorted(image_dir.iterdir()) if image_dir.is_dir() else []:
        if path.name.startswith(".") or not is_volume(path):
            continue
        case = _case_id(path.name)
        if case not in labels and case[-5:-4] == "_" and case[-4:].isdigit():
            if case[-4:] != "0000":
                extra_channels += 1
                continue
            case = case[:-5]
        images[case] = path
    if extra_channels:
        notes.append(f"{extra_channels} extra channel volume(s) (_0001, ...) in {image_dir} ignored")
    missing = sorted(set(images) - set(labels))
    if missing:
        notes.append(f"{len(missing)} image volume(s) in {image_dir} have no label volume and are skipped")
    return [VolumePair(c, images[c], labels[c]) for c in sorted(images) if c in labels]


def _cache_key(pair: VolumePair, settings: SliceSettings) -> str:
    parts: dict[str, Any] = {"format": _FORMAT, "settings": settings.key()}
    for name, path in (("image", pair.image), ("label", pair.label)):
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        parts[name] = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def slice_pair(
    pair: VolumePair, settings: SliceSettings, cache_root: Path | None = None
) -> list[tuple[str, Path, Path]]:
    """The chosen slices of one case as ``(slice id, image PNG, label PNG)``, materialised on first use.

    Raises ``ValueError`` when image and label volumes differ in shape.
    """
    from PIL import Image

    from alps.core.fetch import cache_dir
    from alps.core.files import atomic_path

    folder = (cache_root or cache_dir() / "volume_slices") / _cache_key(pair, settings)
    done = folder / "slices.json"
    if done.is_file():
        listed = json.loads(done.read_text())
        return [(sid, folder / "images" / f"{sid}.png", folder / "labels" / f"{sid}.png") for sid in listed]
    volume = read_volume(pair.image)
    labels = read_label_volume(pair.label)
    if labels.shape != volume.shape:
        raise ValueError(f"{pair.id}: image volume {volume.shape} and label volume {labels.shape} differ")
    if np.issubdtype(labels.dtype, np.floating):
        labels = np.rint(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError(f"{pair.id}: label values outside 0..65535")
    labels = labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.uint16)
    low, high = settings.window.bounds(volume.data)
    windowed = apply_window(volume.data, low, high)
    if settings.volume_slices == "labelled":
        moved = np.moveaxis(labels, settings.axis, 0)
        chosen = [int(n) for n in range(moved.shape[0]) if np.any((moved[n] > 0) & (moved[n] != 255))]
    else:
        chosen = kept_slices(windowed, settings.axis, settings.min_foreground)
    ids = []
    for n in chosen:
        sid = slice_id(pair.id, settings.axis, n)
        for sub, pixels in (
            ("images", to_rgb(slice_2d(windowed, settings.axis, n))),
            ("labels", slice_2d(labels, settings.axis, n)),
        ):
            with atomic_path(folder / sub / f"{sid}.png") as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
        ids.append(sid)
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(ids))
    return [(sid, folder / "images" / f"{sid}.png", folder / "labels" / f"{sid}.png") for sid in ids]


def read_class_names(root: Path) -> list[str] | None:
    """Class names from nnU-Net's ``dataset.json`` (``{"name": value}`` or ``{"value": "name"}``)."""
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text()).get("labels")
    except (ValueError, AttributeError):
        return None
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        if all(str(k).isdigit() for k in labels):
            pairs = {int(k): str(v) for k, v in labels.items()}
        else:
            pairs = {int(v): str(k) for k, v in labels.items() if not isinstance(v, list)}
    except (TypeError, ValueError):
        return None
    if sorted(pairs) != list(range(len(pairs))):
        return None
    return [pairs[i] for i in range(len(pairs))]


def volume_splits(
    root: Path,
    settings: SliceSettings,
    val_fraction: float,
    seed: int,
    notes: list[str],
    cache_root: Path | None = None,
) -> dict[str, list[tuple[str, Path, Path]]]:
    """Slices per split (``train``, ``val`` held out by case, ``test`` from imagesTs/labelsTs)."""
    train_cases = index_pairs(root / "imagesTr", root / "labelsTr", notes)
    val_cases: list[VolumePair] = []
    split = split_ids([c.id for c in train_cases], max(val_fraction, 0.0), seed)
    held = {case for case, name in split.items() if name == "val"}
    if held:
        val_cases = [c for c in train_cases if c.id in held]
        train_cases = [c for c in train_cases if c.id not in held]
        notes.append(f"val split: held out case(s) {sorted(held)} (val_fraction={val_fraction})")
    test_cases = (
        index_pairs(root / "imagesTs", root / "labelsTs", notes) if (root / "labelsTs").is_dir() else []
    )
    out: dict[str, list[tuple[str, Path, Path]]] = {}
    for name, cases in (("train", train_cases), ("val", val_cases), ("test", test_cases)):
        out[name] = [s for case in cases for s in slice_pair(case, settings, cache_root)]
    return out


def slice_settings(
    axis: int = DEFAULT_AXIS,
    window: str | Sequence[float] | Window | None = None,
    volume_slices: str = "foreground",
    min_foreground: float = MIN_FOREGROUND,
) -> SliceSettings:
    return SliceSettings(check_axis(axis), parse_window(window), volume_slices, min_foreground)
