"""Volume datasets (imagesTr/ + labelsTr/) for training, and a tiny medical pre-train -> fine-tune ->
evaluate chain on real CT/MR crops with lesion masks (the pyradiomics cases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from alps.cli import main
from alps.medical.volume import Window, apply_window, read_label_volume, read_volume, slice_2d
from alps.train.data import detect_layout, load_segmentation_data, read_image, read_label
from tests.labeling.test_run import tiny_sam
from tests.labeling.test_volume_inputs import FAST, lesion_crop

from .test_run import TINY


@pytest.fixture
def volume_dataset(medical_cases: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """nnU-Net layout: train = brain1, brain2, lung1; test = lung2 (64 x 64 crops around the lesion)."""
    monkeypatch.setenv("ALPS_HOME", str(tmp_path / "cache"))  # the slice cache of this test only
    root = tmp_path / "lesions"
    for split, cases in (("Tr", ("brain1", "brain2", "lung1")), ("Ts", ("lung2",))):
        for case in cases:
            image = lesion_crop(medical_cases[case], root / f"images{split}" / f"{case}_0000.nii.gz", depth=8)
            mask: Any = nib.load(str(medical_cases[case].label))
            reference: Any = nib.load(str(image))
            # the same crop of the mask: find it from the image crop's affine
            offset = np.rint(np.linalg.solve(mask.affine, reference.affine)[:3, 3]).astype(int)
            sl = tuple(slice(o, o + s) for o, s in zip(offset, reference.shape, strict=True))
            (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
            nib.save(mask.slicer[sl], str(root / f"labels{split}" / f"{case}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    return root


def test_volume_layout_slices_like_alps_label(volume_dataset: Path) -> None:
    assert detect_layout(volume_dataset) == "volumes"
    data = load_segmentation_data(volume_dataset, val_fraction=0.34, split_seed=0)
    assert data.layout == "volumes" and data.num_classes == 2 and data.class_names == ["background", "lesion"]
    cases = {
        split: {s.id.rsplit("_z", 1)[0] for s in data.split(split)} for split in ("train", "val", "test")
    }
    assert len(cases["val"]) == 1 and not cases["val"] & cases["train"]  # held out by patient
    assert cases["train"] | cases["val"] == {"brain1", "brain2", "lung1"} and cases["test"] == {"lung2"}
    assert any("held out case" in n for n in data.notes)
    # a slice on disk is exactly the volume windowed and sliced the alps-label way
    sample = next(s for s in data.test if s.id == "lung2_z0003")
    volume = read_volume(volume_dataset / "imagesTs" / "lung2_0000.nii.gz")
    windowed = apply_window(volume.data, *Window().bounds(volume.data))
    assert np.array_equal(read_image(sample.image)[:, :, 0], slice_2d(windowed, 2, 3))
    labels = read_label_volume(volume_dataset / "labelsTs" / "lung2.nii.gz")
    assert np.array_equal(read_label(sample.label), slice_2d(labels, 2, 3))

    lesion = load_segmentation_data(volume_dataset, val_fraction=0, volume_slices="labelled")
    assert not lesion.val  # val_fraction 0: every case trains
    lesion_slices = {int(i) for i in np.flatnonzero(labels.any(axis=(0, 1)))}
    assert {int(s.id[-4:]) for s in lesion.test} == lesion_slices
    assert all(read_label(s.label).max() == 1 for s in lesion.train + lesion.test)
    with pytest.raises(ValueError, match="volume_slices"):
        load_segmentation_data(volume_dataset, volume_slices="everything")


def test_medical_pretrain_finetune_evaluate_chain(volume_dataset: Path, tmp_path: Path) -> None:
    """alps label (volumes) -> pretrain -> finetune on lesion slices -> evaluate on a held-out patient."""
    from alps.labeling.run import label

    pseudo = tmp_path / "pseudo"
    label([volume_dataset / "imagesTr", volume_dataset / "imagesTs"], pseudo, model=tiny_sam(), **FAST)
    assert len(list((pseudo / "labels").glob("*.nii.gz"))) == 4
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    steps = ["--max-steps", "2", "--val-every", "-1", "--checkpoint-every", "2"]
    assert main(["pretrain", str(pseudo), "--out", str(pre), *TINY, *steps]) == 0
    assert json.loads((pre / "dataset.json").read_text())["num_classes"] == 3
    finetune = ["finetune", str(volume_dataset), "--init", str(pre), "--out", str(ft), "--val-fraction", "0"]
    finetune += ["--volume-slices", "labelled", "--num-classes", "2", *TINY, *steps]
    assert main(finetune) == 0
    record = json.loads((ft / "dataset.json").read_text())
    assert record["layout"] == "volumes" and record["val_ids"] == []
    assert {i.rsplit("_z", 1)[0] for i in record["train_ids"]} == {"brain1", "brain2", "lung1"}
    scores_path = tmp_path / "scores.json"
    args = ["evaluate", str(ft), str(volume_dataset), "--split", "test", "--volume-slices", "labelled"]
    assert main([*args, "--json", str(scores_path), "--device", "cpu"]) == 0
    scores = json.loads(scores_path.read_text())
    assert len(scores["per_class_iou"]) == 2 and 0.0 <= scores["miou"] <= 1.0
