from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alps.core.rle import rle_of
from alps.labeling.paint import (
    IGNORE_INDEX,
    cluster_to_label_value,
    colour_overlay,
    label_value_to_cluster,
    load_label_png,
    paint_label_map,
    paint_table,
    palette,
    save_label_png,
    save_overlay,
)
from alps.labeling.table import read_mask_table, set_clusters, write_mask_table

H, W = 10, 12


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


BIG = box(1, 9, 1, 11)
SMALL = box(3, 5, 4, 7)


@pytest.mark.parametrize("small_first", [True, False])
def test_small_mask_painted_on_top(small_first: bool) -> None:
    masks, clusters = ([SMALL, BIG], [3, 7]) if small_first else ([BIG, SMALL], [7, 3])
    label = paint_label_map(H, W, [rle_of({"segmentation": m}) for m in masks], np.array(clusters))
    assert label.dtype == np.uint8 and label.shape == (H, W)
    expected = np.full((H, W), IGNORE_INDEX, dtype=np.uint8)
    expected[BIG] = 7
    expected[SMALL] = 3
    np.testing.assert_array_equal(label, expected)


def test_areas_argument_sets_the_order() -> None:
    rles = [rle_of({"segmentation": m}) for m in (SMALL, BIG)]
    # claim the small mask is the larger one: it is painted first and then covered
    label = paint_label_map(H, W, rles, np.array([3, 7]), areas=np.array([1000, 1]))
    assert (label[SMALL] == 7).all()


def test_unassigned_masks_are_skipped_and_empty_input() -> None:
    rles = [rle_of({"segmentation": m}) for m in (SMALL, BIG)]
    label = paint_label_map(H, W, rles, np.array([-1, 7]))
    assert (label[BIG] == 7).all() and (label[~BIG] == IGNORE_INDEX).all()
    empty = paint_label_map(H, W, [], np.zeros(0, dtype=np.int64))
    assert empty.dtype == np.uint8 and (empty == IGNORE_INDEX).all()


def test_uint16_shift_keeps_255_for_unlabeled() -> None:
    rles = [rle_of({"segmentation": m}) for m in (BIG, SMALL, box(0, 1, 0, 2))]
    label = paint_label_map(H, W, rles, np.array([255, 300, 254]))
    assert label.dtype == np.uint16
    assert (label[SMALL] == 301).all()
    assert (label[BIG & ~SMALL] == 256).all()
    assert (label[0, 0:2] == 254).all()
    assert (label[9, :] == IGNORE_INDEX).all()
    clusters = label_value_to_cluster(label)
    assert (clusters[SMALL] == 300).all() and (clusters[BIG & ~SMALL] == 255).all() and clusters[9, 0] == -1
    # small ids keep their value; the dtype follows K when given
    wide = paint_label_map(H, W, rles[:1], np.array([5]), num_clusters=300)
    assert wide.dtype == np.uint16 and (wide[BIG] == 5).all()
    assert paint_label_map(H, W, rles[:1], np.array([5]), num_clusters=255).dtype == np.uint8


def test_value_helpers_are_inverse() -> None:
    clusters = np.array([-1, 0, 1, 254, 255, 256, 1000, 65534])
    values = cluster_to_label_value(clusters)
    np.testing.assert_array_equal(values, [255, 0, 1, 254, 256, 257, 1001, 65535])
    np.testing.assert_array_equal(label_value_to_cluster(values), clusters)
    with pytest.raises(ValueError):
        cluster_to_label_value([65535])


@pytest.mark.parametrize("clusters", [[3, 7], [3, 700]])
def test_png_round_trip(tmp_path: Path, clusters: list[int]) -> None:
    rles = [rle_of({"segmentation": m}) for m in (SMALL, BIG)]
    label = paint_label_map(H, W, rles, np.array(clusters))
    path = tmp_path / "sub" / "img.png"
    save_label_png(path, label)
    loaded = load_label_png(path)
    assert loaded.dtype == label.dtype
    np.testing.assert_array_equal(loaded, label)
    assert [p.name for p in path.parent.iterdir()] == ["img.png"]


def test_refuses_lossy_formats_and_reads_palette_png(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="png"):
        save_label_png(tmp_path / "img.jpg", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(TypeError):
        save_label_png(tmp_path / "img.png", np.zeros((2, 2), dtype=np.int32))
    indices = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9, 9, 9] * 253)
    image.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "voc.png"), indices)
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="single-channel"):
        load_label_png(tmp_path / "rgb.png")


def test_palette_is_deterministic_and_distinct() -> None:
    colours = palette(46)
    assert colours.shape == (46, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours, palette(46))
    np.testing.assert_array_equal(palette(10), colours[:10])
    assert len({tuple(c) for c in colours}) == 46
    dists = np.abs(colours[:, None].astype(int) - colours[None].astype(int)).sum(-1)
    assert dists[~np.eye(46, dtype=bool)].min() >= 20


def test_overlay_leaves_unlabeled_pixels_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    label = paint_label_map(H, W, [rle_of({"segmentation": BIG})], np.array([2]))
    overlay = colour_overlay(image, label, alpha=0.5)
    np.testing.assert_array_equal(overlay[~BIG], image[~BIG])
    expected = np.round(0.5 * image[BIG].astype(float) + 0.5 * palette(3)[2].astype(float))
    np.testing.assert_array_equal(overlay[BIG], expected.astype(np.uint8))
    for name in ("o.png", "o.jpg"):
        save_overlay(tmp_path / name, image, label)
        assert np.asarray(Image.open(tmp_path / name)).shape == (H, W, 3)
    with pytest.raises(ValueError):
        save_overlay(tmp_path / "o.gif", image, label)


def test_paint_table(tmp_path: Path) -> None:
    records = [{"segmentation": m, "area": int(m.sum())} for m in (SMALL, BIG)]
    path = tmp_path / "img.parquet"
    write_mask_table(path, "img", records, np.zeros((2, 4), dtype=np.float32), (H, W))
    set_clusters(path, np.array([3, 7]))
    label = paint_table(read_mask_table(path))
    assert (label[SMALL] == 3).all() and (label[BIG & ~SMALL] == 7).all() and label[0, 0] == IGNORE_INDEX


def test_paint_without_areas_handles_more_than_255_masks() -> None:
    """pycocotools' list ``area`` overflows past 255 masks with numpy 2; painting must not care."""
    height, width = 40, 300
    rles = []
    for i in range(300):  # one 1-px-wide column per mask, plus a wide mask under all of them
        mask = np.zeros((height, width), dtype=bool)
        mask[:, i] = True
        rles.append(rle_of({"segmentation": mask}))
    rles.append(rle_of({"segmentation": np.ones((height, width), dtype=bool)}))
    ids = np.r_[np.arange(300) % 7, 9]
    label = paint_label_map(height, width, rles, ids, num_clusters=10)
    # every column keeps its small mask's cluster (smaller masks are painted over larger ones)
    assert (label == (np.arange(300) % 7)[None, :]).all()
