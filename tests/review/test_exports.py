"""Label Studio and CVAT exports of a real run, decoded with the tools' own converters."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from alps.review.exports import brush_rle, export_cvat, export_label_studio, uncompressed_rle
from tests.review.conftest import missing


def brush_decoder():  # type: ignore[no-untyped-def]
    """``label_studio_converter.brush.decode_rle`` (the `test` extra); missing: skip, or fail on CI."""
    try:
        from label_studio_converter.brush import decode_rle
    except ImportError:
        missing("label-studio-converter is not installed (pip install -e '.[test]')")
    return decode_rle


def table_masks(run: Path) -> dict[str, dict[int, np.ndarray]]:
    out: dict[str, dict[int, np.ndarray]] = {}
    for path in sorted((run / "tables").glob("*.parquet")):
        rows = pq.read_table(
            path, columns=["image_id", "mask_index", "rle_counts", "height", "width"]
        ).to_pylist()
        for r in rows:
            rle = {"size": [r["height"], r["width"]], "counts": r["rle_counts"]}
            out.setdefault(r["image_id"], {})[r["mask_index"]] = mask_utils.decode(rle).astype(bool)
    return out


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 300), (400, 400)])
@pytest.mark.parametrize("fill", ["empty", "full", "random", "block"])
def test_brush_rle_decodes_with_label_studio_converter(shape: tuple[int, int], fill: str) -> None:
    decode_rle = brush_decoder()
    rng = np.random.default_rng(sum(shape))
    mask = {"empty": np.zeros(shape, bool), "full": np.ones(shape, bool),
            "random": rng.random(shape) < 0.5, "block": np.zeros(shape, bool)}[fill]  # fmt: skip
    if fill == "block":
        mask[shape[0] // 3 :, shape[1] // 4 :] = True
    rgba = decode_rle(brush_rle(mask)).reshape(*shape, 4)
    assert set(np.unique(rgba)) <= {0, 255}
    for channel in range(4):
        np.testing.assert_array_equal(rgba[..., channel] == 255, mask)


def test_label_studio_round_trip_every_mask(labelled_run: Path, tmp_path: Path) -> None:
    decode_rle = brush_decoder()
    done = export_label_studio(labelled_run, tmp_path / "ls", url_prefix="http://host/data/")
    tasks = json.loads(done["tasks"].read_text())
    masks = table_masks(labelled_run)
    assert len(tasks) == 2 and done["masks"] == sum(len(v) for v in masks.values()) > 0
    seen = 0
    for task in tasks:
        image_id = task["data"]["alps_id"]
        assert task["data"]["image"] == f"http://host/data/images/train/{image_id}.png"
        (prediction,) = task["predictions"]
        assert 0 < prediction["score"] <= 1
        for result in prediction["result"]:
            assert result["type"] == "brushlabels" and result["value"]["format"] == "rle"
            assert result["value"]["brushlabels"][0].startswith("cluster_")
            assert 0 < result["score"] <= 1
            index = int(result["id"].rsplit("-", 1)[1])
            h, w = result["original_height"], result["original_width"]
            decoded = decode_rle(result["value"]["rle"]).reshape(h, w, 4)[..., 3] == 255
            np.testing.assert_array_equal(decoded, masks[image_id][index])  # pixel-exact
            seen += 1
    assert seen == done["masks"]
    config = done["config"].read_text()
    assert config.count("<Label ") == 8 and 'name="tag"' in config


def test_label_studio_and_cvat_with_a_mapping(labelled_run: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text('classes:\n  "tree crown": [0, 1, 2, 3]\n  soil: [4, 5]\nignore: [6]\n')
    ls = export_label_studio(labelled_run, tmp_path / "ls", mapping=mapping)
    labels = {r["value"]["brushlabels"][0] for t in json.loads(ls["tasks"].read_text())
              for r in t["predictions"][0]["result"]}  # fmt: skip
    assert labels <= {"tree crown", "soil"}
    cvat = export_cvat(labelled_run, tmp_path / "cvat", mapping=mapping)
    coco = json.loads(cvat["json"].read_text())
    assert [c["name"] for c in coco["categories"]] == ["tree crown", "soil"]
    with zipfile.ZipFile(cvat["zip"]) as archive:
        assert archive.namelist() == ["annotations/instances_default.json"]
    masks = table_masks(labelled_run)
    names = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
    decoded = [mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], *a["segmentation"]["size"]))
               for a in coco["annotations"]]  # fmt: skip
    flat = {name: [m for m in masks[name].values()] for name in masks}
    for ann, mask in zip(coco["annotations"], decoded, strict=True):
        assert ann["iscrowd"] == 1 and ann["area"] == int(mask.sum())
        assert any(np.array_equal(mask.astype(bool), m) for m in flat[names[ann["image_id"]]])
    assert 0 < len(coco["annotations"]) < sum(len(v) for v in masks.values())  # clusters 7 and 6 left out


def test_uncompressed_rle_matches_pycocotools() -> None:
    rng = np.random.default_rng(3)
    for first in (False, True):
        mask = rng.random((31, 17)) < 0.4
        mask[0, 0] = first
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        back = uncompressed_rle(rle)
        np.testing.assert_array_equal(mask_utils.decode(mask_utils.frPyObjects(back, 31, 17)), mask)
