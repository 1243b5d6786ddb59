"""The mask table: one Parquet file per image, the artifact between the mask, cluster and label stages.

Columns (one row per mask, ``mask_index`` = position in the generator output after filtering):

=================  ===========================  ==================================================
image_id           string                       same for every row of a file
mask_index         int32                        0..N-1
rle_counts         string                       COCO compressed RLE counts (pycocotools)
height, width      int32                        RLE size = image size in pixels
bbox               fixed_size_list<float32>[4]  XYWH in pixels
area               int64                        pixels
predicted_iou      float32
stability_score    float32
point_coords       list<float32>                prompt points flattened ``[x0, y0, x1, y1, ...]``
crop_box           fixed_size_list<int32>[4]    XYWH of the crop that produced the mask
feature            fixed_size_list<float32>[C]  pooled embedding (:mod:`alps.labeling.features`)
cluster            int32                        -1 until :func:`set_clusters`
=================  ===========================  ==================================================

The schema metadata holds ``alps.schema_version``, ``alps.image_id``, ``alps.image_size`` (``"H,W"``)
and ``alps.feature_dim``, so even an empty table says what it belongs to.
Files are written to a temporary sibling and moved into place with :func:`os.replace`, so a crashed
run never leaves a half-written table and a resumed run can trust every ``*.parquet`` it finds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from alps.core.files import atomic_path
from alps.core.rle import rle_of

__all__ = [
    "SCHEMA_VERSION",
    "iter_feature_batches",
    "mask_table_schema",
    "read_mask_table",
    "rebatch",
    "set_clusters",
    "table_feature_dim",
    "table_features",
    "table_image_id",
    "table_rles",
    "write_mask_table",
]

SCHEMA_VERSION = "1"
ROW_GROUP_SIZE = 4096


def mask_table_schema(
    feature_dim: int, image_id: str = "", image_size: tuple[int, int] = (0, 0)
) -> pa.Schema:
    """Arrow schema of a mask table with ``feature_dim``-dimensional features."""
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("mask_index", pa.int32(), nullable=False),
        pa.field("rle_counts", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("area", pa.int64(), nullable=False),
        pa.field("predicted_iou", pa.float32()),
        pa.field("stability_score", pa.float32()),
        pa.field("point_coords", pa.list_(pa.float32())),
        pa.field("crop_box", pa.list_(pa.int32(), 4)),
        pa.field("feature", pa.list_(pa.float32(), feature_dim), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
    ]
    metadata = {
        "alps.schema_version": SCHEMA_VERSION,
        "alps.image_id": image_id,
        "alps.image_size": f"{image_size[0]},{image_size[1]}",
        "alps.feature_dim": str(feature_dim),
    }
    return pa.schema(fields, metadata=metadata)


def _flat_points(value: Any) -> list[float]:
    if value is None:
        return []
    return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]


def write_mask_table(
    path: Path,
    image_id: str,
    records: list[dict[str, Any]],
    features: npt.NDArray[np.float32],
    image_size: tuple[int, int],
) -> None:
    """Write the masks of one image and their features as a Parquet table (atomically).

    Args:
        path: destination ``.parquet`` file (parent directories are created).
        image_id: identifier of the image, stored in every row and in the schema metadata.
        records: generator records; ``segmentation`` may be an ``(H, W)`` bool array or a COCO RLE.
            Missing optional keys get neutral values (NaN scores, no points, full-image crop box,
            area/bbox computed from the mask).
        features: ``(N, C)`` float32, row ``i`` belongs to ``records[i]``; ``(0, C)`` for no masks.
        image_size: ``(H, W)`` of the image in pixels; every mask must have this size.
    """
    feats = np.asarray(features)
    if feats.ndim != 2 or feats.shape[0] != len(records):
        raise ValueError(f"features must be (N={len(records)}, C), got shape {feats.shape}")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    n, dim = feats.shape
    height, width = (int(v) for v in image_size)
    rles = [rle_of(r) for r in records]
    for i, rle in enumerate(rles):
        if tuple(rle["size"]) != (height, width):
            raise ValueError(f"mask {i} has size {tuple(rle['size'])}, image_size is {(height, width)}")
    areas = [
        int(r["area"]) if "area" in r else int(mask_utils.area(rle))
        for r, rle in zip(records, rles, strict=True)
    ]
    bboxes = [
        [float(v) for v in (r["bbox"] if "bbox" in r else mask_utils.toBbox(rle))]
        for r, rle in zip(records, rles, strict=True)
    ]
    schema = mask_table_schema(dim, image_id, (height, width))
    columns: dict[str, Any] = {
        "image_id": pa.array([image_id] * n, pa.string()),
        "mask_index": pa.array(np.arange(n, dtype=np.int32)),
        "rle_counts": pa.array([rle["counts"] for rle in rles], pa.string()),
        "height": pa.array(np.full(n, height, dtype=np.int32)),
        "width": pa.array(np.full(n, width, dtype=np.int32)),
        "bbox": pa.array(bboxes, pa.list_(pa.float32(), 4)),
        "area": pa.array(np.asarray(areas, dtype=np.int64)),
        "predicted_iou": pa.array([float(r.get("predicted_iou", np.nan)) for r in records], pa.float32()),
        "stability_score": pa.array([float(r.get("stability_score", np.nan)) for r in records], pa.float32()),
        "point_coords": pa.array(
            [_flat_points(r.get("point_coords")) for r in records], pa.list_(pa.float32())
        ),
        "crop_box": pa.array(
            [[int(v) for v in r.get("crop_box", (0, 0, width, height))] for r in records],
            pa.list_(pa.int32(), 4),
        ),
        "feature": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), dim),
        "cluster": pa.array(np.full(n, -1, dtype=np.int32)),
    }
    table = pa.Table.from_pydict(columns, schema=schema)
    _write_atomic(table, Path(path))


def _write_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)


def read_mask_table(path: Path | str) -> pa.Table:
    """Read a whole mask table (one image; schema metadata included)."""
    table = pq.read_table(path)
    version = (table.schema.metadata or {}).get(b"alps.schema_version")
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise ValueError(f"{path}: mask table schema version {version.decode()}, expected {SCHEMA_VERSION}")
    return table


def _metadata(schema: pa.Schema, key: str) -> str | None:
    value = (schema.metadata or {}).get(key.encode())
    return None if value is None else value.decode()


def table_image_id(source: pa.Table | pa.Schema | Path | str) -> str:
    """Image id of a table (from the schema metadata, so it works for empty tables too)."""
    schema = _schema_of(source)
    image_id = _metadata(schema, "alps.image_id")
    if image_id is None:
        raise ValueError("mask table has no alps.image_id metadata")
    return image_id


def table_feature_dim(source: pa.Table | pa.Schema | Path | str) -> int:
    """Feature dimension ``C`` of a table (from its schema)."""
    feature_type = _schema_of(source).field("feature").type
    return int(feature_type.list_size)


def _schema_of(source: pa.Table | pa.Schema | Path | str) -> pa.Schema:
    if isinstance(source, pa.Table):
        return source.schema
    if isinstance(source, pa.Schema):
        return source
    return pq.read_schema(source)


def _feature_matrix(column: pa.Array | pa.ChunkedArray, dim: int) -> npt.NDArray[np.float32]:
    """``(n, dim)`` float32 copy of a fixed-size-list feature column."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim) for chunk in chunks]
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def table_features(table: pa.Table) -> npt.NDArray[np.float32]:
    """``(N, C)`` float32 features of a table, in ``mask_index`` order."""
    return _feature_matrix(table.column("feature"), table_feature_dim(table))


def iter_feature_batches(paths: Sequence[Path], batch_size: int) -> Iterator[npt.NDArray[np.float32]]:
    """Stream the features of many tables in fixed-size batches, in file then row order.

    Batches span file boundaries: every batch has ``batch_size`` rows except possibly the last.
    Only one Parquet record batch plus one output batch is held in memory at a time.

    Yields:
        ``(b, C)`` float32 arrays.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return rebatch(_feature_blocks(paths, batch_size), batch_size)


def _feature_blocks(paths: Sequence[Path], batch_size: int) -> Iterator[npt.NDArray[np.float32]]:
    """The tables' features as Parquet record batches, one dimension for all tables."""
    dim: int | None = None
    for path in paths:
        parquet = pq.ParquetFile(path)
        file_dim = table_feature_dim(parquet.schema_arrow)
        if dim is None:
            dim = file_dim
        elif file_dim != dim:
            raise ValueError(f"{path}: feature dimension {file_dim}, earlier tables have {dim}")
        for record_batch in parquet.iter_batches(batch_size=batch_size, columns=["feature"]):
            yield _feature_matrix(record_batch.column(0), dim)


def rebatch(blocks: Iterable[npt.NDArray[np.float32]], batch_size: int) -> Iterator[npt.NDArray[np.float32]]:
    """Concatenate blocks and cut them into ``batch_size``-row batches (the last may be shorter)."""
    pending: list[npt.NDArray[np.float32]] = []
    held = 0
    for block in blocks:
        while block.shape[0]:
            take = min(batch_size - held, block.shape[0])
            pending.append(block[:take])
            held += take
            block = block[take:]
            if held == batch_size:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, held = [], 0
    if held:
        yield np.concatenate(pending)


def table_rles(table: pa.Table) -> list[dict[str, Any]]:
    """COCO RLE dicts (``{"size": [H, W], "counts": str}``) of every row, for ``pycocotools.mask``."""
    counts = table.column("rle_counts").to_pylist()
    heights = table.column("height").to_pylist()
    widths = table.column("width").to_pylist()
    return [{"size": [int(h), int(w)], "counts": c} for c, h, w in zip(counts, heights, widths, strict=True)]


def set_clusters(path: Path | str, clusters: npt.ArrayLike) -> None:
    """Rewrite the ``cluster`` column of a table atomically (schema and metadata kept).

    Args:
        clusters: ``(N,)`` integer cluster per row, ``N`` = number of rows.
    """
    table = read_mask_table(path)
    values = np.asarray(clusters)
    if values.shape != (table.num_rows,):
        raise ValueError(f"{path}: {values.shape} clusters for a table of {table.num_rows} rows")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"clusters must be integers, got {values.dtype}")
    index = table.schema.get_field_index("cluster")
    column = pa.array(values.astype(np.int32), pa.int32())
    updated = table.set_column(index, table.schema.field(index), column)
    _write_atomic(updated.replace_schema_metadata(table.schema.metadata), Path(path))
