"""Pseudo-label maps: paint each mask with its cluster id, save them as lossless PNG, draw overlays.

Label values. A label map is single channel; ``255`` (:data:`IGNORE_INDEX`) marks pixels no mask
covers, as mmsegmentation expects. Cluster ids ``0..254`` are stored as themselves in ``uint8``.
When a cluster id ``>= 255`` occurs (or ``num_clusters > 255`` is given), the map is ``uint16`` and
ids ``>= 255`` are stored shifted by one (cluster 255 -> value 256, ...), so 255 always means
"unlabeled" and ids below 255 keep their value in both dtypes. :func:`cluster_to_label_value` and
:func:`label_value_to_cluster` are the two directions of this rule (unlabeled <-> cluster ``-1``).
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from PIL import Image

from alps.core.files import atomic_path
from alps.core.rle import decode_rles, rle_areas, rle_bboxes
from alps.labeling.table import table_rles

__all__ = [
    "IGNORE_INDEX",
    "class_counts",
    "cluster_to_label_value",
    "colour_overlay",
    "label_value_to_cluster",
    "load_label_png",
    "paint_label_map",
    "paint_table",
    "palette",
    "save_label_png",
    "save_overlay",
]

IGNORE_INDEX = 255
MAX_CLUSTER = 65534  # largest id a uint16 map can hold after the shift

LabelMap = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


def cluster_to_label_value(clusters: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Stored label value of each cluster id: ids < 255 unchanged, ids >= 255 shifted by +1, -1 -> 255."""
    c = np.asarray(clusters, dtype=np.int64)
    if c.size and (c.min() < -1 or c.max() > MAX_CLUSTER):
        raise ValueError(f"cluster ids must lie in [-1, {MAX_CLUSTER}], got [{c.min()}, {c.max()}]")
    return np.where(c < 0, IGNORE_INDEX, np.where(c >= IGNORE_INDEX, c + 1, c))


def label_value_to_cluster(values: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Cluster id of each stored label value: 255 -> -1 (unlabeled), values > 255 -> value - 1."""
    v = np.asarray(values, dtype=np.int64)
    return np.where(v == IGNORE_INDEX, -1, np.where(v > IGNORE_INDEX, v - 1, v))


def paint_label_map(
    height: int,
    width: int,
    rles: list[dict[str, Any]],
    clusters: npt.ArrayLike,
    *,
    areas: npt.ArrayLike | None = None,
    num_clusters: int | None = None,
) -> LabelMap:
    """Paint the masks of one image into a single-channel label map.

    Masks are painted from the largest to the smallest, so a small object lying on a large one stays
    visible; masks of equal area are painted in input order (the later one ends on top).
    Masks with cluster ``-1`` (not assigned) are skipped.

    Args:
        height, width: image size in pixels.
        rles: COCO RLE dicts, one per mask, each of size ``(height, width)``.
        clusters: ``(N,)`` cluster id per mask.
        areas: ``(N,)`` mask areas in pixels for the painting order; computed from the RLEs if None.
        num_clusters: K of the clustering; when given the dtype follows K (``uint16`` iff K > 255)
            so that every map of a dataset has the same dtype.

    Returns:
        ``(height, width)`` ``uint8`` or ``uint16`` map; 255 where no mask is painted.
    """
    ids = np.asarray(clusters, dtype=np.int64).reshape(-1)
    if ids.shape[0] != len(rles):
        raise ValueError(f"{len(rles)} masks but {ids.shape[0]} cluster ids")
    values = cluster_to_label_value(ids)
    top = int(ids.max()) if ids.size else -1
    if num_clusters is not None:
        if top >= num_clusters:
            raise ValueError(f"cluster id {top} >= num_clusters={num_clusters}")
        wide = num_clusters > IGNORE_INDEX
    else:
        wide = top >= IGNORE_INDEX
    label = np.full((height, width), IGNORE_INDEX, dtype=np.uint16 if wide else np.uint8)
    if not rles:
        return label
    for i, rle in enumerate(rles):
        if tuple(int(v) for v in rle["size"]) != (height, width):
            raise ValueError(f"mask {i} has size {tuple(rle['size'])}, expected {(height, width)}")
    mask_areas = np.asarray(rle_areas(rles) if areas is None else areas, dtype=np.int64).reshape(-1)
    if mask_areas.shape[0] != len(rles):
        raise ValueError(f"{len(rles)} masks but {mask_areas.shape[0]} areas")
    boxes = rle_bboxes(rles)
    for i in np.argsort(-mask_areas, kind="stable"):
        if ids[i] < 0:
            continue
        x0, y0, w, h = (int(v) for v in boxes[i])
        if w == 0 or h == 0:
            continue
        # boolean assignment only inside the box
        mask = decode_rles([rles[i]])[0, y0 : y0 + h, x0 : x0 + w]
        label[y0 : y0 + h, x0 : x0 + w][mask] = values[i]
    return label


def paint_table(table: pa.Table, *, num_clusters: int | None = None) -> LabelMap:
    """Label map of one mask table (:mod:`alps.labeling.table`) from its ``cluster`` and ``area`` columns."""
    size = (table.schema.metadata or {}).get(b"alps.image_size")
    if size is None:
        raise ValueError("mask table has no alps.image_size metadata")
    height, width = (int(v) for v in size.decode().split(","))
    return paint_label_map(
        height,
        width,
        table_rles(table),
        table.column("cluster").to_numpy(),
        areas=table.column("area").to_numpy(),
        num_clusters=num_clusters,
    )


def _check_png(path: Path | str) -> Path:
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"label maps must be saved losslessly as .png, got {target.name!r}")
    return target


def save_label_png(path: Path | str, label_map: npt.ArrayLike) -> None:
    """Save a ``uint8`` or ``uint16`` label map as a single-channel PNG (atomically).

    Only ``.png`` is accepted: any lossy format would invent label values at object borders.
    """
    target = _check_png(path)
    label = np.asarray(label_map)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    if label.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"label map must be uint8 or uint16, got {label.dtype}")
    image = Image.fromarray(np.ascontiguousarray(label))
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG")


def load_label_png(path: Path | str) -> LabelMap:
    """Read a single-channel label PNG (8-bit grey, palette indices, or 16-bit grey) unchanged."""
    with Image.open(path) as image:
        mode = image.mode
        if mode in ("L", "P"):
            return np.array(image, dtype=np.uint8)
        if mode == "1":
            return np.array(image, dtype=np.uint8)
        if mode.startswith("I"):
            data = np.array(image)
            if data.min(initial=0) < 0 or data.max(initial=0) > np.iinfo(np.uint16).max:
                raise ValueError(f"{path}: label values outside the uint16 range")
            return data.astype(np.uint16)
    raise ValueError(f"{path}: PNG mode {mode!r} is not a single-channel label map")


def palette(k: int) -> npt.NDArray[np.uint8]:
    """``(k, 3)`` uint8 RGB colours, deterministic and well spread.

    Hues step by the golden ratio (neighbouring ids get far-apart hues); saturation and value cycle
    through a few levels so that colours stay distinguishable beyond a dozen classes.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    golden = (np.sqrt(5.0) - 1.0) / 2.0
    saturation = (0.85, 0.55, 1.0, 0.7)
    value = (0.95, 0.75, 0.6)
    colours = np.zeros((k, 3), dtype=np.uint8)
    for i in range(k):
        hue = (0.13 + i * golden) % 1.0
        rgb = colorsys.hsv_to_rgb(hue, saturation[i % 4], value[(i // 4) % 3])
        colours[i] = np.round(np.asarray(rgb) * 255.0).astype(np.uint8)
    return colours


def colour_overlay(
    image: npt.ArrayLike,
    label_map: npt.ArrayLike,
    *,
    alpha: float = 0.5,
    colours: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint8]:
    """Blend a colour per cluster over the image; unlabeled pixels show the image unchanged.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (``(H, W)`` grey is broadcast to RGB).
        label_map: ``(H, W)`` label values (see module docstring).
        alpha: weight of the cluster colour.
        colours: ``(K, 3)`` colours per cluster id; :func:`palette` by default.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    rgb = np.asarray(image)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {rgb.shape}")
    rgb = rgb.astype(np.uint8, copy=False)
    clusters = label_value_to_cluster(label_map)
    if clusters.shape != rgb.shape[:2]:
        raise ValueError(f"label map {clusters.shape} and image {rgb.shape[:2]} differ in size")
    valid = clusters >= 0
    top = int(clusters.max()) if clusters.size else -1
    table = palette(top + 1) if colours is None else np.asarray(colours, dtype=np.uint8)
    if top >= len(table):
        raise ValueError(f"cluster id {top} has no colour ({len(table)} colours)")
    out = rgb.copy()
    blend = (1.0 - alpha) * rgb[valid].astype(np.float32) + alpha * table[clusters[valid]].astype(np.float32)
    out[valid] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return out


_OVERLAY_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def save_overlay(
    path: Path | str,
    image: npt.ArrayLike,
    label_map: npt.ArrayLike,
    *,
    alpha: float = 0.5,
    colours: npt.ArrayLike | None = None,
) -> None:
    """Save :func:`colour_overlay` as PNG or JPEG (chosen by the extension), atomically."""
    target = Path(path)
    fmt = _OVERLAY_FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise ValueError(f"overlay extension must be one of {sorted(_OVERLAY_FORMATS)}, got {target.name!r}")
    overlay = colour_overlay(image, label_map, alpha=alpha, colours=colours)
    with atomic_path(target) as tmp:
        Image.fromarray(overlay).save(tmp, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def class_counts(label_map: npt.ArrayLike, k: int) -> npt.NDArray[np.int64]:
    """``(k,)`` pixels per cluster ``0..k-1`` of a label map (unlabeled pixels not counted)."""
    clusters = label_value_to_cluster(label_map).reshape(-1)
    clusters = clusters[(clusters >= 0) & (clusters < k)]
    return np.bincount(clusters, minlength=k)[:k].astype(np.int64) if k else np.zeros(0, np.int64)
