"""Dataset readers, subsets, normalisation and augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alps.train.data import (
    EvalDataset,
    TrainDataset,
    compute_norm_stats,
    load_segmentation_data,
    random_scale_crop_flip,
    read_class_map,
    read_label,
    subset_fraction,
)


def _write_pair(
    image_dir: Path, label_dir: Path, stem: str, label: np.ndarray, dtype: type = np.uint8
) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([label.astype(np.uint8) * 40] * 3, axis=-1)
    Image.fromarray(rgb).save(image_dir / f"{stem}.jpg")
    Image.fromarray(label.astype(dtype)).save(label_dir / f"{stem}.png")


def test_alps_layout_with_splits(pseudo_dataset: Path) -> None:
    data = load_segmentation_data(pseudo_dataset)
    assert data.layout == "alps"
    assert data.num_classes == 4 and data.ignore_index == 255
    assert len(data.train) == 8 and len(data.val) == 4
    assert all(s.id.startswith("SOAP_061") for s in data.val)  # split by image
    image, label, sample_id = EvalDataset(data.val, [0, 0, 0], [1, 1, 1])[0]
    assert image.shape == (3, 96, 96) and label.shape == (96, 96) and label.dtype == torch.int64
    assert sample_id == data.val[0].id


def test_alps_manifest_without_num_classes_infers_k(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for i in range(5):
        label = np.full((8, 8), 255, np.uint8)
        label[:4] = i % 3
        _write_pair(root / "images", root / "labels", f"img{i}", label)
    (root / "manifest.json").write_text(json.dumps({"ignore_index": 255}))
    data = load_segmentation_data(root, val_fraction=0.2)
    assert data.num_classes == 3
    assert any("inferred K=3" in n for n in data.notes)
    assert len(data.train) == 4 and len(data.val) == 1  # held out deterministically
    assert load_segmentation_data(root, val_fraction=0.2).val == data.val


def test_uint16_labels(tmp_path: Path) -> None:
    root = tmp_path / "big"
    label = np.full((8, 8), 300, np.uint16)
    label[0, 0] = 255
    for split in ("train", "val"):
        _write_pair(root / "images" / split, root / "labels" / split, "a", label, np.uint16)
    (root / "manifest.json").write_text(json.dumps({"num_classes": 301, "ignore_index": 255}))
    data = load_segmentation_data(root)
    assert data.num_classes == 301
    assert read_label(data.train[0].label).max() == 300


def test_mmseg_layout_and_class_map(tree_dataset: Path) -> None:
    data = load_segmentation_data(tree_dataset)
    assert data.layout == "mmseg"
    assert data.class_names == ["not_tree", "tree"] and data.num_classes == 2
    assert len(data.train) == 4 and len(data.val) == 4
    values = np.unique(np.concatenate([read_label(s.label).ravel() for s in data.train]))
    assert set(values.tolist()) == {0, 1}


def test_folders_layout_remaps_class_values(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    label = np.zeros((8, 8), np.uint8)
    label[:, 4:] = 100
    label[0] = 7  # not in the class map -> ignored
    _write_pair(root / "images", root / "masks", "a", label)
    _write_pair(root / "images", root / "masks", "b", label)
    (root / "classes.txt").write_text("# value name\n0 background\n100 building\n")
    data = load_segmentation_data(root, val_fraction=0.5)
    assert data.layout == "folders" and data.class_names == ["background", "building"]
    remapped = read_label(data.train[0].label, data.value_lut)
    assert set(np.unique(remapped).tolist()) == {0, 1, 255}
    assert (remapped[0] == 255).all()


def test_read_class_map_formats(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"0": "bg", "3": "tree"}))
    (tmp_path / "b.yaml").write_text("classes: [bg, tree]\n")
    (tmp_path / "c.txt").write_text("0: bg\n3, tree\n")
    assert read_class_map(tmp_path / "a.json") == {0: "bg", 3: "tree"}
    assert read_class_map(tmp_path / "b.yaml") == {0: "bg", 1: "tree"}
    assert read_class_map(tmp_path / "c.txt") == {0: "bg", 3: "tree"}


def test_unknown_layout_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no known dataset layout"):
        load_segmentation_data(tmp_path)


def test_subset_fraction_is_deterministic(pseudo_dataset: Path) -> None:
    train = load_segmentation_data(pseudo_dataset).train
    half = subset_fraction(train, 0.5, seed=0)
    assert len(half) == 4
    assert subset_fraction(list(reversed(train)), 0.5, seed=0) == [s for s in reversed(train) if s in half]
    assert len(subset_fraction(train, 0.01)) == 1
    assert subset_fraction(train, 1.0) == train
    with pytest.raises(ValueError):
        subset_fraction(train, 0.0)


def test_norm_stats_match_numpy(pseudo_dataset: Path, tmp_path: Path) -> None:
    data = load_segmentation_data(pseudo_dataset)
    paths = [s.image for s in data.train[:2]]
    mean, std = compute_norm_stats(paths)
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3) for p in paths])
    np.testing.assert_allclose(mean, pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(std, pixels.std(0), atol=1e-3)


def test_augmentation_pads_with_ignore_and_keeps_pairs_aligned() -> None:
    torch.manual_seed(0)
    image = np.zeros((20, 30, 3), np.uint8)
    label = np.zeros((20, 30), np.uint16)
    image[:, 15:] = 200
    label[:, 15:] = 1
    for _ in range(10):
        img, lab = random_scale_crop_flip(image, label, crop_size=32, scale_range=(0.5, 1.5), vflip=True)
        assert img.shape == (32, 32, 3) and lab.shape == (32, 32)
        assert (lab == 255).any()  # padded
        inside = lab != 255
        assert ((img[..., 0] > 100) == (lab == 1))[inside].mean() > 0.95  # bilinear edges aside


def test_train_dataset_repeats_small_sets(tree_dataset: Path) -> None:
    data = load_segmentation_data(tree_dataset)
    ds = TrainDataset(data.train, [0, 0, 0], [1, 1, 1], crop_size=64, min_length=10)
    assert len(ds) == 10
    image, label = ds[9]
    assert image.shape == (3, 64, 64) and label.shape == (64, 64) and label.dtype == torch.int64


def test_missing_labels_are_noted(tree_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(tree_dataset, root)
    next((root / "ann_dir" / "train").iterdir()).unlink()
    data = load_segmentation_data(root)
    assert len(data.train) == 3 and any("no label" in n for n in data.notes)
