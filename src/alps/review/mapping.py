"""Cluster -> class mappings: the format, its validation, and turning clusters into named classes.

Format (YAML, or the same structure as JSON)::

    classes:            # ordered: class ids are 0..C-1 in this order
      tree: [0, 3, 7]   # class name -> the cluster ids it takes
      grass: [1]
    ignore: [2, 5]      # cluster ids painted 255 (unlabeled)
    num_clusters: 8     # optional: K the mapping was made for (checked)

Clusters listed nowhere are painted 255 too. A cluster may appear only once in the whole mapping.

:func:`apply_mapping` repaints a finished ``alps label`` directory by a lookup table on the stored
label values (equal to repainting the masks from the tables: painting order does not depend on the
cluster), so no SAM and no k-means run. The original cluster label maps are never touched: the
mapped dataset goes to ``DIR/mapped/`` (or ``--out``), always recomputed from ``DIR/labels``, so
applying a mapping twice gives the same bytes as applying it once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from alps.core.files import atomic_path, file_mode, link_or_copy, remove_stale_files, write_json, write_text
from alps.evaluate.labels import accumulate_confusion, pair_label_files
from alps.labeling.paint import (
    cluster_to_label_value,
    colour_overlay,
    label_value_to_cluster,
    load_label_png,
    palette,
    save_label_png,
)

__all__ = [
    "MapResult",
    "Mapping",
    "MappingError",
    "apply_mapping",
    "derive_mapping",
    "format_derive_report",
    "load_mapping",
    "parse_mapping",
    "remap_label_map",
    "value_lut",
]

IGNORE = 255
MAX_VALUE = 65535
_KEYS = {"classes", "ignore", "num_clusters", "source"}
_OWN_DIRS = ("labels", "images", "overlays", "vectors", "coco")


class MappingError(ValueError):
    """A mapping that cannot be applied; the message is one line saying why."""


@dataclass(frozen=True)
class Mapping:
    """A validated cluster -> class mapping.

    Attributes:
        classes: ``(name, cluster ids)`` pairs in class-id order.
        ignore: cluster ids painted 255.
        num_clusters: K the mapping was checked against (None if unchecked).
    """

    classes: tuple[tuple[str, tuple[int, ...]], ...]
    ignore: tuple[int, ...] = ()
    num_clusters: int | None = None

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in self.classes]

    def cluster_to_class(self, num_clusters: int) -> npt.NDArray[np.int64]:
        """``(K,)`` int64 class id of every cluster, -1 for ignored and unlisted clusters."""
        out = np.full(num_clusters, -1, dtype=np.int64)
        for class_id, (_, clusters) in enumerate(self.classes):
            for cluster in clusters:
                if cluster >= num_clusters:
                    raise MappingError(f"unknown cluster {cluster} (clusters are 0..{num_clusters - 1})")
                out[cluster] = class_id
        return out

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"classes": {n: list(c) for n, c in self.classes}, "ignore": list(self.ignore)}
        if self.num_clusters is not None:
            data["num_clusters"] = self.num_clusters
        return data

    def to_yaml(self, comment: str = "") -> str:
        """The mapping as YAML (class names as double-quoted scalars, id lists in flow style)."""
        lines = [f"# {line}" for line in comment.splitlines()] if comment else []
        lines.append("classes:")
        lines += [f"  {json.dumps(name)}: {json.dumps(list(ids))}" for name, ids in self.classes]
        lines.append(f"ignore: {json.dumps(list(self.ignore))}")
        if self.num_clusters is not None:
            lines.append(f"num_clusters: {self.num_clusters}")
        return "\n".join(lines) + "\n"


def _cluster_id(value: Any, where: str, num_clusters: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise MappingError(f"{where}: {value!r} is not a cluster id (an integer)")
    if isinstance(value, str):
        text = value.strip().removeprefix("cluster_").removeprefix("cluster-")
        if not text.isdigit():
            raise MappingError(f"{where}: {value!r} is not a cluster id (an integer)")
        value = int(text)
    if value < 0:
        raise MappingError(f"{where}: cluster id {value} is negative")
    if num_clusters is not None and value >= num_clusters:
        raise MappingError(f"{where}: unknown cluster {value} (clusters are 0..{num_clusters - 1})")
    return int(value)


def _id_list(value: Any, where: str, num_clusters: int | None) -> list[int]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [_cluster_id(v, where, num_clusters) for v in items]


def parse_mapping(data: Any, num_clusters: int | None = None) -> Mapping:
    """Validate a loaded mapping document (see the module docstring).

    Args:
        data: the parsed YAML/JSON document.
        num_clusters: K of the dataset; cluster ids must lie in ``0..K-1`` when given.

    Raises:
        MappingError: with a one-line message naming the first problem.
    """
    if not isinstance(data, dict):
        raise MappingError("a mapping must be a YAML/JSON object with 'classes' (and optionally 'ignore')")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise MappingError(f"unknown key(s) {unknown}; a mapping has 'classes', 'ignore', 'num_clusters'")
    declared = data.get("num_clusters")
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
            raise MappingError(f"num_clusters must be a positive integer, got {declared!r}")
        if num_clusters is not None and declared != num_clusters:
            raise MappingError(f"the mapping is for {declared} clusters, the dataset has {num_clusters}")
    limit = num_clusters if num_clusters is not None else declared
    classes = data.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise MappingError("'classes' must be a non-empty map from class name to a list of cluster ids")
    if len(classes) > MAX_VALUE - 1:
        raise MappingError(f"too many classes ({len(classes)}); at most {MAX_VALUE - 1}")
    seen: dict[int, str] = {}
    parsed: list[tuple[str, tuple[int, ...]]] = []
    for name, ids in classes.items():
        if not isinstance(name, str) or not name.strip():
            raise MappingError(f"class name {name!r} must be a non-empty string")
        if isinstance(ids, dict):
            raise MappingError(f"class {name!r}: expected a list of cluster ids, got a map")
        clusters = _id_list(ids, f"class {name!r}", limit)
        for cluster in clusters:
            if cluster in seen:
                raise MappingError(f"cluster {cluster} is in {seen[cluster]} and in class {name!r}")
            seen[cluster] = f"class {name!r}"
        parsed.append((name, tuple(clusters)))
    ignore = _id_list(data.get("ignore"), "ignore", limit)
    for cluster in ignore:
        if cluster in seen:
            raise MappingError(f"cluster {cluster} is in {seen[cluster]} and in 'ignore'")
        seen[cluster] = "'ignore'"
    return Mapping(tuple(parsed), tuple(ignore), limit)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (a class named twice would silently lose clusters)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in out:
            raise MappingError(f"{key!r} is given twice (line {key_node.start_mark.line + 1})")
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise MappingError(f"{key!r} is given twice")
        out[key] = value
    return out


def load_mapping(path: Path | str, num_clusters: int | None = None) -> Mapping:
    """Read and validate a mapping file (``.json`` as JSON, anything else as YAML)."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as err:
        raise MappingError(f"cannot read mapping {target}: {err.strerror or err}") from err
    try:
        if target.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
    except MappingError as err:
        raise MappingError(f"{target.name}: {err}") from None
    except (yaml.YAMLError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MappingError(f"{target.name} is not valid {'JSON' if target.suffix == '.json' else 'YAML'}: "
                           f"{first}") from None  # fmt: skip
    try:
        return parse_mapping(data, num_clusters)
    except MappingError as err:
        raise MappingError(f"{target.name}: {err}") from None


def value_lut(cluster_to_class: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.uint16]:
    """Lookup table from stored cluster label values to stored class label values.

    Args:
        cluster_to_class: ``(K,)`` class id per cluster, -1 = unlabeled.
        num_classes: C (the output is uint16-valued; values fit uint8 when C <= 255).

    Returns:
        ``(65536,)`` uint16: ``lut[v]`` is the class value for stored cluster value ``v``
        (both sides follow :func:`alps.labeling.paint.cluster_to_label_value`; 255 stays 255). Values
        of clusters ``>= K`` map to :data:`MAX_VALUE` as a marker (see :func:`remap_label_map`).
    """
    c2c = np.asarray(cluster_to_class, dtype=np.int64).reshape(-1)
    if c2c.size and c2c.max() >= num_classes:
        raise ValueError(f"class id {int(c2c.max())} >= num_classes={num_classes}")
    clusters = label_value_to_cluster(np.arange(MAX_VALUE + 1))
    known = (clusters >= 0) & (clusters < c2c.size)
    classes = np.full(clusters.shape, -1, dtype=np.int64)
    classes[known] = c2c[clusters[known]]
    lut = cluster_to_label_value(classes).astype(np.uint16)
    lut[(clusters >= c2c.size)] = MAX_VALUE
    return lut


def remap_label_map(label: npt.ArrayLike, lut: npt.NDArray[np.uint16], num_classes: int) -> npt.NDArray[Any]:
    """Apply :func:`value_lut` to a label map of any shape.

    Args:
        label: uint8/uint16 stored cluster values.
        lut: from :func:`value_lut`.
        num_classes: C; the result is uint8 when C <= 255, else uint16.

    Raises:
        MappingError: a value belongs to no cluster of the dataset (the map does not match K).
    """
    values = np.asarray(label)
    out = lut[values]
    if values.size and int(out.max()) == MAX_VALUE:
        bad = int(values.reshape(-1)[np.argmax(out.reshape(-1) == MAX_VALUE)])
        raise MappingError(f"label value {bad} is cluster {int(label_value_to_cluster(bad))}, "
                           f"beyond the dataset's {int((lut != MAX_VALUE).sum()) - 1} clusters")  # fmt: skip
    return out.astype(np.uint8 if num_classes <= IGNORE else np.uint16)


# ----------------------------------------------------------------------------------------------
# applying a mapping to a dataset


@dataclass
class MapResult:
    """What :func:`apply_mapping` wrote."""

    out: Path
    mapping: Mapping
    num_clusters: int
    label_files: int = 0
    class_pixels: list[int] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def read_manifest(src: Path) -> dict[str, Any]:
    """``DIR/manifest.json`` of an ``alps label`` run, refusing anything else with a clear message."""
    path = Path(src) / "manifest.json"
    if not path.is_file():
        raise MappingError(f"{src} is not an `alps label` output directory (no manifest.json)")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise MappingError(f"{path}: unreadable manifest ({err})") from None
    return manifest


def _check_out(src: Path, out: Path) -> None:
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r:
        raise MappingError(f"--out {out} is the input directory; mapped labels never overwrite the originals")
    if src_r in out_r.parents:
        first = out_r.relative_to(src_r).parts[0]
        if first in (*_OWN_DIRS, "tables", "state", "slices", "splits", "report", "exports"):
            raise MappingError(f"--out {out} lies inside {first}/ of the input; choose another folder")
    if out_r in src_r.parents:
        raise MappingError(f"--out {out} contains the input directory {src}")
    if out.is_dir() and any(out.iterdir()):
        previous = out / "manifest.json"
        try:
            ok = "mapping" in json.loads(previous.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise MappingError(f"--out {out} is a non-empty folder that `alps map` did not write; refusing")


def _num_clusters(manifest: dict[str, Any]) -> int:
    return int(manifest.get("num_classes") or len(manifest.get("cluster_sizes") or []))


def apply_mapping(
    src: Path | str,
    mapping: Mapping | Path | str,
    out: Path | str | None = None,
    *,
    overlays: bool = True,
) -> MapResult:
    """Repaint an ``alps label`` directory with named classes (see the module docstring).

    Args:
        src: the ``alps label`` output directory (never modified except for ``src/mapped``
            when ``out`` is None).
        mapping: a :class:`Mapping`, or a path to a mapping file.
        out: destination dataset root (default ``src/mapped``).
        overlays: also redraw the overlays of plain images in class colours.

    Returns:
        A :class:`MapResult`; ``out/manifest.json`` holds the class list and the mapping.
    """
    import time

    start = time.perf_counter()
    src = Path(src)
    manifest = read_manifest(src)
    if "mapping" in manifest:
        origin = manifest["mapping"].get("source", "the original directory")
        raise MappingError(f"{src} is already a mapped dataset; apply mappings to the `alps label` "
                           f"output it came from ({origin})")  # fmt: skip
    k = _num_clusters(manifest)
    if isinstance(mapping, Mapping):
        mapping = parse_mapping(mapping.to_dict() | {"num_clusters": None}, k)
    else:
        mapping = load_mapping(mapping, k)
    target = Path(out) if out is not None else src / "mapped"
    _check_out(src, target)
    c2c = mapping.cluster_to_class(k)
    num_classes = len(mapping.classes)
    lut = value_lut(c2c, num_classes)
    result = MapResult(target, mapping, k, class_pixels=[0] * num_classes)
    produced: set[Path] = set()
    records = []
    for record in manifest.get("images", []):
        if record.get("status") == "ok" and record.get("label"):
            records.append(
                _map_image(src, target, dict(record), lut, num_classes, overlays, result, produced)
            )
        else:
            records.append(dict(record))
    volumes = [
        _map_volume(src, target, dict(v), lut, num_classes, produced) for v in manifest.get("volumes", [])
    ]
    _map_coco(src, target, c2c, mapping, produced)
    for name in ("train", "val"):
        split = src / "splits" / f"{name}.txt"
        if split.is_file():
            write_text(target / "splits" / split.name, split.read_text(encoding="utf-8"))
            produced.add(target / "splits" / split.name)
    for folder in (*_OWN_DIRS, "splits"):
        remove_stale_files(target / folder, produced)
    _write_mapped_manifest(src, target, manifest, mapping, c2c, records, volumes, result)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def _map_image(
    src: Path,
    out: Path,
    record: dict[str, Any],
    lut: npt.NDArray[np.uint16],
    num_classes: int,
    overlays: bool,
    result: MapResult,
    produced: set[Path],
) -> dict[str, Any]:
    """Repaint one image's label map (PNG or scene GeoTIFF) and its companions; the new record."""
    label_src = src / record["label"]
    label_dst = out / record["label"]
    if label_src.suffix.lower() in (".tif", ".tiff"):
        counts = _map_geotiff(label_src, label_dst, lut, num_classes)
        if record.get("vector"):
            for vector in sorted((src / record["vector"]).parent.glob(f"{record['id']}.*")):
                if vector.suffix in (".gpkg", ".geojson"):
                    dst = out / vector.relative_to(src)
                    c2c = result.mapping.cluster_to_class(result.num_clusters)
                    _map_vectors(vector, dst, c2c, result.mapping.class_names)
                    produced.add(dst)
        record["overlay"] = None
    else:
        mapped = remap_label_map(load_label_png(label_src), lut, num_classes)
        save_label_png(label_dst, mapped)
        os.chmod(label_dst, file_mode())  # save_label_png writes owner-only temporary files
        counts = _counts(mapped, num_classes)
        if overlays and record.get("image"):
            overlay = out / "overlays" / f"{record['id']}.jpg"
            _save_overlay(src / record["image"], mapped, overlay, num_classes)
            produced.add(overlay)
            record["overlay"] = overlay.relative_to(out).as_posix()
        else:
            record["overlay"] = None
    produced.add(label_dst)
    if record.get("image") and (src / record["image"]).is_file():
        link_or_copy(src / record["image"], out / record["image"])
        produced.add(out / record["image"])
    if record.get("table"):
        record["table"] = str((src / record["table"]).resolve())
    record["n_labelled_pixels"] = int(counts.sum())
    for c, v in enumerate(counts):
        result.class_pixels[c] += int(v)
    result.label_files += 1
    return record


def _counts(mapped: npt.NDArray[Any], num_classes: int) -> npt.NDArray[np.int64]:
    """``(C,)`` labelled pixels per class of a mapped label map."""
    classes = label_value_to_cluster(mapped).reshape(-1)
    return np.bincount(classes[classes >= 0], minlength=num_classes)[:num_classes].astype(np.int64)


def _save_overlay(image_path: Path, mapped: npt.NDArray[Any], dst: Path, num_classes: int) -> None:
    from PIL import Image

    with Image.open(image_path) as image:
        rgb = np.asarray(image.convert("RGB"))
    overlay = colour_overlay(rgb, mapped, colours=palette(num_classes))
    with atomic_path(dst) as tmp:
        Image.fromarray(overlay).save(tmp, format="JPEG", quality=90)


def _map_geotiff(
    src: Path, dst: Path, lut: npt.NDArray[np.uint16], num_classes: int
) -> npt.NDArray[np.int64]:
    """Remap a label GeoTIFF block by block (same CRS, transform, tiling, nodata); class pixel counts."""
    import rasterio

    counts = np.zeros(num_classes, dtype=np.int64)
    with rasterio.open(src) as reader:
        profile = reader.profile.copy()
        profile.update(dtype="uint8" if num_classes <= IGNORE else "uint16", nodata=IGNORE)
        with atomic_path(dst) as tmp, rasterio.open(tmp, "w", **profile) as writer:
            for _, window in reader.block_windows(1):
                mapped = remap_label_map(reader.read(1, window=window), lut, num_classes)
                counts += _counts(mapped, num_classes)
                writer.write(mapped, 1, window=window)
    return counts


def _map_vectors(src: Path, dst: Path, c2c: npt.NDArray[np.int64], names: Sequence[str]) -> None:
    """Copy polygons whose cluster maps to a class, adding ``class`` (id) and ``class_name`` attributes."""
    if src.suffix == ".geojson":
        data = json.loads(src.read_text(encoding="utf-8"))
        kept = []
        for feature in data.get("features", []):
            cls = int(c2c[int(feature["properties"]["cluster"])])
            if cls >= 0:
                feature["properties"] = {"class": cls, "class_name": names[cls], **feature["properties"]}
                kept.append(feature)
        data["features"] = kept
        write_json(dst, data, indent=None)
        return
    from pyogrio.raw import read, write

    meta, _, geometry, fields = read(src)
    columns = dict(zip(meta["fields"], fields, strict=True))
    classes = c2c[np.asarray(columns["cluster"], dtype=np.int64)]
    keep = classes >= 0
    out_fields = {
        "class": classes[keep].astype(np.int32),
        "class_name": np.array([names[c] for c in classes[keep]], dtype=object),
        **{name: np.asarray(values)[keep] for name, values in columns.items()},
    }
    with atomic_path(dst) as tmp:
        tmp.unlink()
        write(tmp, geometry[keep], list(out_fields.values()), list(out_fields), layer=dst.stem,
              driver="GPKG", geometry_type="Polygon", crs=meta.get("crs"))  # fmt: skip


def _map_volume(
    src: Path,
    out: Path,
    record: dict[str, Any],
    lut: npt.NDArray[np.uint16],
    num_classes: int,
    produced: set[Path],
) -> dict[str, Any]:
    """Remap ``labels/<volume>.nii.gz`` (affine and header kept, dtype from C)."""
    if record.get("status") != "ok" or not record.get("label_volume"):
        return record
    import nibabel as nib

    image: Any = nib.load(str(src / record["label_volume"]))
    mapped = remap_label_map(np.asarray(image.dataobj), lut, num_classes)
    header = image.header.copy()
    header.set_data_dtype(mapped.dtype)
    dst = out / record["label_volume"]
    with atomic_path(dst) as tmp:
        nib.save(nib.Nifti1Image(mapped, image.affine, header), str(tmp))
    produced.add(dst)
    return record


def _map_coco(
    src: Path, out: Path, c2c: npt.NDArray[np.int64], mapping: Mapping, produced: set[Path]
) -> None:
    """COCO instances with one category per class; annotations of ignored clusters dropped."""
    path = src / "coco" / "instances.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    kept: list[dict[str, Any]] = []
    for ann in data.get("annotations", []):
        cluster = int(ann["category_id"]) - 1
        cls = int(c2c[cluster]) if 0 <= cluster < c2c.size else -1
        if cls >= 0:
            kept.append({**ann, "id": len(kept) + 1, "category_id": cls + 1, "cluster": cluster})
    data["annotations"] = kept
    data["categories"] = [
        {"id": i + 1, "name": n, "supercategory": "alps"} for i, n in enumerate(mapping.class_names)
    ]
    data["info"] = {"description": "alps-seg pseudo-labels, clusters mapped to named classes (alps map)"}
    write_json(out / "coco" / "instances.json", data, indent=None)
    produced.add(out / "coco" / "instances.json")


def _write_mapped_manifest(
    src: Path,
    out: Path,
    manifest: dict[str, Any],
    mapping: Mapping,
    c2c: npt.NDArray[np.int64],
    records: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    result: MapResult,
) -> None:
    """``out/manifest.json`` (class list for mmseg/torchgeo), ``mapping.yaml`` and ``classes.txt``."""
    names = mapping.class_names
    c = len(names)
    sizes = np.asarray(manifest.get("cluster_sizes") or [0] * c2c.size, dtype=np.int64)
    class_masks = [int(sizes[c2c == i].sum()) for i in range(c)]
    dataset = dict(manifest.get("dataset") or {})
    dataset.update(
        num_classes=c,
        classes=names,
        label_dtype="uint8" if c <= IGNORE else "uint16",
        label_encoding="class c is stored as c if c < 255 else c + 1; 255 = unlabeled or ignored",
    )
    mapped = {
        **{key: value for key, value in manifest.items() if key not in ("images", "volumes")},
        "num_classes": c,
        "classes": names,
        "ignore_index": IGNORE,
        "dataset": dataset,
        "cluster_sizes": class_masks,
        "class_pixels": result.class_pixels,
        "mapping": {
            **mapping.to_dict(),
            "num_clusters": result.num_clusters,
            "cluster_to_class": [int(v) for v in c2c],
            "source": str(src.resolve()),
            "source_cluster_sizes": manifest.get("cluster_sizes"),
            "source_class_pixels": manifest.get("class_pixels"),
        },
        "images": records,
        **({"volumes": volumes} if volumes else {}),
    }
    comment = f"alps map: {c} classes from {result.num_clusters} clusters of {src.resolve()}"
    write_text(out / "mapping.yaml", mapping.to_yaml(comment))
    write_text(out / "classes.txt", "".join(f"{n}\n" for n in names))
    write_json(out / "manifest.json", mapped)


# ----------------------------------------------------------------------------------------------
# deriving a mapping from a few labelled images


def pair_with_gt(labels_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """Pair pseudo-label PNGs with GT PNGs by relative path, else by unique file stem."""
    pairs, _ = pair_label_files(labels_dir, gt_dir)
    if pairs:
        return pairs
    preds: dict[str, list[Path]] = {}
    for path in labels_dir.rglob("*.png"):
        preds.setdefault(path.stem, []).append(path)
    out = []
    for gt in sorted(gt_dir.rglob("*.png")):
        match = preds.get(gt.stem, [])
        if len(match) == 1:
            out.append((gt.stem, match[0], gt))
    return out


def confusion_with_gt(
    src: Path, gt_dir: Path, num_clusters: int, *, ignore_index: int = 255
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Cluster x class confusion over the images that have GT.

    Returns:
        ``(K, C)`` int64 confusion, ``(C,)`` int64 GT pixels left unlabeled, number of images.
    """
    pairs = pair_with_gt(src / "labels", Path(gt_dir))
    if not pairs:
        raise MappingError(f"no ground-truth PNG in {gt_dir} matches a label map in {src / 'labels'}")
    try:
        gts = [(load_label_png(p), load_label_png(g), key) for key, p, g in pairs]
    except (OSError, ValueError) as err:
        raise MappingError(str(err)) from None
    top = max((int(g[g != ignore_index].max(initial=0)) for _, g, _ in gts), default=0)
    conf = np.zeros((num_clusters, top + 1), dtype=np.int64)
    unlabeled = np.zeros(top + 1, dtype=np.int64)
    for pred, gt, key in gts:
        if pred.shape != gt.shape:
            raise MappingError(f"{key}: label map {pred.shape} and ground truth {gt.shape} differ in size")
        accumulate_confusion(pred, gt, num_clusters, top + 1, ignore_index=ignore_index,
                             confusion=conf, unlabeled=unlabeled)  # fmt: skip
    return conf, unlabeled, len(pairs)


def class_iou(
    conf: npt.NDArray[np.int64], unlabeled: npt.NDArray[np.int64], c2c: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """``(C,)`` IoU per GT class when cluster k predicts class ``c2c[k]`` (-1: nothing); NaN if undefined."""
    num_gt = conf.shape[1]
    predicted = np.zeros((num_gt, num_gt), dtype=np.int64)
    mapped = c2c >= 0
    np.add.at(predicted, c2c[mapped], conf[mapped])
    tp = np.diag(predicted)
    union = predicted.sum(axis=1) + conf.sum(axis=0) + unlabeled - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def derive_mapping(
    src: Path | str,
    gt_dir: Path | str,
    *,
    class_names: Sequence[str] | None = None,
    method: str = "auto",
    ignore_index: int = 255,
) -> tuple[Mapping, dict[str, Any]]:
    """A mapping from a few labelled images: majority vote per cluster, or Hungarian when K = C.

    Args:
        src: ``alps label`` directory; gt_dir: GT class-id PNGs (paired as by ``evaluate-labels``,
            or by file stem). class_names: names of GT classes 0..C-1 (default ``class_<c>``).
        method: ``"majority"``, ``"hungarian"`` or ``"auto"`` (Hungarian iff K = C).

    Returns:
        The mapping (clusters without GT pixels are ignored) and a report dict: per class the best
        single cluster and its IoU, the mapped IoU; ``num_images``, ``method``, ``confusion``.
    """
    from scipy.optimize import linear_sum_assignment

    src = Path(src)
    k = _num_clusters(read_manifest(src))
    conf, unlabeled, n_images = confusion_with_gt(src, Path(gt_dir), k, ignore_index=ignore_index)
    c = conf.shape[1]
    names = list(class_names) if class_names else [f"class_{i}" for i in range(c)]
    if len(names) < c:
        raise MappingError(f"{len(names)} class names for {c} ground-truth classes (ids 0..{c - 1})")
    c = len(names)
    conf = np.pad(conf, ((0, 0), (0, c - conf.shape[1])))
    unlabeled = np.pad(unlabeled, (0, c - unlabeled.shape[0]))
    if method not in ("auto", "majority", "hungarian"):
        raise MappingError(f"method must be auto, majority or hungarian, got {method!r}")
    used = "hungarian" if method == "hungarian" or (method == "auto" and k == c) else "majority"
    has = conf.sum(axis=1) > 0
    c2c = np.full(k, -1, dtype=np.int64)
    if used == "majority":
        c2c[has] = conf[has].argmax(axis=1)
    else:
        rows, cols = linear_sum_assignment(conf, maximize=True)
        c2c[rows] = cols
        c2c[~has] = -1
    single = _single_cluster_iou(conf, unlabeled)
    mapped_iou = class_iou(conf, unlabeled, c2c)
    mapping = Mapping(
        tuple((names[i], tuple(int(v) for v in np.flatnonzero(c2c == i))) for i in range(c)),
        tuple(int(v) for v in np.flatnonzero(c2c < 0)),
        k,
    )
    per_class = []
    for i in range(c):
        best = int(np.nanargmax(single[:, i])) if np.isfinite(single[:, i]).any() else -1
        per_class.append({
            "class": names[i], "best_cluster": best,
            "iou_best_cluster": None if best < 0 else float(single[best, i]),
            "iou_mapped": None if not np.isfinite(mapped_iou[i]) else float(mapped_iou[i]),
            "clusters": list(mapping.classes[i][1]),
        })  # fmt: skip
    report = {"method": used, "num_images": n_images, "num_clusters": k, "per_class": per_class,
              "confusion": conf.tolist(), "unlabeled": unlabeled.tolist()}  # fmt: skip
    return mapping, report


def _single_cluster_iou(
    conf: npt.NDArray[np.int64], unlabeled: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """``(K, C)`` IoU of class c if cluster k alone predicted it."""
    pred = conf.sum(axis=1, keepdims=True)
    gt = (conf.sum(axis=0) + unlabeled)[None, :]
    union = pred + gt - conf
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, conf / np.maximum(union, 1), np.nan)


def format_derive_report(report: dict[str, Any]) -> str:
    """Per-class IoU before (best single cluster) and after (mapped) as a text table."""
    rows = report["per_class"]
    width = max(5, *(len(r["class"]) for r in rows))
    head = (f"Mapping derived by {report['method']} vote from {report['num_images']} labelled image(s), "
            f"{report['num_clusters']} clusters")  # fmt: skip
    lines = [head, "-" * len(head), f"{'class':<{width}}  best cluster (IoU)  mapped IoU  clusters"]

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    for r in rows:
        best = (
            f"{r['best_cluster']:>4} ({pct(r['iou_best_cluster'])} %)" if r["best_cluster"] >= 0 else "   -"
        )
        ids = ", ".join(str(v) for v in r["clusters"]) or "-"
        lines.append(f"{r['class']:<{width}}  {best:<18}  {pct(r['iou_mapped'])} %    {ids}")
    finite = [r["iou_mapped"] for r in rows if r["iou_mapped"] is not None]
    if finite:
        lines.append(f"{'mIoU':<{width}}  {'':<18}  {pct(float(np.mean(finite)))} %")
    return "\n".join(lines)
