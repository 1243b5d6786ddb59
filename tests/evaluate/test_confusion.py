"""The shared confusion core: histogram, per-class scores and the union-of-rows ceiling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from alps.evaluate.confusion import best_union_iou, bincount_2d, class_scores


def test_bincount_numpy_and_torch_agree_by_hand() -> None:
    rows = np.array([0, 0, 1, 2, 2, 2])
    cols = np.array([1, 1, 0, 0, 1, 1])
    expected = np.array([[0, 2], [1, 0], [1, 2]])
    np.testing.assert_array_equal(bincount_2d(rows, cols, 3, 2), expected)
    result = bincount_2d(torch.from_numpy(rows), torch.from_numpy(cols), 3, 2)
    assert isinstance(result, torch.Tensor) and result.dtype == torch.int64
    np.testing.assert_array_equal(result.numpy(), expected)


def test_bincount_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="column ids"):
        bincount_2d(np.array([0]), np.array([2]), 1, 2)
    with pytest.raises(ValueError, match="row ids"):
        bincount_2d(torch.tensor([3]), torch.tensor([0]), 3, 2)


def test_class_scores_by_hand() -> None:
    s = class_scores([1, 0, 0], [2, 0, 1], [3, 0, 0])
    np.testing.assert_allclose(s.iou[[0, 2]], [1 / 4, 0.0])
    np.testing.assert_allclose(s.f1[[0, 2]], [2 / 5, 0.0])
    assert np.isnan(s.iou[1]) and np.isnan(s.f1[1]) and np.isnan(s.recall[1]) and np.isnan(s.recall[2])
    assert s.recall[0] == pytest.approx(1 / 3)


def _brute_force(conf: np.ndarray, unl: np.ndarray) -> np.ndarray:
    best = np.zeros(conf.shape[1])
    for c in range(conf.shape[1]):
        g = conf[:, c].sum() + unl[c]
        for r in range(1, conf.shape[0] + 1):
            for subset in itertools.combinations(range(conf.shape[0]), r):
                tp = conf[list(subset), c].sum()
                p = conf[list(subset)].sum()
                best[c] = max(best[c], tp / (p + g - tp))
    return best


def test_best_union_iou_is_the_exact_optimum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        conf = rng.integers(0, 20, size=(7, 3)) * (rng.random((7, 3)) < 0.6)
        unl = rng.integers(0, 15, size=3)
        if (conf.sum(axis=0) + unl).min() == 0:
            continue
        np.testing.assert_allclose(best_union_iou(conf, unl), _brute_force(conf, unl))


def test_best_union_iou_edge_cases() -> None:
    conf = np.array([[5, 0, 0], [0, 0, 0]])
    out = best_union_iou(conf, [0, 3, 0])
    assert out[0] == 1.0 and out[1] == 0.0 and np.isnan(out[2])
