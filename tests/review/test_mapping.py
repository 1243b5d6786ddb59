"""Unit tests of the mapping format and of `alps map` on small synthetic datasets (no SAM)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alps.labeling.paint import cluster_to_label_value, label_value_to_cluster, load_label_png, save_label_png
from alps.review.mapping import (
    Mapping,
    MappingError,
    apply_mapping,
    load_mapping,
    parse_mapping,
    remap_label_map,
    value_lut,
)


def make_dataset(root: Path, k: int, maps: dict[str, np.ndarray]) -> Path:
    """A minimal `alps label`-shaped directory: label PNGs (cluster ids), images, COCO, manifest."""
    records = []
    for image_id, clusters in maps.items():
        h, w = clusters.shape
        stored = cluster_to_label_value(clusters).astype(np.uint16 if k > 255 else np.uint8)
        save_label_png(root / "labels" / "train" / f"{image_id}.png", stored)
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "images" / "train" / f"{image_id}.png")
        records.append({"id": image_id, "status": "ok", "split": "train", "height": h, "width": w,
                        "image": f"images/train/{image_id}.png", "label": f"labels/train/{image_id}.png",
                        "overlay": None, "table": f"tables/{image_id}.parquet"})  # fmt: skip
    coco = {"images": [{"id": 1, "file_name": "x.png", "height": 2, "width": 2}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": c + 1, "segmentation": {}, "area": 1,
                             "bbox": [0, 0, 1, 1], "iscrowd": 0} for i, c in enumerate(range(k))],
            "categories": [{"id": c + 1, "name": f"cluster_{c}"} for c in range(k)]}  # fmt: skip
    (root / "coco").mkdir(parents=True, exist_ok=True)
    (root / "coco" / "instances.json").write_text(json.dumps(coco))
    manifest = {
        "num_classes": k,
        "cluster_sizes": [1] * k,
        "class_pixels": [0] * k,
        "dataset": {"num_classes": k, "label_dtype": "uint16" if k > 255 else "uint8"},
        "images": records,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))  # fmt: skip
    return root


@pytest.fixture
def small(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    maps = {f"im{i}": rng.integers(-1, 6, size=(17, 23)) for i in range(3)}
    return make_dataset(tmp_path / "run", 6, maps)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("classes: {a: [0, 9]}", "unknown cluster 9 (clusters are 0..5)"),
        ("classes: {a: [0, 1], b: [1]}", "cluster 1 is in class 'a' and in class 'b'"),
        ("classes: {a: [0, 0]}", "cluster 0 is in class 'a' and in class 'a'"),
        ("classes: {a: [0]}\nignore: [0]", "cluster 0 is in class 'a' and in 'ignore'"),
        ("classes: {a: [-1]}", "cluster id -1 is negative"),
        ("classes: {a: [x]}", "'x' is not a cluster id"),
        ("classes: {a: [1.5]}", "1.5 is not a cluster id"),
        ("classes: {a: [true]}", "True is not a cluster id"),
        ("classes: {}", "'classes' must be a non-empty map"),
        ("classes: [a, b]", "'classes' must be a non-empty map"),
        ("ignore: [1]", "'classes' must be a non-empty map"),
        ("classes: {a: [0]}\ncolour: red", "unknown key(s) ['colour']"),
        ("classes: {a: [0]}\nignore: [water]", "ignore: 'water' is not a cluster id"),
        ("classes: {a: [0]}\nnum_clusters: 7", "the mapping is for 7 clusters, the dataset has 6"),
        ("classes:\n  a: [0]\n  a: [1]", "'a' is given twice"),
        ("classes: {'': [0]}", "class name '' must be a non-empty string"),
        ("classes: {a: {b: 1}}", "expected a list of cluster ids"),
        ("- 1\n- 2", "must be a YAML/JSON object"),
        ("classes: [unclosed", "is not valid YAML"),
    ],
)
def test_invalid_mappings_are_refused_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MappingError) as info:
        load_mapping(write(tmp_path / "m.yaml", text), num_clusters=6)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_json_mapping_and_duplicate_keys(tmp_path: Path) -> None:
    m = load_mapping(
        write(tmp_path / "m.json", '{"classes": {"a": [2, 0], "b": ["cluster_1"]}, "ignore": [3]}'), 6
    )
    assert m.class_names == ["a", "b"]
    assert m.cluster_to_class(6).tolist() == [0, 1, 0, -1, -1, -1]
    with pytest.raises(MappingError, match="given twice"):
        load_mapping(write(tmp_path / "d.json", '{"classes": {"a": [0], "a": [1]}}'), 6)


def test_yaml_round_trip_keeps_order_and_odd_names() -> None:
    m = parse_mapping({"classes": {"zebra: crossing": [3], "yes": [0, 1], 'q"uote': []}, "ignore": [2]}, 4)
    back = parse_mapping(__import__("yaml").safe_load(m.to_yaml("a comment")), 4)
    assert back == m
    assert back.class_names == ["zebra: crossing", "yes", 'q"uote']


def test_apply_equals_numpy_remap_and_keeps_originals(small: Path) -> None:
    before = {p: p.read_bytes() for p in (small / "labels").rglob("*.png")}
    mapping = parse_mapping({"classes": {"tree": [0, 4], "grass": [2], "road": [5]}, "ignore": [1]})
    result = apply_mapping(small, mapping)
    assert result.out == small / "mapped"
    c2c = np.array([0, -1, 1, -1, 0, 2])
    for src in (small / "labels").rglob("*.png"):
        clusters = label_value_to_cluster(load_label_png(src))
        expected = np.where(clusters >= 0, c2c[clusters.clip(0)], -1)
        got = load_label_png(small / "mapped" / src.relative_to(small))
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(label_value_to_cluster(got), expected)
    assert {p: p.read_bytes() for p in (small / "labels").rglob("*.png")} == before
    manifest = json.loads((small / "mapped" / "manifest.json").read_text())
    assert manifest["classes"] == ["tree", "grass", "road"] and manifest["num_classes"] == 3
    assert manifest["dataset"]["classes"] == ["tree", "grass", "road"]
    assert manifest["mapping"]["cluster_to_class"] == c2c.tolist()
    coco = json.loads((small / "mapped" / "coco" / "instances.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["tree", "grass", "road"]
    assert sorted(a["category_id"] for a in coco["annotations"]) == [1, 1, 2, 3]  # clusters 1, 3 dropped
    assert (small / "mapped" / "classes.txt").read_text() == "tree\ngrass\nroad\n"


def test_reapplying_is_idempotent_and_outputs_are_readable(small: Path, tmp_path: Path) -> None:
    mapping = parse_mapping({"classes": {"a": [0, 1, 2], "b": [3]}, "ignore": [4, 5]})
    apply_mapping(small, mapping)
    first = {p: p.read_bytes() for p in (small / "mapped").rglob("*") if p.is_file()}
    apply_mapping(small, mapping)
    second = {p: p.read_bytes() for p in (small / "mapped").rglob("*") if p.is_file()}
    assert first == second  # a second application is not a double remap
    mask = os.umask(0)
    os.umask(mask)
    for path in first:
        if "images" not in path.parts:
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    # a different mapping replaces the layer: nothing stale stays behind
    apply_mapping(small, parse_mapping({"classes": {"only": [0]}}))
    manifest = json.loads((small / "mapped" / "manifest.json").read_text())
    assert manifest["classes"] == ["only"]
    with pytest.raises(MappingError, match="already a mapped dataset"):
        apply_mapping(small / "mapped", mapping, tmp_path / "again")


def test_refuses_to_overwrite_inputs(small: Path, tmp_path: Path) -> None:
    mapping = parse_mapping({"classes": {"a": [0]}})
    with pytest.raises(MappingError, match="is the input directory"):
        apply_mapping(small, mapping, small)
    with pytest.raises(MappingError, match="inside labels/"):
        apply_mapping(small, mapping, small / "labels" / "x")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(MappingError, match="did not write"):
        apply_mapping(small, mapping, foreign)
    with pytest.raises(MappingError, match="unknown cluster 6"):
        apply_mapping(small, parse_mapping({"classes": {"a": [6]}}))
    assert not (small / "mapped").exists()


def test_uint16_clusters_above_255(tmp_path: Path) -> None:
    k = 300
    clusters = np.arange(-1, k).reshape(1, -1).repeat(2, axis=0)
    run = make_dataset(tmp_path / "wide", k, {"w": clusters})
    stored = load_label_png(run / "labels" / "train" / "w.png")
    assert stored.dtype == np.uint16 and stored.max() == 300  # cluster 299 is stored + 1
    classes = {"low": list(range(0, 255)), "c255": [255], "high": list(range(256, 299))}
    mapping = parse_mapping({"classes": classes, "ignore": [299]}, k)
    apply_mapping(run, mapping, tmp_path / "out")
    got = load_label_png(tmp_path / "out" / "labels" / "train" / "w.png")
    assert got.dtype == np.uint8  # three classes fit in uint8
    expected = np.where(clusters < 0, 255, np.where(clusters < 255, 0, np.where(clusters == 255, 1, 2)))
    expected[clusters == 299] = 255
    np.testing.assert_array_equal(got, expected)
    # more than 255 classes: uint16 with the same +1 rule as clusters
    many = parse_mapping({"classes": {f"k{c}": [c] for c in range(k)}}, k)
    apply_mapping(run, many, tmp_path / "out2")
    same = load_label_png(tmp_path / "out2" / "labels" / "train" / "w.png")
    assert same.dtype == np.uint16
    np.testing.assert_array_equal(same, stored)


def test_lut_refuses_values_beyond_k() -> None:
    lut = value_lut(np.array([0, 1, -1]), 2)
    np.testing.assert_array_equal(
        remap_label_map(np.array([0, 1, 2, 255], np.uint8), lut, 2), [0, 1, 255, 255]
    )
    with pytest.raises(MappingError, match="label value 3 is cluster 3"):
        remap_label_map(np.array([3], np.uint8), lut, 2)


def test_mapping_object_checks_k_late() -> None:
    m = Mapping((("a", (7,)),))
    with pytest.raises(MappingError, match="unknown cluster 7"):
        m.cluster_to_class(4)


def test_derive_hungarian_when_k_equals_c_and_majority_otherwise(tmp_path: Path) -> None:
    from alps.review.mapping import derive_mapping

    rng = np.random.default_rng(5)
    gt = rng.integers(0, 3, size=(20, 30))
    perm = np.array([2, 0, 1])  # cluster perm[c] covers GT class c
    clusters = perm[gt]
    clusters[0, :5] = -1  # a few unlabeled pixels
    run = make_dataset(tmp_path / "run", 3, {"a": clusters})
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt.astype(np.uint8)).save(tmp_path / "gt" / "a.png")  # paired by file name
    mapping, report = derive_mapping(run, tmp_path / "gt", class_names=["x", "y", "z"])
    assert report["method"] == "hungarian"
    assert [ids for _, ids in mapping.classes] == [(2,), (0,), (1,)]  # class c <- cluster perm[c]
    assert [r["iou_mapped"] for r in report["per_class"]] == pytest.approx(
        [((gt == c).sum() - (gt[0, :5] == c).sum()) / (gt == c).sum() for c in range(3)]
    )
    majority, report = derive_mapping(run, tmp_path / "gt", method="majority")
    assert report["method"] == "majority" and majority.class_names == ["class_0", "class_1", "class_2"]
    with pytest.raises(MappingError, match="2 class names for 3 ground-truth classes"):
        derive_mapping(run, tmp_path / "gt", class_names=["x", "y"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MappingError, match="no ground-truth PNG"):
        derive_mapping(run, tmp_path / "empty")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "gt" / "a.png")
    with pytest.raises(MappingError, match="not a single-channel label map"):
        derive_mapping(run, tmp_path / "gt")


def test_cli_refuses_a_bad_mapping_with_one_line(
    small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alps.cli import main

    bad = write(tmp_path / "bad.yaml", "classes: {a: [0, 1], b: [1]}\n")
    assert main(["map", str(small), "--mapping", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == "alps map: bad.yaml: cluster 1 is in class 'a' and in class 'b'\n"
    good = write(tmp_path / "good.yaml", "classes: {a: [0, 1], b: [2]}\n")
    assert main(["map", str(small), "--mapping", str(good)]) == 0
    assert "mapped 3 label maps to 2 classes" in capsys.readouterr().out
