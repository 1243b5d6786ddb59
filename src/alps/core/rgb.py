"""Bring any image array to the HxWx3 uint8 RGB that SAM expects, by one documented rule.

**The input rule** (used for plain images by :mod:`alps.core.images`, for raster tiles with
scene-wide limits, by the mask generator and by training, which reads images through
:func:`alps.core.images.read_image` like labelling does):

* bands: grey (one band, or two: grey + alpha/second band) is replicated to three channels; three
  bands are kept; of four or more the first three are used (alpha dropped);
* ``uint8`` is kept byte for byte; ``bool`` becomes 0/255;
* every other integer or float type (16-bit, float reflectance, ...) is stretched **jointly**:
  one ``(low, high)`` pair for all three channels, the 2nd and 98th percentile of all finite
  values (:func:`stretch_limits`), mapped linearly to 0..255, rounded, clipped
  (:func:`apply_stretch`); NaN/inf become 0;
* one fallback for flat images: when the two percentiles coincide (a peaked histogram) the full
  finite range is used; a constant or all-NaN image becomes all zeros.

Why joint and not per band: a per-band stretch maps each channel's own 2..98 % range to 0..255,
which changes the colour of true-colour imagery (a green forest scene turns grey, a red roof
scene loses its red), and colour is what SAM's features and the k-means clusters see. A joint
stretch keeps the ratios between channels, so a 16-bit RGB photo looks like its 8-bit version.
For false-colour band choices with very different ranges, pass bands scaled by the user (a later
issue: per-band gains).

For rasters the limits are estimated once per scene (from a decimated read) and passed to
:func:`apply_stretch` for every tile, so tiles of one scene share one mapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

MIN_SIDE = 32
STRETCH_PERCENTILES = (2.0, 98.0)

Limits = tuple[float, float] | None
"""``(low, high)`` of a stretch, ``high > low``; ``None``: the image is flat and maps to zeros."""


def stretch_limits(values: npt.ArrayLike, percentiles: tuple[float, float] = STRETCH_PERCENTILES) -> Limits:
    """Joint stretch limits of the finite values of ``values`` (any shape, all channels together).

    The two percentiles; their full range when the percentiles coincide; ``None`` when the finite
    values are constant or there are none.
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(data, percentiles))
    if hi <= lo:  # very peaked histogram: fall back to the full range
        lo, hi = float(data.min()), float(data.max())
    return (lo, hi) if hi > lo else None


def apply_stretch(array: npt.NDArray[Any], limits: Limits) -> npt.NDArray[np.uint8]:
    """``uint8`` array of ``array``'s shape: ``rint((v - low) * 255 / (high - low))``, clipped to
    0..255; non-finite values and ``limits=None`` give 0."""
    if limits is None:
        return np.zeros(array.shape, np.uint8)
    lo, hi = limits
    data = array.astype(np.float64, copy=False)
    finite = np.isfinite(data)
    scaled = (np.where(finite, data, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def stretch_to_uint8(
    array: npt.NDArray[Any], percentiles: tuple[float, float] = STRETCH_PERCENTILES
) -> npt.NDArray[np.uint8]:
    """:func:`apply_stretch` with the array's own :func:`stretch_limits` (same shape, ``uint8``)."""
    return apply_stretch(array, stretch_limits(array, percentiles))


def to_rgb_uint8(image: npt.ArrayLike, limits: Limits | str = "image") -> npt.NDArray[np.uint8]:
    """Convert an ``(H, W)`` or ``(H, W, C)`` image array to ``(H, W, 3)`` uint8 by the input rule.

    ``limits``: ``"image"`` (default) estimates the stretch from this image; a ``(low, high)`` pair
    (or ``None``) from elsewhere, e.g. a whole raster scene, is used as given. ``uint8`` and
    ``bool`` inputs ignore it.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise ValueError(f"empty image (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    if isinstance(limits, str) and limits != "image":
        raise ValueError(f"limits must be 'image', None or a (low, high) pair, got {limits!r}")
    channels = arr.shape[2]
    arr = arr[:, :, :1] if channels in (1, 2) else arr[:, :, :3]
    if arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        # limits of the kept bands before grey is replicated (replication would move percentiles)
        out = apply_stretch(arr, stretch_limits(arr) if isinstance(limits, str) else limits)
    else:
        out = arr
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


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
