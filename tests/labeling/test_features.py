from __future__ import annotations

import numpy as np
import pytest
import torch

from alps.core.rle import decode_masks, rle_of
from alps.labeling.features import cell_weights, filter_masks, pool_mask_features
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
