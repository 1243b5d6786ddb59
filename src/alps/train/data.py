"""Dataset readers (alps label, mmsegmentation, image/mask folders), augmentation and normalisation.

Four on-disk layouts are read; ``layout="auto"`` picks by the folders it finds:

* ``alps``  — ``images/{train,val}/<id>.<ext>``, ``labels/{train,val}/<id>.png``, ``manifest.json``
  (``num_classes``, ``ignore_index``); split sub-folders are optional.
* ``mmseg`` — ``img_dir/{train,val}``, ``ann_dir/{train,val}``.
* ``folders`` — ``images/`` and ``masks/`` (optionally with ``train``/``val`` sub-folders) plus a class
  map file (``value -> name``) that also remaps mask values to contiguous class indices.
* ``volumes`` — ``imagesTr/`` + ``labelsTr/`` NIfTI (or DICOM) volume pairs, nnU-Net style, read slice
  by slice the way ``alps label`` slices volumes (:mod:`alps.train.volume_data`; val held out by case).

Where a layout has no ``val`` split, a deterministic ``val_fraction`` of the images is held out.
Label maps are single-channel PNG (uint8, or uint16 when K > 255); ``ignore_index`` (255) is never a class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from alps.core.splits import split_ids

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
LAYOUTS = ("auto", "alps", "mmseg", "folders", "volumes")
CLASS_MAP_NAMES = (
    "classes.json",
    "classes.yaml",
    "classes.yml",
    "classes.txt",
    "class_map.json",
    "class_map.yaml",
    "class_map.txt",
)


@dataclass(frozen=True)
class Sample:
    """One image and its label map; ``id`` is the file stem shared by both."""

    id: str
    image: Path
    label: Path


@dataclass
class SegmentationData:
    """An indexed dataset: samples per split and the class list.

    ``value_lut`` (length 65536, uint16) remaps raw label values to class indices (``ignore_index``
    elsewhere); ``None`` means the raw values already are class indices.
    """

    root: Path
    layout: str
    num_classes: int
    class_names: list[str]
    ignore_index: int
    train: list[Sample]
    val: list[Sample]
    value_lut: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        """Samples of ``train``, ``val``, ``test`` or ``all`` (train + val + test)."""
        if name == "all":
            return self.train + self.val + self.test
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        samples: list[Sample] = getattr(self, name)
        return samples


# --------------------------------------------------------------------------- reading files


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB by the same rule as labelling
    (:func:`alps.core.images.load_image`, :mod:`alps.core.rgb`), any size."""
    from alps.core.images import load_image

    return load_image(path, min_side=1).pixels


def read_label(path: str | Path, value_lut: np.ndarray | None = None) -> np.ndarray:
    """Read a single-channel label map as ``(H, W)`` uint16, remapped through ``value_lut`` if given."""
    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            raise ValueError(f"{path}: label maps must be single channel, got {im.mode}")
        array = np.array(im)
    if array.ndim == 3:
        array = array[..., 0]
    array = array.astype(np.uint16)
    return value_lut[array] if value_lut is not None else array


def read_class_map(path: str | Path) -> dict[int, str]:
    """Read ``value -> name`` from JSON/YAML (mapping, or list of names) or text lines ``value name``."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        raw: object = json.loads(text)
    elif path.suffix.lower() in (".yaml", ".yml"):
        raw = yaml.safe_load(text)
    else:
        pairs: dict[int, str] = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            value, name = line.replace(",", " ").replace(":", " ").split(None, 1)
            pairs[int(value)] = name.strip()
        raw = pairs
    if isinstance(raw, dict) and "classes" in raw:
        raw = raw["classes"]
    if isinstance(raw, list):
        return {i: str(n) for i, n in enumerate(raw)}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping value -> name or a list of names")
    return {int(k): str(v) for k, v in raw.items()}


def class_map_lut(class_map: dict[int, str], ignore_index: int = 255) -> tuple[np.ndarray | None, list[str]]:
    """Lookup table raw value -> contiguous class index (in sorted value order) and the class names.

    Returns ``None`` for the table when the values already are ``0..N-1``.
    """
    values = sorted(v for v in class_map if v != ignore_index)
    names = [class_map[v] for v in values]
    if values == list(range(len(values))):
        return None, names
    lut = np.full(65536, ignore_index, dtype=np.uint16)
    for index, value in enumerate(values):
        lut[value] = index
    return lut, names


# --------------------------------------------------------------------------- indexing layouts


def detect_layout(root: Path) -> str:
    """Name of the layout found under ``root`` (see module docstring)."""
    from alps.train.volume_data import is_volume_dataset

    if is_volume_dataset(root):
        return "volumes"
    if (root / "img_dir").is_dir() and (root / "ann_dir").is_dir():
        return "mmseg"
    if (root / "labels").is_dir():
        return "alps"
    if (root / "masks").is_dir():
        return "folders"
    raise FileNotFoundError(
        f"{root}: no known dataset layout (expected labels/ [alps label], img_dir/+ann_dir/ [mmseg], "
        "images/+masks/ [folders] or imagesTr/+labelsTr/ [volumes])"
    )


def _files(folder: Path, exts: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in exts}


def _pair(image_dir: Path, label_dir: Path, notes: list[str]) -> list[Sample]:
    images = _files(image_dir, IMAGE_EXTS)
    labels = _files(label_dir, (".png", ".tif", ".tiff"))
    missing = sorted(set(images) - set(labels))
    if missing:
        notes.append(f"{len(missing)} image(s) in {image_dir} have no label and are skipped")
    return [Sample(i, images[i], labels[i]) for i in sorted(images) if i in labels]


def _manifest_images(root: Path, manifest: dict) -> dict[str, Path]:
    """Image paths listed in an alps manifest (``images``: {id: path} or [{id, path}]), if any."""
    entries = manifest.get("images")
    found: dict[str, Path] = {}
    if isinstance(entries, dict):
        items = [(str(k), v if isinstance(v, str) else (v or {}).get("path")) for k, v in entries.items()]
    elif isinstance(entries, list):
        items = [(str(e.get("id")), e.get("path")) for e in entries if isinstance(e, dict)]
    else:
        return found
    for key, value in items:
        if value:
            path = Path(value) if Path(value).is_absolute() else root / value
            if path.is_file():
                found[key] = path
    return found


def split_holdout(samples: Sequence[Sample], val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """Train/val split of ``samples`` by :func:`alps.core.splits.split_ids` (the labelling rule):
    ``val_fraction = 0`` holds nothing out; otherwise at least one of each with two or more."""
    split = split_ids([s.id for s in samples], val_fraction, seed)
    train = [s for s in samples if split[s.id] == "train"]
    val = [s for s in samples if split[s.id] == "val"]
    return train, val


def load_segmentation_data(
    root: str | Path,
    layout: str = "auto",
    class_map: str | Path | None = None,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    *,
    axis: int = 2,
    window: str | Sequence[float] | None = None,
    volume_slices: str = "foreground",
) -> SegmentationData:
    """Index a dataset folder.

    Number of classes, in order of precedence: ``num_classes``; the class map; ``manifest.json``
    (``dataset.json`` of a volume dataset); else the largest non-ignored label value + 1 (scanning
    the labels; recorded in ``notes``). ``axis``, ``window`` and ``volume_slices`` only apply to the
    ``volumes`` layout (:mod:`alps.train.volume_data`).
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    layout = detect_layout(root) if layout == "auto" else layout
    notes: list[str] = []
    manifest: dict = {}
    if (root / "manifest.json").is_file():
        manifest = json.loads((root / "manifest.json").read_text())
    ignore = int(ignore_index if ignore_index is not None else manifest.get("ignore_index", 255))

    img_name, ann_name = {
        "alps": ("images", "labels"),
        "mmseg": ("img_dir", "ann_dir"),
        "folders": ("images", "masks"),
        "volumes": ("imagesTr", "labelsTr"),
    }[layout]
    splits: dict[str, list[Sample]] = {}
    if layout == "volumes":
        from alps.train.volume_data import read_class_names, slice_settings, volume_splits

        settings = slice_settings(axis, window, volume_slices)
        sliced = volume_splits(root, settings, val_fraction, split_seed, notes)
        splits = {name: [Sample(*item) for item in items] for name, items in sliced.items()}
        manifest.setdefault("class_names", read_class_names(root))
    for split in ("train", "val", "test") if layout != "volumes" else ():
        if (root / ann_name / split).is_dir():
            splits[split] = _pair(root / img_name / split, root / ann_name / split, notes)
    if "train" not in splits:
        if layout == "alps" and not (root / img_name).is_dir():
            images = _manifest_images(root, manifest)
            labels = _files(root / ann_name, (".png", ".tif", ".tiff"))
            flat = [Sample(i, images[i], labels[i]) for i in sorted(labels) if i in images]
            if len(flat) < len(labels):
                notes.append(f"{len(labels) - len(flat)} label(s) have no image and are skipped")
        else:
            flat = _pair(root / img_name, root / ann_name, notes)
        splits["train"] = flat
    if "val" not in splits:
        splits["train"], splits["val"] = split_holdout(splits["train"], val_fraction, split_seed)
        notes.append(
            f"no val split: held out {len(splits['val'])} of "
            f"{len(splits['train']) + len(splits['val'])} images (val_fraction={val_fraction})"
        )
    if not splits["train"]:
        raise FileNotFoundError(f"{root}: no training image/label pairs found (layout {layout})")

    lut: np.ndarray | None = None
    names: list[str] | None = None
    map_path = (
        Path(class_map)
        if class_map
        else next((root / n for n in CLASS_MAP_NAMES if (root / n).is_file()), None)
    )
    if map_path is not None:
        lut, names = class_map_lut(read_class_map(map_path), ignore)
    elif isinstance(manifest.get("class_names"), list):
        names = [str(n) for n in manifest["class_names"]]

    k = num_classes or (len(names) if names else None) or manifest.get("num_classes")
    if not k:
        k = max_label_value([s.label for s in splits["train"] + splits["val"]], ignore) + 1
        notes.append(f"num_classes not given: inferred K={k} from the labels (max non-ignore value + 1)")
    k = int(k)
    if names is None or len(names) != k:
        names = [f"class_{i}" for i in range(k)]
    return SegmentationData(
        root, layout, k, names, ignore, splits["train"], splits["val"], lut, notes, splits.get("test", [])
    )


def max_label_value(paths: Sequence[Path], ignore_index: int = 255) -> int:
    """Largest label value other than ``ignore_index`` over ``paths`` (-1 if none)."""
    best = -1
    for path in paths:
        values = np.unique(read_label(path))
        values = values[values != ignore_index]
        if values.size:
            best = max(best, int(values.max()))
    return best


def subset_fraction(samples: Sequence[Sample], fraction: float, seed: int = 0) -> list[Sample]:
    """Deterministic subset of ``ceil(fraction * n)`` samples (at least one), in their original order.

    The choice depends only on the sorted sample ids and ``seed``, so it is repeatable across runs.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    ordered = sorted(samples, key=lambda s: s.id)
    n = max(1, math.ceil(fraction * len(ordered) - 1e-9))
    keep = set(np.random.default_rng(seed).permutation(len(ordered))[:n].tolist())
    chosen = {ordered[i].id for i in keep}
    return [s for s in samples if s.id in chosen]


# --------------------------------------------------------------------------- normalisation + augmentation


def compute_norm_stats(paths: Sequence[Path], max_pixels: int = 1 << 18) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-255 scale) over the images, each subsampled to about ``max_pixels``."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for path in paths:
        image = read_image(path)
        step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / max_pixels)))
        pixels = image[::step, ::step].reshape(-1, 3).astype(np.float64)
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        count += len(pixels)
    if count == 0:
        raise ValueError("no images to compute normalisation statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-6))
    return mean.round(4).tolist(), std.round(4).tolist()


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 standardised with 0-255-scale ``mean``/``std``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - m) / s


def _uniform(lo: float, hi: float) -> float:
    # torch's generator is seeded per DataLoader worker, so augmentations differ between workers
    return lo + (hi - lo) * float(torch.rand(()))


def random_scale_crop_flip(
    image: np.ndarray,
    label: np.ndarray,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    vflip: bool = False,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale, random ``crop_size`` crop (padding with 0 / ``ignore_index``) and flips.

    Args:
        image: ``(H, W, 3)`` uint8. label: ``(H, W)`` uint16.
    Returns:
        ``(crop, crop, 3)`` uint8 and ``(crop, crop)`` uint16.
    """
    scale = _uniform(*scale_range)
    if abs(scale - 1) > 1e-3:
        h, w = label.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    h, w = label.shape
    if h < crop_size or w < crop_size:
        ph, pw = max(0, crop_size - h), max(0, crop_size - w)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=ignore_index)
        h, w = label.shape
    top = int(torch.randint(0, h - crop_size + 1, ()))
    left = int(torch.randint(0, w - crop_size + 1, ()))
    image = image[top : top + crop_size, left : left + crop_size]
    label = label[top : top + crop_size, left : left + crop_size]
    if hflip and float(torch.rand(())) < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if vflip and float(torch.rand(())) < 0.5:
        image, label = image[::-1], label[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


# --------------------------------------------------------------------------- torch datasets


class _Reader:
    """Reads (and optionally keeps in memory) image/label pairs."""

    def __init__(self, samples: Sequence[Sample], value_lut: np.ndarray | None, cache: bool) -> None:
        self.samples = list(samples)
        self.value_lut = value_lut
        self.cache = cache
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._memory:
            return self._memory[index]
        sample = self.samples[index]
        image, label = read_image(sample.image), read_label(sample.label, self.value_lut)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{sample.id}: image {image.shape[:2]} and label {label.shape} differ in size")
        if self.cache:
            self._memory[index] = (image, label)
        return image, label


class TrainDataset(Dataset):
    """Random augmented crops for training: items are ``(3, crop, crop)`` float32 and ``(crop, crop)`` int64.

    ``min_length`` repeats the sample list so that tiny datasets still give full epochs.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        mean: Sequence[float],
        std: Sequence[float],
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        vflip: bool = False,
        ignore_index: int = 255,
        value_lut: np.ndarray | None = None,
        min_length: int = 0,
        cache: bool = False,
    ) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.reader = _Reader(samples, value_lut, cache)
        self.mean, self.std = list(mean), list(std)
        self.crop_size, self.scale_range = crop_size, scale_range
        self.hflip, self.vflip, self.ignore_index = hflip, vflip, ignore_index
        self.length = max(len(samples), min_length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.reader.read(index % len(self.reader.samples))
        image, label = random_scale_crop_flip(
            image, label, self.crop_size, self.scale_range, self.hflip, self.vflip, self.ignore_index
        )
        return normalize(image, self.mean, self.std), torch.from_numpy(label.astype(np.int64))


class EvalDataset(Dataset):
    """Whole images for validation / evaluation: ``(3, H, W)`` float32, ``(H, W)`` int64 and the sample id."""

    def __init__(
        self,
        samples: Sequence[Sample],
        mean: Sequence[float],
        std: Sequence[float],
        value_lut: np.ndarray | None = None,
        cache: bool = False,
    ) -> None:
        self.reader = _Reader(samples, value_lut, cache)
        self.mean, self.std = list(mean), list(std)

    def __len__(self) -> int:
        return len(self.reader.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image, label = self.reader.read(index)
        return (
            normalize(image, self.mean, self.std),
            torch.from_numpy(label.astype(np.int64)),
            self.reader.samples[index].id,
        )


def tile_origins(length: int, tile: int) -> list[int]:
    """Start offsets of tiles covering ``length`` (the last one shifted back to fit; one if shorter)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def write_tiles(
    image: np.ndarray,
    label: np.ndarray | None,
    image_dir: Path,
    label_dir: Path | None,
    stem: str,
    tile: int,
    scale: float = 1.0,
) -> list[str]:
    """Rescale by ``scale``, cut into ``tile``-px tiles and write ``<stem>_<row>_<col>.png``; returns the ids.

    Args:
        image: ``(H, W, 3)`` uint8. label: ``(H, W)`` uint8/uint16 or ``None``.
    """
    if scale != 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if label is not None:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    image_dir.mkdir(parents=True, exist_ok=True)
    if label_dir is not None:
        label_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for y in tile_origins(image.shape[0], tile):
        for x in tile_origins(image.shape[1], tile):
            tile_id = f"{stem}_{y:05d}_{x:05d}"
            Image.fromarray(image[y : y + tile, x : x + tile]).save(image_dir / f"{tile_id}.png")
            if label is not None and label_dir is not None:
                Image.fromarray(label[y : y + tile, x : x + tile]).save(label_dir / f"{tile_id}.png")
            ids.append(tile_id)
    return ids
