"""``paint_block``: which kept mask wins a pixel, block edges, and label values past 255."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from alps.core.rle import rle_of
from alps.geo.raster import Tile
from alps.geo.tiles import TileMasks, paint_block

H, W = 40, 50


def _tile(row: int, col: int, y0: int, y1: int, x0: int, x1: int) -> Tile:
    return Tile(row=row, col=col, y0=y0, y1=y1, x0=x0, x1=x1, core=(y0, y1, x0, x1))


def _masks(
    tile: Tile,
    boxes: list[tuple[int, int, int, int]],
    clusters: list[int],
    layer_area: list[int] | None = None,
) -> TileMasks:
    """Rectangular masks given as scene-pixel boxes ``(y0, y1, x0, x1)`` inside ``tile``'s window."""
    rles, bboxes, areas = [], [], []
    for y0, y1, x0, x1 in boxes:
        dense = np.zeros((tile.height, tile.width), bool)
        dense[y0 - tile.y0 : y1 - tile.y0, x0 - tile.x0 : x1 - tile.x0] = True
        rles.append(rle_of({"segmentation": dense}))
        bboxes.append([x0 - tile.x0, y0 - tile.y0, x1 - x0, y1 - y0])
        areas.append(int(dense.sum()))
    return TileMasks(
        tile=tile,
        rles=rles,
        bboxes=np.array(bboxes, np.float64).reshape(-1, 4),
        areas=np.array(areas, np.int64),
        clusters=np.array(clusters, np.int64),
        layer_area=np.array(layer_area if layer_area is not None else areas, np.int64),
    )


def _scene() -> list[TileMasks]:
    left = _tile(0, 0, 0, H, 0, 30)
    right = _tile(0, 1, 0, H, 20, W)
    return [
        # big (600 px) under a medium (150 px) one; an unclustered mask (-1) never paints
        _masks(left, [(0, 30, 0, 20), (10, 25, 10, 20), (0, 5, 25, 30)], [1, 2, -1]),
        # a small (16 px) mask on top of both, inside the windows' overlap, and one of 120 px
        _masks(right, [(12, 16, 20, 24), (30, 40, 30, 42)], [3, 4]),
    ]


def _expected() -> npt.NDArray[np.uint8]:
    out = np.full((H, W), 255, np.uint8)
    out[0:30, 0:20] = 1  # largest first ...
    out[10:25, 10:20] = 2
    out[30:40, 30:42] = 4
    out[12:16, 20:24] = 3  # ... smallest last, on top
    return out


def test_largest_first_smaller_on_top_and_unlabeled_elsewhere() -> None:
    tiles = _scene()
    whole = paint_block((0, H, 0, W), tiles, np.uint8)
    assert whole.dtype == np.uint8 and whole.shape == (H, W)
    assert np.array_equal(whole, _expected())
    # the result depends on the masks, not on the order the tiles come in
    assert np.array_equal(paint_block((0, H, 0, W), tiles[::-1], np.uint8), whole)


def test_blocks_cut_masks_and_stitch_to_the_whole() -> None:
    tiles = _scene()
    expected = _expected()
    for step in (7, 13, 64):
        stitched = np.zeros((H, W), np.uint8)
        for y0 in range(0, H, step):
            for x0 in range(0, W, step):
                box = (y0, min(y0 + step, H), x0, min(x0 + step, W))
                piece = paint_block(box, tiles, np.uint8)
                assert piece.shape == (box[1] - box[0], box[3] - box[2])
                stitched[box[0] : box[1], box[2] : box[3]] = piece
        assert np.array_equal(stitched, expected), step
    # a block that no mask reaches is all unlabeled
    assert (paint_block((25, 30, 42, 50), tiles, np.uint8) == 255).all()


def test_layer_area_orders_merged_objects_and_ties_go_by_tile() -> None:
    left = _tile(0, 0, 0, 20, 0, 20)
    right = _tile(0, 1, 0, 20, 10, 30)
    # a 25-px piece of a merged 500-px object paints below a 100-px mask it overlaps
    tiles = [
        _masks(left, [(0, 10, 0, 10)], [5]),
        _masks(right, [(5, 10, 5 + 10, 20)], [6], layer_area=[500]),
    ]
    out = paint_block((0, 20, 0, 30), tiles, np.uint8)
    assert (out[5:10, 15:20] == 6).all() and out[0:10, 0:10].tolist() == np.full((10, 10), 5).tolist()
    # equal areas: the later tile (row, col) paints on top
    tiles = [_masks(left, [(0, 10, 10, 20)], [7]), _masks(right, [(0, 10, 10, 20)], [8])]
    assert (paint_block((0, 20, 0, 30), tiles[::-1], np.uint8)[0:10, 10:20] == 8).all()


def test_uint16_more_than_255_clusters() -> None:
    tile = _tile(0, 0, 0, 30, 0, 40)
    boxes = [(y, y + 1, x, x + 2) for y in range(30) for x in range(0, 40, 2)][:300]  # 300 disjoint masks
    clusters = list(range(300))
    out = paint_block((0, 30, 0, 40), [_masks(tile, boxes, clusters)], np.uint16)
    assert out.dtype == np.uint16
    stored = out.reshape(-1)[::2].astype(np.int64)  # one pixel of each 2-px mask, in mask order
    expected = np.array(clusters) + (np.array(clusters) >= 255)  # cluster c >= 255 is stored as c + 1
    assert np.array_equal(stored[:300], expected)
    assert 255 not in stored[:300] and stored.max() == 300
    assert (out.reshape(-1)[600:] == 255).all()  # the pixels past the 300 masks stay unlabeled
