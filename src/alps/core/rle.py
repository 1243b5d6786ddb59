"""COCO run-length encoding: the one mask format alps stores and passes between stages.

Masks are compressed COCO RLEs (``{"size": [H, W], "counts": str}``, pycocotools). Areas and boxes
are computed one mask at a time: pycocotools 2.0.11 with numpy 2 overflows a uint8 counter in
``mask.area(list)`` / ``toBbox(list)`` past 255 items.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

BoolArray = npt.NDArray[np.bool_]

__all__ = ["BoolArray", "decode_masks", "decode_rles", "rle_areas", "rle_bboxes", "rle_of"]


def rle_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """Compressed COCO RLE (``{"size": [H, W], "counts": str}``) of a mask record or RLE dict.

    Accepts a generator record (``segmentation`` as an HxW bool array or an RLE dict), a compressed
    RLE (``counts`` str/bytes) or an uncompressed RLE (``counts`` list of run lengths).
    """
    seg: Any = record["segmentation"] if "segmentation" in record else record
    if isinstance(seg, np.ndarray):
        if seg.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {seg.shape}")
        rle = mask_utils.encode(np.asfortranarray(seg.astype(np.uint8, copy=False)))
    elif isinstance(seg, Mapping) and "counts" in seg and "size" in seg:
        height, width = (int(v) for v in seg["size"])
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(dict(seg), height, width)
        else:
            rle = {"size": [height, width], "counts": seg["counts"]}
    else:
        raise TypeError(f"cannot read a mask from {type(seg).__name__}; expected ndarray or COCO RLE dict")
    counts = rle["counts"]
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
    }


def decode_masks(records: Sequence[Mapping[str, Any]], *, size: tuple[int, int] | None = None) -> BoolArray:
    """Decode masks to a dense ``(N, H, W)`` bool array.

    Args:
        records: COCO RLE dicts, or generator records whose ``segmentation`` is an RLE or bool array.
        size: ``(H, W)``; required only to give an empty input its shape.

    Returns:
        ``(N, H, W)`` bool array (C-contiguous).
    """
    if not records:
        if size is None:
            raise ValueError("decode_masks needs size=(H, W) when there are no masks")
        return np.zeros((0, *size), dtype=bool)
    segs = [r.get("segmentation") for r in records]
    if all(isinstance(s, np.ndarray) for s in segs):  # dense records: no RLE round trip
        dense = np.stack([np.asarray(s, dtype=bool) for s in segs])
        if size is not None and dense.shape[1:] != tuple(size):
            raise ValueError(f"masks have size {dense.shape[1:]}, expected {size}")
        return dense
    rles = [rle_of(r) for r in records]
    shapes = {tuple(r["size"]) for r in rles}
    if len(shapes) != 1:
        raise ValueError(f"masks have different sizes: {sorted(shapes)}")
    if size is not None and shapes != {tuple(size)}:
        raise ValueError(f"masks have size {shapes.pop()}, expected {size}")
    return decode_rles(rles)


def decode_rles(rles: Sequence[Mapping[str, Any]]) -> BoolArray:
    """Decode compressed COCO RLEs of one size to an ``(N, H, W)`` bool array (``N >= 1``)."""
    with warnings.catch_warnings():
        # pycocotools 2.0.x builds its output through an __array__ that numpy 2 flags as deprecated
        warnings.filterwarnings("ignore", message=".*__array__ implementation", category=DeprecationWarning)
        dense = mask_utils.decode([dict(r) for r in rles])  # (H, W, N) uint8, Fortran order
    return np.ascontiguousarray(np.moveaxis(dense, -1, 0).astype(bool))


def rle_areas(rles: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.int64]:
    """``(N,)`` pixel count of each compressed RLE (one pycocotools call per mask, see module note)."""
    return np.array([int(mask_utils.area(dict(r))) for r in rles], dtype=np.int64)


def rle_bboxes(rles: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float64]:
    """``(N, 4)`` XYWH pixel boxes of compressed RLEs (one pycocotools call per mask)."""
    boxes = [np.asarray(mask_utils.toBbox(dict(r)), dtype=np.float64) for r in rles]
    return np.stack(boxes) if boxes else np.zeros((0, 4), np.float64)
