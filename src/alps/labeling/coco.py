"""COCO instances JSON of a labelled dataset of plain images: one category per cluster, one
annotation (compressed RLE) per clustered mask."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from alps.core.files import atomic_path

__all__ = ["write_coco_instances"]


def write_coco_instances(
    path: Path,
    images: Sequence[dict[str, Any]],
    tables: Sequence[Path],
    clusters: dict[str, npt.NDArray[np.int32]],
    k: int,
) -> int:
    """COCO instances JSON for plain images; returns the number of annotations.

    Args:
        images: ``{"id": image id, "file_name": path relative to the dataset, "height", "width"}``,
            in the order COCO image ids (1, 2, ...) are given.
        tables: the mask tables of those images (same order).
        clusters: cluster per mask by image id (as from :func:`alps.labeling.cluster.assign_clusters`).
        k: number of clusters (categories ``1..k`` stand for clusters ``0..k-1``).
    """
    from alps.labeling.table import read_mask_table, table_rles

    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, (image, table_path) in enumerate(zip(images, tables, strict=True), start=1):
        coco_images.append(
            {
                "id": number,
                "file_name": image["file_name"],
                "height": image["height"],
                "width": image["width"],
            }
        )
        table = read_mask_table(table_path)
        areas = table.column("area").to_pylist()
        bboxes = table.column("bbox").to_pylist()
        ids = clusters.get(image["id"], np.zeros(0, np.int32))
        for rle, area, bbox, cluster in zip(table_rles(table), areas, bboxes, ids, strict=True):
            if cluster < 0:
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": int(cluster) + 1,
                    "segmentation": rle,
                    "area": int(area),
                    "bbox": [float(v) for v in bbox],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": f"cluster_{c}", "supercategory": "pseudo"} for c in range(k)]
    data = {
        "info": {"description": "alps-seg pseudo-labels (category = k-means cluster of SAM masks)"},
        "images": coco_images,
        "annotations": annotations,
        "categories": categories,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    return len(annotations)
