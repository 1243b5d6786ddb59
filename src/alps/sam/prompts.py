"""Prompt layouts for automatic mask generation: the official point grid and a multi-scale box grid."""

from __future__ import annotations

import numpy as np
from segment_anything.utils.amg import build_point_grid


def build_box_grid(points_per_side: int, levels: int = 3) -> np.ndarray:
    """Multi-scale boxes over the unit square, (B, 4) XYXY in [0, 1].

    Level ``l`` places ``n_l = max(1, points_per_side // 2**l)`` boxes per side on the same
    centres as the official ``n_l x n_l`` point grid; each box is two grid cells wide
    (``2 / n_l``), so neighbouring boxes overlap by half and every object up to about one box
    wide is fully inside at least one box. Boxes are clipped to the image. For
    ``points_per_side=32, levels=3`` that is 32² + 16² + 8² = 1344 boxes of 1/16, 1/8 and 1/4 of
    the image side.
    """
    if points_per_side < 1 or levels < 1:
        raise ValueError("points_per_side and levels must be >= 1")
    grids = []
    for level in range(levels):
        n = max(1, points_per_side // 2**level)
        centres = build_point_grid(n)
        half = 1.0 / n
        boxes = np.concatenate([centres - half, centres + half], axis=1)
        grids.append(np.clip(boxes, 0.0, 1.0))
    return np.concatenate(grids, axis=0)


def box_grid_for_layer(points_per_side: int, levels: int, layer: int, downscale: int) -> np.ndarray:
    """Box grid for crop layer ``layer``, thinned like the official point grids."""
    n = max(1, points_per_side // downscale**layer)
    return build_box_grid(n, levels)
