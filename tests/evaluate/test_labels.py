from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alps.evaluate.labels import (
    accumulate_confusion,
    evaluate_label_dirs,
    format_report,
    metrics_from_confusion,
)
from alps.labeling.paint import save_label_png

U8 = np.uint8


def test_accumulate_confusion_by_hand() -> None:
    pred = np.array([[0, 0, 1, 255], [2, 1, 1, 255]], dtype=U8)
    gt = np.array([[0, 1, 1, 0], [255, 1, 0, 1]], dtype=U8)
    unlabeled = np.zeros(2, dtype=np.int64)
    confusion = accumulate_confusion(pred, gt, 3, 2, unlabeled=unlabeled)
    np.testing.assert_array_equal(confusion, [[1, 1], [1, 2], [0, 0]])  # (1, 0) is ignored in GT
    np.testing.assert_array_equal(unlabeled, [1, 1])
    # accumulating a second image adds in place
    again = accumulate_confusion(pred, gt, 3, 2, confusion=confusion, unlabeled=unlabeled)
    assert again is confusion
    np.testing.assert_array_equal(confusion, [[2, 2], [2, 4], [0, 0]])
    np.testing.assert_array_equal(unlabeled, [2, 2])


def test_accumulate_confusion_rejects_bad_ids() -> None:
    gt = np.zeros((2, 2), dtype=U8)
    with pytest.raises(ValueError, match="num_pred"):
        accumulate_confusion(np.full((2, 2), 3, U8), gt, 3, 2)
    with pytest.raises(ValueError, match="ground-truth"):
        accumulate_confusion(np.zeros((2, 2), U8), np.full((2, 2), 2, U8), 3, 2)
    with pytest.raises(ValueError, match="shape"):
        accumulate_confusion(np.zeros((2, 3), U8), gt, 3, 2)


def test_shifted_uint16_predictions() -> None:
    pred = np.array([[0, 256, 301, 255]], dtype=np.uint16)  # clusters 0, 255, 300, unlabeled
    gt = np.array([[1, 0, 1, 0]], dtype=U8)
    unlabeled = np.zeros(2, dtype=np.int64)
    confusion = accumulate_confusion(pred, gt, 301, 2, unlabeled=unlabeled)
    assert confusion[0, 1] == 1 and confusion[255, 0] == 1 and confusion[300, 1] == 1
    assert confusion.sum() == 3 and unlabeled.tolist() == [1, 0]


def test_hungarian_versus_majority_with_more_clusters_than_classes() -> None:
    # GT totals: class 0 = 5 + 3 + 1 unlabeled = 9, class 1 = 1 + 4 = 5
    metrics = metrics_from_confusion(np.array([[5, 1], [0, 4], [3, 0]]), np.array([1, 0]))
    # majority: clusters 0, 2 -> class 0 (pred 9, TP 8), cluster 1 -> class 1 (pred 4, TP 4)
    assert metrics["per_class_iou"] == {0: pytest.approx(8 / 10), 1: pytest.approx(4 / 5)}
    assert metrics["miou_majority"] == pytest.approx(0.8)
    # Hungarian: 0 -> 0, 1 -> 1; cluster 2 is unmatched and counts as wrong: IoU0 = 5 / (6 + 9 - 5)
    assert metrics["hungarian_matching"] == {0: 0, 1: 1}
    assert metrics["per_class_iou_hungarian"] == {0: pytest.approx(0.5), 1: pytest.approx(0.8)}
    assert metrics["miou_hungarian"] == pytest.approx(0.65)
    assert metrics["pixel_accuracy"] == pytest.approx(12 / 13)
    assert metrics["pixel_accuracy_all"] == pytest.approx(12 / 14)
    assert metrics["coverage"] == pytest.approx(13 / 14)
    json.dumps(metrics)  # strict-JSON friendly


def test_fewer_clusters_than_classes() -> None:
    metrics = metrics_from_confusion(np.array([[3, 2]]))
    # class 1 is never matched: IoU 0; class 0: 3 / (5 + 3 - 3)
    assert metrics["miou_hungarian"] == pytest.approx((0.6 + 0.0) / 2)
    assert metrics["miou_majority"] == pytest.approx(0.3)
    assert metrics["coverage"] == 1.0


def test_permuted_clusters_score_perfectly() -> None:
    gt = np.repeat(np.arange(3), 4).reshape(3, 4).astype(U8)
    confusion = accumulate_confusion((gt + 1) % 3, gt, 3, 3)
    metrics = metrics_from_confusion(confusion)
    assert metrics["miou_hungarian"] == 1.0 and metrics["miou_majority"] == 1.0
    assert metrics["hungarian_matching"] == {0: 2, 1: 0, 2: 1}


def test_absent_class_is_left_out_of_the_mean() -> None:
    metrics = metrics_from_confusion(np.array([[4, 0, 0], [0, 4, 0]]))
    assert metrics["per_class_iou"][2] is None
    assert metrics["miou_majority"] == 1.0


def write_pair(pred_dir: Path, gt_dir: Path, name: str, pred: np.ndarray, gt: np.ndarray) -> None:
    save_label_png(pred_dir / f"{name}.png", pred)
    save_label_png(gt_dir / f"{name}.png", gt)


def test_evaluate_dirs_is_dataset_level(tmp_path: Path) -> None:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    write_pair(pred_dir, gt_dir, "a", np.zeros((2, 2), U8), np.zeros((2, 2), U8))
    write_pair(
        pred_dir,
        gt_dir,
        "sub/b",
        np.array([[0, 1, 1, 1], [1, 1, 255, 255]], U8),
        np.array([[1, 1, 1, 1], [1, 1, 0, 0]], U8),
    )
    save_label_png(pred_dir / "extra.png", np.zeros((2, 2), U8))
    save_label_png(gt_dir / "only_gt.png", np.zeros((2, 2), U8))

    metrics = evaluate_label_dirs(pred_dir, gt_dir)
    # summed confusion [[4, 1], [0, 5]], unlabeled [2, 0]
    assert metrics["confusion"] == [[4, 1], [0, 5]] and metrics["unlabeled"] == [2, 0]
    expected_miou = (4 / 7 + 5 / 6) / 2  # per-image averaging would give (1.0 + 0.5) / 2
    assert metrics["miou_majority"] == pytest.approx(expected_miou)
    assert metrics["miou_hungarian"] == pytest.approx(expected_miou)
    assert metrics["pixel_accuracy"] == pytest.approx(9 / 10)
    assert metrics["coverage"] == pytest.approx(10 / 12)
    assert metrics["num_images"] == 2
    assert metrics["missing"] == {"pred_only": ["extra"], "gt_only": ["only_gt"]}

    report = format_report(metrics)
    assert "2 images" in report and f"{100 * expected_miou:6.2f}" in report and "83.33" in report
    json.loads(json.dumps(metrics))


def test_evaluate_dirs_errors(tmp_path: Path) -> None:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    with pytest.raises(ValueError, match="no label files"):
        evaluate_label_dirs(pred_dir, gt_dir)
    write_pair(pred_dir, gt_dir, "a", np.zeros((2, 2), U8), np.zeros((2, 3), U8))
    with pytest.raises(ValueError, match="differ in size"):
        evaluate_label_dirs(pred_dir, gt_dir)
    write_pair(pred_dir, gt_dir, "a", np.zeros((2, 2), U8), np.full((2, 2), 4, U8))
    with pytest.raises(ValueError, match="num_gt_classes"):
        evaluate_label_dirs(pred_dir, gt_dir, num_gt_classes=3)
    assert evaluate_label_dirs(pred_dir, gt_dir, num_gt_classes=5)["num_classes"] == 5


def test_diagnosis_by_hand(tmp_path: Path) -> None:
    """Mask ceiling, cluster ceiling and uncovered share from real mask tables and label PNGs."""
    from alps.evaluate.labels import diagnose, format_diagnosis, mask_confusion
    from alps.labeling.paint import paint_table
    from alps.labeling.table import read_mask_table, set_clusters, write_mask_table

    gt = np.zeros((4, 6), U8)
    gt[:, :3] = 1  # class 1 on the left, class 0 on the right
    masks = np.zeros((2, 4, 6), dtype=bool)
    masks[0, :, 0:2] = True  # pure class 1, 8 px
    masks[1, :, 2:5] = True  # 4 px of class 1, 8 px of class 0; column 5 is uncovered
    records = [{"segmentation": m, "area": int(m.sum()), "bbox": [0, 0, 0, 0]} for m in masks]
    tables = tmp_path / "tables"
    write_mask_table(tables / "a.parquet", "a", records, np.zeros((2, 3), np.float32), (4, 6))
    set_clusters(tables / "a.parquet", [0, 0])  # one cluster for both masks
    painted = paint_table(read_mask_table(tables / "a.parquet"))
    write_pair(tmp_path / "labels", tmp_path / "gt", "a", painted, gt)

    conf, unl = mask_confusion(tables / "a.parquet", gt, 2)
    np.testing.assert_array_equal(conf, [[0, 8], [8, 4]])
    np.testing.assert_array_equal(unl, [4, 0])
    metrics = evaluate_label_dirs(tmp_path / "labels", tmp_path / "gt", num_gt_classes=2, tables_dir=tables)
    diag = metrics["diagnosis"]
    assert diag == diagnose(metrics["confusion"], metrics["unlabeled"], conf, unl)
    c0, c1 = diag["per_class"][0], diag["per_class"][1]
    assert c1["mask_ceiling"] == pytest.approx(8 / 12)  # mask 0 alone
    assert c1["cluster_ceiling"] == pytest.approx(12 / 20)  # the one cluster
    assert c0["mask_ceiling"] == pytest.approx(8 / 16)  # mask 1 alone
    assert c0["cluster_ceiling"] == pytest.approx(8 / 24)
    assert c0["not_covered"] == pytest.approx(4 / 12) and c1["not_covered"] == 0.0
    assert c1["iou_majority"] == pytest.approx(12 / 20) and c0["iou_majority"] == 0.0  # = the ceiling here
    assert diag["coverage"] == pytest.approx(20 / 24) and diag["num_masks"] == 2
    table = format_diagnosis(diag, class_names=["ground", "tree"])
    assert "mask ceil." in table and "66.67" in table and "33.33" in table
    json.loads(json.dumps(metrics))
    with pytest.raises(ValueError, match="no mask table"):
        evaluate_label_dirs(tmp_path / "labels", tmp_path / "gt", tables_dir=tmp_path / "nowhere")


def test_cli_prints_the_diagnosis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alps.cli import main as cli_main
    from alps.labeling.paint import paint_table
    from alps.labeling.table import read_mask_table, set_clusters, write_mask_table

    gt = np.zeros((4, 6), U8)
    gt[:, :3] = 1
    mask = np.zeros((4, 6), dtype=bool)
    mask[:, :2] = True
    tables = tmp_path / "tables"
    write_mask_table(tables / "a.parquet", "a", [{"segmentation": mask, "area": 8, "bbox": [0, 0, 0, 0]}],
                     np.zeros((1, 3), np.float32), (4, 6))  # fmt: skip
    set_clusters(tables / "a.parquet", [0])
    write_pair(
        tmp_path / "labels", tmp_path / "gt", "a", paint_table(read_mask_table(tables / "a.parquet")), gt
    )
    args = ["evaluate-labels", str(tmp_path / "labels"), str(tmp_path / "gt"), "--num-classes", "2"]
    assert cli_main([*args, "--tables", str(tables), "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "mask ceil." in printed and "66.67" in printed  # tree: 8 of 12 px, no false positives
    assert json.loads((tmp_path / "m.json").read_text())["diagnosis"]["num_masks"] == 1
    assert cli_main([*args, "--tables", str(tmp_path / "nowhere")]) == 2
    assert cli_main(args) == 0 and "mask ceil." not in capsys.readouterr().out
