from __future__ import annotations

import numpy as np
import pytest
import torch

from alps.core.rle import decode_masks, rle_of
from alps.labeling.features import (
    FEATURE_SOURCES,
    cell_weights,
    filter_masks,
    mask_features,
    mask_statistics,
    pool_mask_features,
)
from alps.sam.types import Geometry

# 40x80 image -> 32x64 input (ratio 0.8), padded to 64x64, 8x8 grid: one cell = 10x10 original pixels,
# cell rows 4..7 are pure padding.
GEOMETRY = Geometry(original_size=(40, 80), input_size=(32, 64), model_size=64, embed_size=8)


@pytest.fixture
def embedding() -> torch.Tensor:
    return torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))


def test_filter_masks_applies_area_gate() -> None:
    records = [{"area": a} for a in (10, 50, 31, 30, 0)]
    kept = filter_masks(records, image_area=100)
    assert [r["area"] for r in kept] == [10, 30, 0]
    assert [r["area"] for r in filter_masks(records, 100, min_area=20)] == [30]
    assert filter_masks(records, 100, max_area_fraction=1.0, min_area=1) == records[:4]


def test_cell_weights_exact_for_non_integer_scale() -> None:
    # 30x20 image -> 48x32 input (ratio 1.6) padded to 48x48, stride 8: pixels straddle cell borders
    geometry = Geometry((30, 20), (48, 32), 48, 6)
    masks = np.random.default_rng(1).random((3, 30, 20)) < 0.3
    # brute force: each pixel -> 16x16 sub-pixels of 0.1 input px, padded, averaged per 80x80 block
    fine = np.repeat(np.repeat(masks, 16, axis=1), 16, axis=2).astype(np.float64)
    padded = np.zeros((3, 480, 480))
    padded[:, :, :320] = fine
    expected = padded.reshape(3, 6, 80, 6, 80).mean(axis=(2, 4))
    np.testing.assert_allclose(cell_weights(masks, geometry), expected, atol=1e-12)


def test_whole_image_covers_only_unpadded_cells() -> None:
    weights = cell_weights(np.ones((1, 40, 80), dtype=bool), GEOMETRY)[0]
    np.testing.assert_allclose(weights[:4], 1.0)
    np.testing.assert_allclose(weights[4:], 0.0)


@pytest.mark.parametrize(
    ("rows", "cols", "cell"), [((10, 20), (20, 30), (1, 2)), ((30, 40), (70, 80), (3, 7))]
)
def test_mask_on_one_cell_recovers_cell_vector(
    embedding: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], cell: tuple[int, int]
) -> None:
    mask = np.zeros((1, 40, 80), dtype=bool)
    mask[0, rows[0] : rows[1], cols[0] : cols[1]] = True
    raw = pool_mask_features(embedding, mask, GEOMETRY, normalize=False)
    expected = embedding[:, cell[0], cell[1]].numpy()
    np.testing.assert_allclose(raw[0], expected, rtol=1e-6, atol=1e-6)
    unit = pool_mask_features(embedding, mask, GEOMETRY)
    np.testing.assert_allclose(unit[0], expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)


def test_one_pixel_mask_gets_bilinear_sample(embedding: torch.Tensor) -> None:
    mask = np.zeros((1, 40, 80), dtype=bool)
    mask[0, 13, 27] = True
    # pixel centre (13.5, 27.5) -> input (10.8, 22.0) -> grid coords (1.35, 2.75) - 0.5 = (0.85, 2.25)
    e = embedding.numpy()
    expected = (
        0.15 * 0.75 * e[:, 0, 2]
        + 0.15 * 0.25 * e[:, 0, 3]
        + 0.85 * 0.75 * e[:, 1, 2]
        + 0.85 * 0.25 * e[:, 1, 3]
    )
    feature = pool_mask_features(embedding, mask, GEOMETRY, normalize=False)[0]
    assert np.abs(feature).max() > 0
    np.testing.assert_allclose(feature, expected, rtol=1e-5, atol=1e-6)


def test_tiny_mask_at_image_edge_does_not_sample_padding(embedding: torch.Tensor) -> None:
    mask = np.zeros((1, 40, 80), dtype=bool)
    mask[0, 39, 5] = True  # grid coords (3.45, 0.05): row 3.45 would blend in padding row 4
    feature = pool_mask_features(embedding, mask, GEOMETRY, normalize=False)[0]
    e = embedding.numpy()
    np.testing.assert_allclose(feature, 0.95 * e[:, 3, 0] + 0.05 * e[:, 3, 1], rtol=1e-5, atol=1e-6)


def test_masks_over_different_regions_differ(embedding: torch.Tensor) -> None:
    masks = np.zeros((2, 40, 80), dtype=bool)
    masks[0, :20, :40] = True
    masks[1, 20:, 40:] = True
    features = pool_mask_features(embedding, masks, GEOMETRY)
    assert features.shape == (2, 16) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(features[0], features[1], atol=1e-3)


def test_rle_input_and_chunking_match_dense(embedding: torch.Tensor) -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((5, 40, 80), dtype=bool)
    for i in range(5):
        y, x = rng.integers(0, 30), rng.integers(0, 70)
        masks[i, y : y + rng.integers(1, 15), x : x + rng.integers(1, 15)] = True
    dense = pool_mask_features(embedding, masks, GEOMETRY)
    rles = [rle_of({"segmentation": m}) for m in masks]
    np.testing.assert_array_equal(decode_masks(rles), masks)
    from_rle = pool_mask_features(embedding, rles, GEOMETRY, chunk_pixels=2 * 40 * 80)
    np.testing.assert_allclose(from_rle, dense, rtol=1e-6, atol=1e-7)


def test_empty_mask_gets_image_mean_not_zero(embedding: torch.Tensor) -> None:
    with pytest.warns(RuntimeWarning, match="empty mask"):
        feature = pool_mask_features(embedding, np.zeros((1, 40, 80), dtype=bool), GEOMETRY, normalize=False)
    np.testing.assert_allclose(feature[0], embedding[:, :4, :].mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6)


def test_no_masks_and_shape_checks(embedding: torch.Tensor) -> None:
    assert pool_mask_features(embedding, np.zeros((0, 40, 80), dtype=bool), GEOMETRY).shape == (0, 16)
    with pytest.raises(ValueError, match="geometry"):
        pool_mask_features(embedding, np.zeros((1, 41, 80), dtype=bool), GEOMETRY)
    with pytest.raises(ValueError, match="embed_size"):
        pool_mask_features(torch.zeros(16, 4, 4), np.zeros((1, 40, 80), dtype=bool), GEOMETRY)


def test_decode_masks_accepts_generator_records() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:3, 2:6] = True
    records = [{"segmentation": mask}, {"segmentation": rle_of({"segmentation": mask})}]
    np.testing.assert_array_equal(decode_masks(records), np.stack([mask, mask]))
    assert decode_masks([], size=(6, 7)).shape == (0, 6, 7)


def test_mask_statistics_by_hand() -> None:
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 40:] = (255, 0, 0)  # right half red, left half black
    masks = np.zeros((3, 40, 80), dtype=bool)
    masks[0, 0:10, 0:10] = True  # black square
    masks[1, 0:10, 40:60] = True  # red rectangle, 2:1
    masks[2, 0:20, 40:60] = True  # red square, twice the area of mask 1
    stats = mask_statistics(image, masks)
    assert stats.shape == (3, 9) and stats.dtype == np.float32
    root3, root2 = np.sqrt(3), np.sqrt(2)
    np.testing.assert_allclose(stats[0, :3], np.array([-2.0, 0.0, 0.0]) / root3, atol=1e-3)  # L = 0
    np.testing.assert_allclose(stats[1, 0] * root3 * 25 + 50, 53.24, atol=0.05)  # L of pure red
    np.testing.assert_allclose(stats[:, 3:6], 0.0, atol=1e-5)  # uniform colour inside each mask
    assert stats[2, 6] - stats[1, 6] == pytest.approx(np.log(2) / 2)
    np.testing.assert_allclose(stats[:, 7], (1.0 - 0.6) / 0.2 / root2)  # rectangles fill their box
    np.testing.assert_allclose(stats[:, 8], np.array([0.0, np.log(2), 0.0]) / 0.5 / root2, atol=1e-6)
    # RLE input gives the same
    np.testing.assert_allclose(mask_statistics(image, [rle_of(m) for m in masks]), stats)


def test_sam_plus_stats_extends_sam_features(embedding: torch.Tensor) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(40, 80, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 80), dtype=bool)
    masks[0, :20, :30] = True
    masks[1, 20:, 30:] = True
    sam = mask_features("sam", None, embedding, GEOMETRY, masks)
    np.testing.assert_array_equal(sam, pool_mask_features(embedding, masks, GEOMETRY))
    both = mask_features("sam+stats", image, embedding, GEOMETRY, masks)
    assert both.shape == (2, 16 + 9)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, rtol=1e-5)
    # the SAM part keeps its direction
    cos = (both[:, :16] * sam).sum(axis=1) / np.linalg.norm(both[:, :16], axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the image"):
        mask_features("sam+stats", None, embedding, GEOMETRY, masks)
    with pytest.raises(ValueError, match="choose from"):
        mask_features("dino", image, embedding, GEOMETRY, masks)
    assert "cnn:efficientnet_lite0" in FEATURE_SOURCES


def test_cnn_features_separate_tree_crowns_from_ground() -> None:
    """ImageNet features pooled in real tree boxes are closer to each other than to the ground around."""
    from PIL import Image

    from alps.samples.encoders import fetch_efficientnet_lite0_weights
    from alps.samples.neon import sample_images, sample_tree_boxes
    from tests.conftest import require_asset

    require_asset("the EfficientNet-Lite0 weights", fetch_efficientnet_lite0_weights)
    path = require_asset("the NEON sample images", lambda: sample_images(names=["OSBS_029.png"])[0])
    boxes = sample_tree_boxes()["OSBS_029.png"]
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width = image.shape[:2]
    covered = np.zeros((height, width), dtype=bool)
    for b in boxes:
        covered[b.ymin : b.ymax, b.xmin : b.xmax] = True
    trees = np.zeros((12, height, width), dtype=bool)
    for i, b in enumerate(sorted(boxes, key=lambda b: -(b.xmax - b.xmin) * (b.ymax - b.ymin))[:12]):
        trees[i, b.ymin : b.ymax, b.xmin : b.xmax] = True
    ground = []
    for y in range(0, height - 24, 24):  # 24-px squares with no box pixel
        for x in range(0, width - 24, 24):
            if not covered[y : y + 24, x : x + 24].any():
                m = np.zeros((height, width), dtype=bool)
                m[y : y + 24, x : x + 24] = True
                ground.append(m)
    assert len(ground) >= 4
    feats = mask_features(
        "cnn:efficientnet_lite0", image, None, None, np.concatenate([trees, np.stack(ground)])
    )
    assert feats.shape == (12 + len(ground), 152) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    t, g = feats[:12], feats[12:]
    within = (t @ t.T)[np.triu_indices(12, 1)].mean()
    across = (t @ g.T).mean()
    assert within > across + 0.05
