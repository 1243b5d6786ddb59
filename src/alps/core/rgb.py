"""Bring any image array to the HxWx3 uint8 RGB that SAM expects, by one documented rule."""

from __future__ import annotations

import numpy as np

MIN_SIDE = 32
STRETCH_PERCENTILES = (2.0, 98.0)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image array to HxWx3 uint8.

    The rule:

    * (H, W) and (H, W, 1): grey, replicated to three channels;
    * (H, W, 2): grey + alpha, the grey channel replicated (alpha dropped);
    * (H, W, 3): as is; (H, W, 4): RGBA, alpha dropped; more than 4 channels: the first three
      (choose bands explicitly for multispectral data);
    * uint8 is kept; bool becomes 0/255; any other integer or float dtype (16-bit, float
      reflectance, ...) is stretched linearly so the 2nd..98th percentile of all finite values of
      the image (all channels together, which keeps the colour balance) spans 0..255, clipped;
      NaN/inf become 0. A constant image becomes all zeros.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise ValueError(f"empty image (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    channels = arr.shape[2]
    if channels in (1, 2):
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif channels > 3:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    return _stretch(arr)


def _stretch(arr: np.ndarray) -> np.ndarray:
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(arr.shape, np.uint8)
    lo, hi = np.percentile(values[finite], STRETCH_PERCENTILES)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    scaled = (np.where(finite, values, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def check_size(shape: tuple[int, ...], max_pixels: int) -> None:
    """Refuse images SAM cannot sensibly take in one piece, with the reason and the way out."""
    h, w = shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image is {h}x{w} px; at least {MIN_SIDE} px per side are needed")
    if h * w > max_pixels:
        raise ValueError(
            f"image is {h}x{w} px ({h * w / 1e6:.0f} MP), above max_pixels={max_pixels / 1e6:.0f} MP: "
            "full-resolution masks of it would not fit in memory. Tile the scene "
            "(alps label --tile-size) or raise max_pixels."
        )
