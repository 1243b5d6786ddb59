"""`alps map --from-labels` on the deepforest tree boxes (tree / not-tree rasterised from the boxes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from alps.cli import main
from alps.labeling.paint import label_value_to_cluster, load_label_png
from alps.review.mapping import apply_mapping, load_mapping
from alps.samples.neon import rasterize_boxes


def tree_gt(dest: Path, boxes: dict[str, Any]) -> Path:
    """GT PNGs (0 = not tree, 1 = tree) of the run's tiles that have boxes, named by tile."""
    dest.mkdir(parents=True)
    for name in ("OSBS_029.png", "SOAP_061.png"):
        Image.fromarray(rasterize_boxes(boxes[name], (400, 400))).save(dest / name)
    return dest


def test_from_labels_maps_trees_better_than_any_single_cluster(
    labelled_run: Path, neon_assets: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt = tree_gt(tmp_path / "gt", neon_assets["boxes"])
    written = tmp_path / "mapping.yaml"
    report_json = tmp_path / "iou.json"
    code = main(["map", str(labelled_run), "--from-labels", str(gt), "--class-names", "not-tree,tree",
                 "--write", str(written), "--json", str(report_json)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "majority vote from 2 labelled image(s)" in out and "tree" in out and "mapped IoU" in out
    report = json.loads(report_json.read_text())
    tree = next(r for r in report["per_class"] if r["class"] == "tree")
    assert report["method"] == "majority" and report["num_images"] == 2
    assert tree["clusters"], "no cluster was voted tree"
    assert tree["iou_mapped"] >= tree["iou_best_cluster"] > 0.05
    assert tree["iou_mapped"] > 0.3  # trees are the dominant object of these tiles: a real, sensible mapping
    mapping = load_mapping(written, 8)  # written for review, valid as it stands
    assert mapping.class_names == ["not-tree", "tree"]
    assert list(mapping.classes[1][1]) == tree["clusters"]
    # the written mapping applies; its tree IoU on the two tiles is the one printed
    apply_mapping(labelled_run, written, tmp_path / "mapped")
    tp = union = 0
    for name in ("OSBS_029", "SOAP_061"):
        pred = label_value_to_cluster(
            load_label_png(tmp_path / "mapped" / "labels" / "train" / f"{name}.png")
        )
        truth = load_label_png(gt / f"{name}.png") == 1
        tp += int(((pred == 1) & truth).sum())
        union += int(((pred == 1) | truth).sum())
    assert tp / union == pytest.approx(tree["iou_mapped"], abs=1e-9)


def test_report_with_ground_truth_shows_composition_and_scores(
    labelled_run: Path, neon_assets: dict[str, Any], tmp_path: Path
) -> None:
    from alps.review.report import build_report

    gt = tree_gt(tmp_path / "gt", neon_assets["boxes"])
    result = build_report(labelled_run, tmp_path / "report", gt_dir=gt, class_names=["not-tree", "tree"])
    page = result.path.read_text()
    assert 'id="ground-truth"' in page and "mIoU Hungarian" in page
    assert page.count("purity") >= 8  # one per cluster section (+ the overview column)
    assert "ground truth: " in page and "tree" in page
