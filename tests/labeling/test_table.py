from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycocotools import mask as mask_utils

from alps.core.rle import decode_rles, rle_of
from alps.labeling import table as table_module
from alps.labeling.table import (
    SCHEMA_VERSION,
    iter_feature_batches,
    read_mask_table,
    set_clusters,
    table_feature_dim,
    table_features,
    table_image_id,
    table_rles,
    write_mask_table,
)

H, W, C = 24, 32, 6


def make_records(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, H, W), dtype=bool)
    records = []
    for i in range(n):
        y, x = rng.integers(0, H - 4), rng.integers(0, W - 4)
        masks[i, y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = True
        masks[i] |= rng.random((H, W)) < 0.05  # ragged shapes exercise the RLE
        records.append(
            {
                "segmentation": masks[i],
                "area": int(masks[i].sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle_of({"segmentation": masks[i]}))],
                "predicted_iou": 0.9 - 0.01 * i,
                "stability_score": 0.95,
                "point_coords": [[float(x) + 0.5, float(y) + 0.5]],
                "crop_box": [0, 0, W, H],
            }
        )
    return records, masks


def features_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, C)).astype(np.float32)


def test_round_trip(tmp_path: Path) -> None:
    records, masks = make_records(5)
    features = features_for(5)
    path = tmp_path / "tables" / "img.parquet"
    write_mask_table(path, "img", records, features, (H, W))

    table = read_mask_table(path)
    assert table.num_rows == 5
    schema = table.schema
    assert schema.field("feature").type == pa.list_(pa.float32(), C)
    assert schema.field("bbox").type == pa.list_(pa.float32(), 4)
    assert schema.field("crop_box").type == pa.list_(pa.int32(), 4)
    assert schema.field("mask_index").type == pa.int32()
    assert schema.field("area").type == pa.int64()
    assert schema.metadata[b"alps.schema_version"] == SCHEMA_VERSION.encode()
    assert table_image_id(path) == "img" and table_feature_dim(path) == C

    np.testing.assert_array_equal(decode_rles(table_rles(table)), masks)
    stored = table_features(table)
    assert stored.dtype == np.float32 and stored.tobytes() == features.tobytes()
    assert table.column("cluster").to_pylist() == [-1] * 5
    assert table.column("mask_index").to_pylist() == list(range(5))
    assert table.column("area").to_pylist() == [r["area"] for r in records]
    assert table.column("point_coords").to_pylist()[0] == pytest.approx(records[0]["point_coords"][0])
    # an ordinary reader sees the same data
    assert pq.read_table(path, columns=["image_id"]).column(0).to_pylist() == ["img"] * 5


def test_rle_records_are_accepted(tmp_path: Path) -> None:
    records, masks = make_records(3, seed=1)
    coco = [{**r, "segmentation": rle_of(r)} for r in records]
    write_mask_table(tmp_path / "a.parquet", "a", coco, features_for(3), (H, W))
    decoded = decode_rles(table_rles(read_mask_table(tmp_path / "a.parquet")))
    np.testing.assert_array_equal(decoded, masks)


def test_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    write_mask_table(path, "empty", [], np.zeros((0, C), dtype=np.float32), (H, W))
    table = read_mask_table(path)
    assert table.num_rows == 0
    assert table_feature_dim(table) == C and table_image_id(table) == "empty"
    assert table_rles(table) == []
    assert table_features(table).shape == (0, C)
    assert list(iter_feature_batches([path], 4)) == []
    set_clusters(path, np.zeros(0, dtype=np.int32))
    assert read_mask_table(path).num_rows == 0


def test_feature_batches_span_files(tmp_path: Path) -> None:
    paths, expected = [], []
    for i, n in enumerate((5, 0, 3, 7)):
        records, _ = make_records(n, seed=i)
        features = features_for(n, seed=i)
        paths.append(tmp_path / f"{i}.parquet")
        write_mask_table(paths[-1], str(i), records, features, (H, W))
        expected.append(features)
    batches = list(iter_feature_batches(paths, 4))
    assert [b.shape[0] for b in batches] == [4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), np.concatenate(expected))


def test_set_clusters_rewrites_atomically(tmp_path: Path) -> None:
    records, _ = make_records(4)
    path = tmp_path / "img.parquet"
    write_mask_table(path, "img", records, features_for(4), (H, W))
    set_clusters(path, np.array([3, 1, 0, 45]))
    table = read_mask_table(path)
    assert table.column("cluster").to_pylist() == [3, 1, 0, 45]
    assert table.schema.field("cluster").type == pa.int32()
    assert table.schema.metadata[b"alps.image_id"] == b"img"
    assert table_features(table).tobytes() == features_for(4).tobytes()
    with pytest.raises(ValueError, match="clusters"):
        set_clusters(path, np.array([1, 2]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.parquet"]


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records, _ = make_records(2)
    path = tmp_path / "img.parquet"
    write_mask_table(path, "img", records, features_for(2), (H, W))
    before = path.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(table_module.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mask_table(path, "img", records, features_for(2, seed=5), (H, W))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.parquet"]


def test_rejects_inconsistent_input(tmp_path: Path) -> None:
    records, _ = make_records(2)
    with pytest.raises(ValueError, match="features"):
        write_mask_table(tmp_path / "x.parquet", "x", records, features_for(3), (H, W))
    with pytest.raises(ValueError, match="image_size"):
        write_mask_table(tmp_path / "x.parquet", "x", records, features_for(2), (H + 1, W))
    assert not (tmp_path / "x.parquet").exists()
