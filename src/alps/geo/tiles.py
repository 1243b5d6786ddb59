"""Masks of a tiled scene: clip to valid pixels, decide which tile keeps a mask, merge cut objects, paint.

Rules (so one object is one mask and the stitched label raster has no seams):

1. *valid pixels*: every mask is intersected with the tile's validity mask (nodata, alpha, NaN);
   masks left empty are dropped. Invalid pixels are therefore never labelled (255).
2. *ownership*: a mask is kept only by the tile whose core (:class:`alps.geo.raster.Tile`) contains
   the centre of its bounding box, in scene pixels. An object lying across a tile border but
   inside the overlap is seen whole by both tiles; exactly one of them keeps it.
3. *merging*: an object larger than the overlap is cut by the tiles' borders, and each tile may
   keep its part. Two kept masks of overlapping tiles (the eight neighbours: side by side, one
   above the other, or diagonal, where the windows share only a corner square) are linked when
   each touches a border of its tile that the other tile's window extends beyond, and their IoU
   inside the windows' intersection is at least :data:`LINK_IOU`. Links are joined by union-find,
   so the parts of an object crossing a tile corner (up to four tiles) form one object even when
   the gate dropped the small pieces of the side neighbours and only the diagonal pair is left.
   The object gets one cluster (the nearest centre to the area-weighted mean of the parts'
   features) and paints as one layer (its total area decides the painting order).
4. *painting*: the label of a pixel depends only on the set of kept masks of the whole scene
   (largest object first, ties by tile then mask order), so the raster can be painted block by
   block in any order with windowed writes and still has no seams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as mask_utils

from alps.core.rle import decode_rles, rle_of
from alps.geo.raster import Tile

__all__ = [
    "LINK_IOU",
    "TileMasks",
    "apply_links",
    "clip_to_valid",
    "link_pair",
    "link_scene",
    "owned_masks",
    "paint_block",
]

LINK_IOU = 0.5


def _encode(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def clip_to_valid(records: Sequence[dict[str, Any]], valid: npt.NDArray[np.bool_]) -> list[dict[str, Any]]:
    """Intersect every mask with ``valid`` (``(h, w)`` bool); drop masks left empty (rule 1)."""
    if valid.all():
        return list(records)
    kept = []
    for record in records:
        mask = decode_rles([rle_of(record)])[0] & valid
        area = int(mask.sum())
        if area == 0:
            continue
        rle = _encode(mask)
        kept.append(
            {**record, "segmentation": rle, "area": area, "bbox": [float(v) for v in mask_utils.toBbox(rle)]}
        )
    return kept


def owned_masks(records: Sequence[dict[str, Any]], tile: Tile) -> list[dict[str, Any]]:
    """The masks whose bounding-box centre lies in the tile's core (rule 2)."""
    cy0, cy1, cx0, cx1 = tile.core
    out = []
    for record in records:
        x, y, w, h = (float(v) for v in record["bbox"])
        cx, cy = tile.x0 + x + w / 2.0, tile.y0 + y + h / 2.0
        if cy0 <= cy < cy1 and cx0 <= cx < cx1:
            out.append(record)
    return out


@dataclass
class TileMasks:
    """The kept masks of one tile as read back from its table."""

    tile: Tile
    rles: list[dict[str, Any]]
    bboxes: npt.NDArray[np.float64]  # (N, 4) XYWH in tile pixels
    areas: npt.NDArray[np.int64]
    clusters: npt.NDArray[np.int64]
    features: npt.NDArray[np.float32] | None = None
    layer_area: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        if self.layer_area.shape != self.areas.shape:
            self.layer_area = self.areas.copy()


def _touching(masks: TileMasks, side: str) -> list[int]:
    """Masks whose bbox reaches the tile edge ``side`` (right, bottom, left or top)."""
    b = masks.bboxes
    if b.size == 0:
        return []
    t = masks.tile
    hit = {
        "right": b[:, 0] + b[:, 2] >= t.width - 0.5,
        "bottom": b[:, 1] + b[:, 3] >= t.height - 0.5,
        "left": b[:, 0] <= 0.5,
        "top": b[:, 1] <= 0.5,
    }[side]
    return [int(i) for i in np.flatnonzero(hit)]


def _strip(mask_rle: dict[str, Any], tile: Tile, box: tuple[int, int, int, int]) -> npt.NDArray[np.bool_]:
    y0, y1, x0, x1 = box
    dense = decode_rles([mask_rle])[0]
    return dense[y0 - tile.y0 : y1 - tile.y0, x0 - tile.x0 : x1 - tile.x0]


def _cut_sides(tile: Tile, other: Tile) -> list[str]:
    """Edges of ``tile`` beyond which ``other``'s window goes on (where ``tile`` cuts an object)."""
    sides = []
    if other.x1 > tile.x1:
        sides.append("right")
    if other.x0 < tile.x0:
        sides.append("left")
    if other.y1 > tile.y1:
        sides.append("bottom")
    if other.y0 < tile.y0:
        sides.append("top")
    return sides


def link_pair(a: TileMasks, b: TileMasks, *, min_iou: float = LINK_IOU) -> list[tuple[int, int]]:
    """Linked ``(mask of a, mask of b)`` pairs of two overlapping tiles, any relative position (rule 3)."""
    ta, tb = a.tile, b.tile
    box = (max(ta.y0, tb.y0), min(ta.y1, tb.y1), max(ta.x0, tb.x0), min(ta.x1, tb.x1))
    if box[1] <= box[0] or box[3] <= box[2]:
        return []
    ia = sorted({i for side in _cut_sides(ta, tb) for i in _touching(a, side)})
    ib = sorted({j for side in _cut_sides(tb, ta) for j in _touching(b, side)})
    if not ia or not ib:
        return []
    strips_a = {i: _strip(a.rles[i], ta, box) for i in ia}
    strips_b = {j: _strip(b.rles[j], tb, box) for j in ib}
    pairs = []
    for i, sa in strips_a.items():
        if not sa.any():
            continue
        for j, sb in strips_b.items():
            inter = int(np.logical_and(sa, sb).sum())
            if inter and inter / int(np.logical_or(sa, sb).sum()) >= min_iou:
                pairs.append((i, j))
    return pairs


def link_scene(
    tiles: Sequence[Tile],
    load: Callable[[Tile], TileMasks],
    predict: Callable[[npt.NDArray[np.float32]], npt.NDArray[Any]],
    *,
    min_iou: float = LINK_IOU,
) -> dict[tuple[str, int], tuple[int, int]]:
    """Linked groups of a scene's kept masks (rule 3): union-find over every overlapping tile pair.

    Args:
        tiles: the scene's tiles, row-major (:func:`alps.geo.raster.plan_tiles`).
        load: reads one tile's kept masks with ``features``; called once per tile, and only the
            tiles whose windows reach the current row are held (two tile rows).
        predict: ``(n, C)`` features -> ``(n,)`` cluster ids.

    Returns:
        ``{(tile key, mask index): (cluster, group area)}`` for every mask of a group of two or more.
    """
    parent: dict[tuple[str, int], tuple[str, int]] = {}
    info: dict[tuple[str, int], tuple[int, npt.NDArray[np.float32]]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    held: list[TileMasks] = []
    for tile in tiles:
        # rows are planned top to bottom: a window ending above this tile overlaps no later tile
        held = [m for m in held if m.tile.y1 > tile.y0]
        current = load(tile)
        # every earlier tile whose window overlaps this one: left, above, and both diagonals
        for other in held:
            t = other.tile
            if t.x1 <= tile.x0 or t.x0 >= tile.x1:
                continue
            for i, j in link_pair(other, current, min_iou=min_iou):
                a, b = (t.key, i), (tile.key, j)
                for node, masks, k in ((a, other, i), (b, current, j)):
                    info[node] = (int(masks.areas[k]), np.asarray(masks.features)[k])
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        held.append(current)
    groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for node in info:
        groups.setdefault(find(node), []).append(node)
    out: dict[tuple[str, int], tuple[int, int]] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        areas = np.array([info[m][0] for m in members], dtype=np.float64)
        feats = np.stack([info[m][1] for m in members])
        mean = (feats * (areas / areas.sum())[:, None]).sum(axis=0, keepdims=True).astype(np.float32)
        cluster = int(np.asarray(predict(mean))[0])
        for m in members:
            out[m] = (cluster, int(areas.sum()))
    return out


def apply_links(masks: TileMasks, links: dict[tuple[str, int], tuple[int, int]]) -> TileMasks:
    """Give the linked masks of one tile their group's cluster and painting area (in place)."""
    for i in range(len(masks.rles)):
        hit = links.get((masks.tile.key, i))
        if hit is not None:
            masks.clusters[i], masks.layer_area[i] = hit
    return masks


def paint_block(
    block: tuple[int, int, int, int], tiles: Iterable[TileMasks], dtype: npt.DTypeLike
) -> npt.NDArray[Any]:
    """Label values of scene pixels ``y0:y1, x0:x1`` from the kept masks of ``tiles`` (rule 4).

    Cluster ids are stored with :func:`alps.labeling.paint.cluster_to_label_value` (255 = unlabeled).
    """
    from alps.labeling.paint import cluster_to_label_value

    y0, y1, x0, x1 = block
    out = np.full((y1 - y0, x1 - x0), 255, dtype=dtype)
    layers = []
    for masks in tiles:
        t = masks.tile
        if t.y1 <= y0 or t.y0 >= y1 or t.x1 <= x0 or t.x0 >= x1:
            continue
        for i in range(len(masks.rles)):
            if masks.clusters[i] < 0:
                continue
            bx, by, bw, bh = masks.bboxes[i]
            gx0, gy0 = t.x0 + bx, t.y0 + by
            if gy0 + bh <= y0 or gy0 >= y1 or gx0 + bw <= x0 or gx0 >= x1:
                continue
            layers.append((-int(masks.layer_area[i]), t.row, t.col, i, masks))
    layers.sort(key=lambda item: item[:4])
    for _, _, _, i, masks in layers:
        t = masks.tile
        dense = decode_rles([masks.rles[i]])[0]
        sy0, sy1 = max(y0, t.y0), min(y1, t.y1)
        sx0, sx1 = max(x0, t.x0), min(x1, t.x1)
        piece = dense[sy0 - t.y0 : sy1 - t.y0, sx0 - t.x0 : sx1 - t.x0]
        value = int(cluster_to_label_value(masks.clusters[i]))
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0][piece] = value
    return out
