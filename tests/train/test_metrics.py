"""Metrics against confusion matrices computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from alps.train.metrics import ConfusionMatrixMetric, confusion_matrix, format_table, scores_from_confusion

# 8 pixels, K = 3, one ignored (255). (truth, prediction) pairs kept:
# (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,2)
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
PRED = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
HAND_CM = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 1]])


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, TARGET, num_classes=3, ignore_index=255)
    assert cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), HAND_CM)


def test_scores_by_hand() -> None:
    s = scores_from_confusion(HAND_CM, ["a", "b", "c"])
    # IoU = TP / (GT + P - TP): 1/3, 2/4, 1/3
    np.testing.assert_allclose(s.per_class_iou, [1 / 3, 1 / 2, 1 / 3])
    assert s.miou == pytest.approx(7 / 18)
    assert s.oa == pytest.approx(4 / 7)
    # F1 = 2 TP / (GT + P): 2/4, 4/6, 2/4
    np.testing.assert_allclose(s.per_class_f1, [1 / 2, 2 / 3, 1 / 2])
    assert s.mf1 == pytest.approx(5 / 9)
    np.testing.assert_allclose(s.per_class_acc, [1 / 2, 2 / 3, 1 / 2])
    assert s.num_pixels == 7


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = confusion_matrix(PRED, TARGET, num_classes=4)
    s = scores_from_confusion(cm)
    assert math.isnan(s.per_class_iou[3]) and math.isnan(s.per_class_f1[3])
    assert s.miou == pytest.approx(7 / 18)
    assert s.mf1 == pytest.approx(5 / 9)
    assert s.as_dict()["per_class_iou"][3] is None


def test_exclude_from_mean_keeps_oa() -> None:
    s = scores_from_confusion(HAND_CM, exclude_from_mean=[2])
    assert s.miou == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert s.mf1 == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s.oa == pytest.approx(4 / 7)


def test_dataset_level_not_mean_of_images() -> None:
    # image 1: perfect on class 0 (1 px); image 2: 3 px of class 0, one predicted as 1
    t1, p1 = torch.tensor([0]), torch.tensor([0])
    t2, p2 = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    metric = ConfusionMatrixMetric(num_classes=2)
    metric.update(p1, t1)
    metric.update(p2, t2)
    cm = metric.compute()
    np.testing.assert_array_equal(cm.numpy(), [[3, 1], [0, 1]])
    s = scores_from_confusion(cm)
    assert s.per_class_iou == pytest.approx([3 / 4, 1 / 2])
    per_image_mean = (1.0 + (2 / 3 + 1 / 2) / 2) / 2  # what averaging per image would give instead
    assert s.miou != pytest.approx(per_image_mean)


def test_out_of_range_truth_is_ignored_and_shapes_checked() -> None:
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([7, 1]), num_classes=2)
    np.testing.assert_array_equal(cm.numpy(), [[0, 0], [0, 1]])
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2), torch.zeros(3), num_classes=2)


def test_json_and_table() -> None:
    s = scores_from_confusion(HAND_CM, ["background", "tree", "road"])
    payload = json.loads(json.dumps(s.as_dict()))
    assert {"miou", "oa", "mf1", "per_class_iou"} <= set(payload)
    table = format_table(s)
    assert "tree" in table and "mIoU  38.89" in table
