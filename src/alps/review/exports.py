"""Exports of the pseudo-labels for human correction in labelling tools: Label Studio and CVAT.

* **Label Studio** (:func:`export_label_studio`): ``tasks.json``, one task per image with one
  prediction holding every mask as a ``brushlabels`` result in Label Studio's brush RLE
  (the ``rle-pack`` bit stream of an RGBA image, as ``label_studio_converter.brush.mask2rle``
  writes it), the cluster or class name as its label and the mask's ``predicted_iou`` as its score;
  plus ``label_config.xml`` (a ``BrushLabels`` config with every label and its overlay colour).
* **CVAT** (:func:`export_cvat`): COCO 1.0 instances with uncompressed RLE masks (``iscrowd`` 1,
  which CVAT imports as editable masks, the form CVAT's own COCO export uses), as
  ``annotations/instances_default.json`` and the ``cvat_coco.zip`` CVAT's "Upload annotations"
  takes for a task made from the same images.

Labels are ``cluster_<id>`` or, with a mapping, the class names (masks of ignored clusters left out).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from alps.core.files import atomic_path, write_json, write_text
from alps.labeling.paint import palette
from alps.review.mapping import Mapping, MappingError, load_mapping, read_manifest

__all__ = ["brush_rle", "export_cvat", "export_label_studio", "uncompressed_rle"]

FORMATS = ("label-studio", "cvat")
RLE_SIZES = (3, 4, 8, 16)  # bit widths of the run-length classes (Label Studio's defaults)
_COLUMNS = ["mask_index", "rle_counts", "height", "width", "bbox", "area", "predicted_iou", "cluster"]


def brush_rle(mask: npt.ArrayLike) -> list[int]:
    """Label Studio brush RLE of a binary mask.

    Args:
        mask: ``(H, W)`` bool/0-1 mask.

    Returns:
        The encoded bytes as a list of ints: the ``rle-pack`` stream (32-bit value count, 5-bit word
        size - 1, four 4-bit run-size classes - 1, then chunks) of the ``H*W*4`` RGBA values, 255
        inside the mask and 0 outside, row-major. Only repeat chunks are written (flag 1, 2-bit size
        class, run length - 1, one 8-bit value), which every decoder reads.
    """
    flat = np.repeat(np.asarray(mask, dtype=bool).reshape(-1), 4)
    num = int(flat.size)
    if num:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [num]]))
        values = flat[starts]
    else:
        lengths, values = np.zeros(0, np.int64), np.zeros(0, bool)
    limit = 1 << RLE_SIZES[-1]
    pieces = -(-lengths // limit)  # runs longer than 2**16 are split
    run_values = np.repeat(values, pieces)
    run_lengths = np.full(int(pieces.sum()), limit, dtype=np.int64)
    ends = np.cumsum(pieces) - 1
    run_lengths[ends] = lengths - (pieces - 1) * limit
    n = run_lengths - 1
    size_class = np.searchsorted(np.array([1 << s for s in RLE_SIZES]), n, side="right")
    n_bits = np.array(RLE_SIZES)[size_class]
    field_values = np.stack([np.ones_like(n), size_class, n, np.where(run_values, 255, 0)], axis=1)
    field_widths = np.stack([np.ones_like(n), np.full_like(n, 2), n_bits, np.full_like(n, 8)], axis=1)
    header_values = np.array([num, 7, *(s - 1 for s in RLE_SIZES)], dtype=np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    all_values = np.concatenate([header_values, field_values.reshape(-1)])
    all_widths = np.concatenate([header_widths, field_widths.reshape(-1)])
    return _pack_bits(all_values, all_widths)


def _pack_bits(values: npt.NDArray[np.int64], widths: npt.NDArray[np.int64]) -> list[int]:
    """Concatenate each value's ``width`` low bits, most significant first, into bytes (zero padded)."""
    total = int(widths.sum())
    owner = np.repeat(np.arange(values.size), widths)
    offset = np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)
    shift = widths[owner] - 1 - offset
    bits = ((values[owner] >> shift) & 1).astype(np.uint8)
    return [int(b) for b in np.packbits(bits)]


def uncompressed_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """COCO uncompressed RLE (``counts`` a list of ints, column-major, starting with a 0-run)."""
    mask = mask_utils.decode(rle).reshape(-1, order="F").astype(bool)
    change = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    bounds = np.concatenate([[0], change, [mask.size]])
    counts = np.diff(bounds).tolist()
    if mask.size and mask[0]:
        counts = [0, *counts]
    return {"size": [int(v) for v in rle["size"]], "counts": [int(v) for v in counts]}


@dataclass
class _Mask:
    index: int
    rle: dict[str, Any]
    bbox: list[float]
    area: int
    score: float | None
    label: str


def _names(
    src: Path, manifest: dict[str, Any], mapping: str | Path | None
) -> tuple[list[str | None], list[str]]:
    """Label per cluster (None = left out) and the ordered label list."""
    k = int(manifest.get("num_classes") or len(manifest.get("cluster_sizes") or []))
    if mapping is None:
        names: list[str | None] = [f"cluster_{c}" for c in range(k)]
        return names, [f"cluster_{c}" for c in range(k)]
    parsed: Mapping = load_mapping(mapping, k)
    c2c = parsed.cluster_to_class(k)
    return [parsed.class_names[c] if c >= 0 else None for c in c2c], parsed.class_names


def _iter_masks(src: Path, record: dict[str, Any], labels: list[str | None]) -> Iterator[_Mask]:
    """Masks of one plain image with a label, largest first (the painting order)."""
    table = pq.read_table(src / record["table"], columns=_COLUMNS).to_pylist()
    table.sort(key=lambda row: -int(row["area"]))
    for row in table:
        cluster = int(row["cluster"])
        label = labels[cluster] if 0 <= cluster < len(labels) else None
        if label is None:
            continue
        score = row["predicted_iou"]
        yield _Mask(
            int(row["mask_index"]),
            {"size": [int(row["height"]), int(row["width"])], "counts": row["rle_counts"]},
            [float(v) for v in row["bbox"]],
            int(row["area"]),
            None if score is None or not np.isfinite(score) else round(float(score), 4),
            label,
        )


def _plain_records(manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Records of labelled plain images (scenes have no per-image mask table), and scenes skipped."""
    ok = [r for r in manifest.get("images", []) if r.get("status") == "ok" and r.get("table")]
    plain = [r for r in ok if str(r["table"]).endswith(".parquet")]
    return plain, len(ok) - len(plain)


def label_config(labels: list[str], from_name: str = "tag", to_name: str = "image") -> str:
    """Label Studio labelling config: an image and a ``BrushLabels`` tag with every label and colour."""
    colours = palette(len(labels))
    items = "\n".join(
        f'    <Label value={quoteattr(name)} background="#{"".join(f"{int(v):02x}" for v in colour)}"/>'
        for name, colour in zip(labels, colours, strict=True)
    )
    return (
        f'<View>\n  <Image name="{to_name}" value="$image" zoom="true"/>\n'
        f'  <BrushLabels name="{from_name}" toName="{to_name}">\n{items}\n  </BrushLabels>\n</View>\n'
    )


def export_label_studio(
    src: Path | str,
    out: Path | str | None = None,
    *,
    mapping: str | Path | None = None,
    url_prefix: str = "/data/local-files/?d=",
    from_name: str = "tag",
    to_name: str = "image",
) -> dict[str, Any]:
    """Write Label Studio tasks with brush-RLE predictions (see the module docstring).

    Args:
        src: ``alps label`` directory.
        out: folder for ``tasks.json`` and ``label_config.xml`` (default ``src/exports/label-studio``).
        mapping: optional mapping file: labels are class names, ignored clusters are left out.
        url_prefix: prepended to the image path relative to ``src`` (default: Label Studio's local
            file serving, with ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to ``src``).
        from_name, to_name: tag names of the labelling config.

    Returns:
        ``{"tasks": path, "config": path, "images": n, "masks": n, "skipped_scenes": n}``.
    """
    src = Path(src)
    manifest = read_manifest(src)
    labels, label_list = _names(src, manifest, mapping)
    target = Path(out) if out is not None else src / "exports" / "label-studio"
    records, scenes = _plain_records(manifest)
    tasks: list[dict[str, Any]] = []
    n_masks = 0
    for record in records:
        results: list[dict[str, Any]] = []
        scores: list[float] = []
        for m in _iter_masks(src, record, labels):
            h, w = m.rle["size"]
            results.append({
                "id": f"{record['id']}-{m.index}", "type": "brushlabels", "from_name": from_name,
                "to_name": to_name, "original_width": w, "original_height": h, "image_rotation": 0,
                "value": {"format": "rle", "rle": brush_rle(mask_utils.decode(m.rle)),
                          "brushlabels": [m.label]},
                **({"score": m.score} if m.score is not None else {}),
            })  # fmt: skip
            if m.score is not None:
                scores.append(m.score)
        n_masks += len(results)
        prediction: dict[str, Any] = {
            "model_version": f"alps-{manifest.get('alps_version', '?')}",
            "result": results,
        }
        if scores:
            prediction["score"] = round(float(np.mean(scores)), 4)
        tasks.append({"data": {"image": url_prefix + str(record["image"]), "alps_id": record["id"]},
                      "predictions": [prediction]})  # fmt: skip
    write_json(target / "tasks.json", tasks, indent=None)
    write_text(target / "label_config.xml", label_config(label_list, from_name, to_name))
    return {"tasks": target / "tasks.json", "config": target / "label_config.xml", "images": len(tasks),
            "masks": n_masks, "skipped_scenes": scenes}  # fmt: skip


def export_cvat(
    src: Path | str, out: Path | str | None = None, *, mapping: str | Path | None = None
) -> dict[str, Any]:
    """Write COCO 1.0 instances with RLE masks for CVAT (see the module docstring).

    Images are named by their file name (CVAT matches annotations to the task's files by name).

    Returns:
        ``{"json": path, "zip": path, "images": n, "masks": n, "skipped_scenes": n}``.
    """
    src = Path(src)
    manifest = read_manifest(src)
    labels, label_list = _names(src, manifest, mapping)
    category = {name: i + 1 for i, name in enumerate(label_list)}
    target = Path(out) if out is not None else src / "exports" / "cvat"
    records, scenes = _plain_records(manifest)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, record in enumerate(records, start=1):
        images.append({"id": number, "file_name": Path(record["image"]).name,
                       "height": int(record["height"]), "width": int(record["width"])})  # fmt: skip
        for m in _iter_masks(src, record, labels):
            annotations.append({
                "id": len(annotations) + 1, "image_id": number, "category_id": category[m.label],
                "segmentation": uncompressed_rle(m.rle), "area": m.area, "bbox": m.bbox, "iscrowd": 1,
                "attributes": {"occluded": False, **({"score": m.score} if m.score is not None else {})},
            })  # fmt: skip
    coco = {
        "info": {"description": "alps-seg pseudo-labels for correction in CVAT"},
        "licenses": [],
        "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in category.items()],
        "images": images,
        "annotations": annotations,
    }
    json_path = target / "annotations" / "instances_default.json"
    write_json(json_path, coco, indent=None)
    zip_path = target / "cvat_coco.zip"
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(json_path, "annotations/instances_default.json")
    return {"json": json_path, "zip": zip_path, "images": len(images), "masks": len(annotations),
            "skipped_scenes": scenes}  # fmt: skip


def export(src: Path | str, fmt: str, out: Path | str | None = None, **options: Any) -> dict[str, Any]:
    """Dispatch to :func:`export_label_studio` or :func:`export_cvat` by ``fmt``."""
    if fmt == "label-studio":
        return export_label_studio(src, out, **options)
    if fmt == "cvat":
        options.pop("url_prefix", None)
        return export_cvat(src, out, mapping=options.get("mapping"))
    raise MappingError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
