# ruff: noqa: E501  (the page's CSS and script are embedded as long one-line rules)
"""``alps report DIR``: a static, self-contained HTML page to look at, name and merge the clusters.

``DIR/report/index.html`` plus thumbnails beside it (``crops/``, ``thumbs/``, JPEG): no server, no
network, no CDN; the folder can be copied anywhere and opened from the file system.

* Overview: clusters sorted by their share of labelled pixels (share, masks, images, median mask
  area, colour swatch = :func:`alps.labeling.paint.palette`, the overlays' colours); dataset coverage.
* One section per cluster (element id ``cluster-<id>``): crops of up to ``crops_per_cluster`` masks
  from different images with the mask outlined; the masks are chosen deterministically: half the
  nearest to the cluster centre (one per image), half spread over the distance quantiles; the
  nearest other clusters by centre distance (merge candidates).
* Images (up to ``max_images``, evenly sampled): image | overlay with the legend of clusters present;
  scenes: the preview and legend; volumes: a few slices.
* With ground truth: per cluster its class composition and purity, and the dataset scores.
* Naming: each cluster has a name field, a merge-into selector and an ignore toggle. The page keeps
  the state in ``localStorage`` and downloads the mapping as YAML or JSON for ``alps map``.

Bounded work for large datasets: cluster statistics read two columns of every table; crop candidates
come from at most ``scan_images`` tables (evenly sampled), crops from at most ``crops_per_cluster``
masks per cluster.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils

from alps.core.files import atomic_path, write_text
from alps.evaluate.labels import metrics_from_confusion
from alps.labeling.cluster import ClusterModel
from alps.labeling.paint import label_value_to_cluster, load_label_png, palette
from alps.review.mapping import MappingError, confusion_with_gt, read_manifest

__all__ = ["ReportResult", "build_report"]

CROP_SIDE = 144
THUMB_SIDE = 360
MIN_CROP_AREA = 16
NEIGHBOURS = 5


@dataclass
class ClusterInfo:
    """Statistics and picks of one cluster."""

    id: int
    colour: str
    pixels: int = 0
    masks: int = 0
    images: int = 0
    median_area: float = 0.0
    crops: list[str] = field(default_factory=list)
    neighbours: list[tuple[int, float]] = field(default_factory=list)
    composition: list[tuple[str, float]] = field(default_factory=list)
    purity: float | None = None


@dataclass
class ReportResult:
    """What :func:`build_report` wrote."""

    path: Path
    clusters: int
    crops: int
    images_listed: int
    seconds: float


def _hex(colour: npt.ArrayLike) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in np.asarray(colour).reshape(-1)[:3])


def _evenly(items: list[Any], cap: int) -> list[Any]:
    """At most ``cap`` items, evenly spaced over the list (deterministic)."""
    if len(items) <= cap:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, cap).round().astype(int)]


def _table_paths(src: Path, record: dict[str, Any]) -> list[Path]:
    table = src / str(record["table"])
    return [table] if table.suffix == ".parquet" else sorted(table.glob("*.parquet"))


def _cluster_stats(src: Path, records: list[dict[str, Any]], infos: list[ClusterInfo]) -> None:
    """Masks, images and median mask area per cluster from the ``cluster`` and ``area`` columns."""
    k = len(infos)
    areas: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(k)]
    images = np.zeros(k, dtype=np.int64)
    for record in records:
        present = np.zeros(k, dtype=bool)
        for path in _table_paths(src, record):
            cols = pq.read_table(path, columns=["cluster", "area"])
            cl = np.asarray(cols.column("cluster").to_numpy(), dtype=np.int64)
            ar = np.asarray(cols.column("area").to_numpy(), dtype=np.int64)
            valid = (cl >= 0) & (cl < k)
            cl, ar = cl[valid], ar[valid]
            present[cl] = True
            order = np.argsort(cl, kind="stable")
            for c, part in zip(*_split_by(cl[order], ar[order]), strict=True):
                areas[c].append(part)
        images += present
    for info in infos:
        values = np.concatenate(areas[info.id]) if areas[info.id] else np.zeros(0, np.int64)
        info.masks = int(values.size)
        info.images = int(images[info.id])
        info.median_area = float(np.median(values)) if values.size else 0.0


def _split_by(
    keys: npt.NDArray[np.int64], values: npt.NDArray[np.int64]
) -> tuple[list[int], list[npt.NDArray[np.int64]]]:
    """Group sorted ``keys`` and the matching ``values``."""
    if not keys.size:
        return [], []
    starts = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1])
    return [int(keys[s]) for s in starts], np.split(values, starts[1:])


def _candidates(
    src: Path, records: list[dict[str, Any]], centers: npt.NDArray[np.float32]
) -> dict[str, npt.NDArray[Any]]:
    """Distance of every mask (area >= MIN_CROP_AREA) of the scanned tables to its cluster centre.

    Returns:
        Parallel ``(M,)`` arrays ``cluster``, ``dist`` (squared), ``record`` (index), ``mask`` (row).
    """
    parts: dict[str, list[npt.NDArray[Any]]] = {"cluster": [], "dist": [], "record": [], "mask": []}
    k = centers.shape[0]
    for index, record in enumerate(records):
        table = pq.read_table(src / record["table"], columns=["feature", "cluster", "area"])
        if not table.num_rows:
            continue
        cl = np.asarray(table.column("cluster").to_numpy(), dtype=np.int64)
        ar = np.asarray(table.column("area").to_numpy(), dtype=np.int64)
        feats = np.asarray(table.column("feature").combine_chunks().flatten().to_numpy(), np.float32)
        feats = feats.reshape(table.num_rows, -1)
        keep = (cl >= 0) & (cl < k) & (ar >= MIN_CROP_AREA)
        if feats.shape[1] != centers.shape[1] or not keep.any():
            continue
        rows = np.flatnonzero(keep)
        diff = feats[rows] - centers[cl[rows]]
        parts["cluster"].append(cl[rows])
        parts["dist"].append(np.einsum("nc,nc->n", diff, diff))
        parts["record"].append(np.full(rows.size, index, dtype=np.int64))
        parts["mask"].append(rows)
    empty = {"cluster": np.int64, "dist": np.float32, "record": np.int64, "mask": np.int64}
    return {key: np.concatenate(v) if v else np.zeros(0, empty[key]) for key, v in parts.items()}


def _pick(dist: npt.NDArray[Any], image: npt.NDArray[np.int64], count: int) -> list[int]:
    """Indices of ``count`` picks: half nearest (distinct images first), half over the quantiles."""
    order = np.argsort(dist, kind="stable")
    chosen: list[int] = []
    used: set[int] = set()
    near = max(1, count // 2)
    for i in order:
        if len(chosen) >= near:
            break
        if int(image[i]) not in used:
            chosen.append(int(i))
            used.add(int(image[i]))
    for q in np.linspace(0.25, 0.95, max(count - len(chosen), 0)):
        start = int(q * (order.size - 1))
        ranked = np.concatenate([order[start:], order[:start][::-1]])
        fresh = [int(i) for i in ranked if int(i) not in chosen and int(image[i]) not in used]
        spare = [int(i) for i in ranked if int(i) not in chosen]
        pick = fresh[0] if fresh else (spare[0] if spare else None)
        if pick is not None:
            chosen.append(pick)
            used.add(int(image[pick]))
    return chosen[:count]


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels of ``mask`` with a 4-neighbour outside it, thickened to 2 px."""
    import cv2

    m = mask.astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(m, kernel) != cv2.erode(m, kernel)
    return np.asarray(edge, dtype=bool)


def _render_crop(
    rgb: npt.NDArray[np.uint8], rle: dict[str, Any], colour: npt.NDArray[np.uint8]
) -> Image.Image:
    """A square crop around the mask, the outside dimmed and the outline drawn in ``colour``."""
    mask = mask_utils.decode(rle).astype(bool)
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    side = max(w, h) * 1.5 + 12
    cx, cy = x + w / 2, y + h / 2
    height, width = mask.shape
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
    crop = rgb[y0:y1, x0:x1].astype(np.float32)
    inside = mask[y0:y1, x0:x1]
    scale = CROP_SIDE / max(crop.shape[0], crop.shape[1])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    crop[~inside] *= 0.55
    image = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)).copy()
    small = (
        np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
    )
    image[_outline(small)] = colour
    return Image.fromarray(image)


def _load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _save_jpeg(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.convert("RGB").save(tmp, format="JPEG", quality=85)


def _write_crops(
    src: Path, out: Path, records: list[dict[str, Any]], infos: list[ClusterInfo], per_cluster: int, scan: int
) -> set[Path]:
    """Pick and write the crops of every cluster; returns the files written."""
    scanned = _evenly(records, scan)
    centers = ClusterModel.load(src / "cluster_model.npz").centers
    cand = _candidates(src, scanned, centers)
    jobs: dict[int, list[tuple[int, int, int]]] = {}  # record -> (mask row, cluster, slot)
    for info in infos:
        sel = np.flatnonzero(cand["cluster"] == info.id)
        for slot, i in enumerate(_pick(cand["dist"][sel], cand["record"][sel], per_cluster)):
            j = sel[i]
            jobs.setdefault(int(cand["record"][j]), []).append((int(cand["mask"][j]), info.id, slot))
    colours = palette(len(infos))
    written: set[Path] = set()
    for index, picks in sorted(jobs.items()):
        record = scanned[index]
        rgb = _load_rgb(src / record["image"])
        table = pq.read_table(src / record["table"], columns=["rle_counts", "height", "width"])
        counts = table.column("rle_counts").to_pylist()
        for row, cluster, slot in picks:
            rle = {"size": [int(table.column("height")[row].as_py()), int(table.column("width")[row].as_py())],
                   "counts": counts[row]}  # fmt: skip
            path = out / "crops" / f"c{cluster:04d}_{slot}.jpg"
            _save_jpeg(_render_crop(rgb, rle, colours[cluster]), path)
            written.add(path)
    for info in infos:
        info.crops = sorted(
            (p.relative_to(out).as_posix() for p in written if p.name.startswith(f"c{info.id:04d}_")),
            key=lambda name: int(name.rsplit("_", 1)[1].split(".")[0]),
        )
    return written


def _neighbours(centers: npt.NDArray[np.float32], infos: list[ClusterInfo]) -> None:
    """Nearest other clusters by centre distance (Euclidean), for merge suggestions."""
    c = centers.astype(np.float64)
    sq = np.einsum("kc,kc->k", c, c)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * c @ c.T, 0))
    np.fill_diagonal(dist, np.inf)
    for info in infos:
        if info.id < dist.shape[0]:
            order = np.argsort(dist[info.id], kind="stable")[:NEIGHBOURS]
            info.neighbours = [
                (int(j), float(dist[info.id, j])) for j in order if np.isfinite(dist[info.id, j])
            ]


def _thumb(path: Path, dst: Path, side: int = THUMB_SIDE) -> tuple[int, int] | None:
    """Write a JPEG thumbnail (longest side ``side``) of an image file; its ``(width, height)``, None if unreadable."""
    try:
        with Image.open(path) as image:
            copy = image.convert("RGB")
    except (OSError, ValueError):
        return None
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    _save_jpeg(copy, dst)
    return copy.size


def _present(label_path: Path, k: int) -> list[tuple[int, float]]:
    """Clusters present in a label map (PNG, or a decimated read of a GeoTIFF) with their pixel share."""
    if label_path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(label_path) as src:
            factor = max(1.0, max(src.height, src.width) / 1024)
            shape = (max(1, int(src.height / factor)), max(1, int(src.width / factor)))
            values = src.read(1, out_shape=shape)
    else:
        values = load_label_png(label_path)
    clusters = label_value_to_cluster(values).reshape(-1)
    counts = np.bincount(clusters[(clusters >= 0) & (clusters < k)], minlength=k)
    total = max(1, clusters.size)
    return [(int(c), counts[c] / total) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]


def _image_entries(
    src: Path, out: Path, manifest: dict[str, Any], k: int, max_images: int, written: set[Path]
) -> dict[str, list[dict[str, Any]]]:
    """Thumbnails and legends of the sampled images, scenes and volume slices."""
    ok = [r for r in manifest.get("images", []) if r.get("status") == "ok" and r.get("label")]
    slice_of = {sid: v["id"] for v in manifest.get("volumes", []) for sid in v.get("slice_ids", [])}
    plain = [r for r in ok if r["id"] not in slice_of and not str(r["label"]).endswith((".tif", ".tiff"))]
    scenes = [r for r in ok if str(r["label"]).endswith((".tif", ".tiff"))]
    by_id = {r["id"]: r for r in ok}
    entries: dict[str, list[dict[str, Any]]] = {"images": [], "scenes": [], "volumes": []}

    def entry(record: dict[str, Any], side: int, with_image: bool) -> dict[str, Any] | None:
        name = f"{record['id']}.jpg"
        item: dict[str, Any] = {"id": record["id"], "legend": _present(src / record["label"], k)[:12]}
        for key, folder, wanted in (("image", "img", with_image), ("overlay", "ovl", True)):
            size = (
                _thumb(src / record[key], out / "thumbs" / folder / name, side)
                if wanted and record.get(key)
                else None
            )
            if size is not None:
                written.add(out / "thumbs" / folder / name)
                item[key] = f"thumbs/{folder}/{name}"
                item["size"] = size
        return item if ("overlay" in item or "image" in item) else None

    for record in _evenly(plain, max_images):
        item = entry(record, THUMB_SIDE, True)
        if item:
            entries["images"].append(item)
    for record in _evenly(scenes, max(1, max_images // 4)):
        item = entry(record, 2 * THUMB_SIDE, False)
        if item:
            entries["scenes"].append(item)
    for volume in _evenly([v for v in manifest.get("volumes", []) if v.get("slice_ids")], 8):
        slices = [entry(by_id[s], 240, False) for s in _evenly(volume["slice_ids"], 4) if s in by_id]
        entries["volumes"].append({"id": volume["id"], "shape": volume.get("shape"),
                                   "slices": [s for s in slices if s]})  # fmt: skip
    entries["counts"] = [
        {"images": len(plain), "scenes": len(scenes), "volumes": len(manifest.get("volumes", []))}
    ]
    return entries


def _ground_truth(
    src: Path, gt_dir: Path, infos: list[ClusterInfo], class_names: list[str] | None
) -> dict[str, Any]:
    """Per-cluster class composition and purity, and the dataset scores, over the images with GT."""
    conf, unlabeled, n_images = confusion_with_gt(src, gt_dir, len(infos))
    names = list(class_names or [])
    names += [f"class_{c}" for c in range(len(names), conf.shape[1])]
    for info in infos:
        row = conf[info.id]
        total = int(row.sum())
        if total:
            order = np.argsort(-row, kind="stable")[:4]
            info.composition = [(names[c], float(row[c] / total)) for c in order if row[c] > 0]
            info.purity = float(row.max() / total)
    metrics = metrics_from_confusion(conf, unlabeled)
    per_class = metrics["per_class_iou"]
    return {
        "images": n_images,
        "miou_hungarian": metrics["miou_hungarian"],
        "miou_majority": metrics["miou_majority"],
        "pixel_accuracy": metrics["pixel_accuracy"],
        "coverage": metrics["coverage"],
        "per_class": [(names[c], per_class[c]) for c in range(conf.shape[1])],
    }


def build_report(
    src: Path | str,
    out: Path | str | None = None,
    *,
    gt_dir: Path | str | None = None,
    class_names: list[str] | None = None,
    crops_per_cluster: int = 8,
    max_images: int = 48,
    scan_images: int = 2000,
) -> ReportResult:
    """Write the static report of an ``alps label`` directory (see the module docstring).

    Args:
        src: ``alps label`` output directory (read only).
        out: report folder (default ``src/report``); ``index.html`` and thumbnails go there.
        gt_dir: optional ground-truth PNGs (paired with ``src/labels`` as ``alps evaluate-labels`` does).
        class_names: names of GT classes 0..C-1.
        crops_per_cluster, max_images, scan_images: caps (see the module docstring).
    """
    import time

    start = time.perf_counter()
    src = Path(src)
    target = Path(out) if out is not None else src / "report"
    manifest = read_manifest(src)
    if "mapping" in manifest:
        raise MappingError(f"{src} is a mapped dataset; run `alps report` on the `alps label` output")
    k = int(manifest.get("num_classes") or 0)
    if not k or not (src / "cluster_model.npz").is_file():
        raise MappingError(f"{src} has no clusters (no cluster_model.npz); did `alps label` finish?")
    colours = palette(k)
    pixels = list(manifest.get("class_pixels") or [0] * k)
    infos = [ClusterInfo(c, _hex(colours[c]), int(pixels[c]) if c < len(pixels) else 0) for c in range(k)]
    ok = [r for r in manifest.get("images", []) if r.get("status") == "ok" and r.get("table")]
    _cluster_stats(src, ok, infos)
    plain = [r for r in ok if str(r["table"]).endswith(".parquet") and r.get("image")]
    written = _write_crops(src, target, plain, infos, crops_per_cluster, scan_images)
    _neighbours(ClusterModel.load(src / "cluster_model.npz").centers, infos)
    entries = _image_entries(src, target, manifest, k, max_images, written)
    gt = _ground_truth(src, Path(gt_dir), infos, class_names) if gt_dir is not None else None
    total_px = sum(int(r.get("height") or 0) * int(r.get("width") or 0) for r in ok)
    page = render_html(manifest, src, infos, entries, gt, total_px)
    write_text(target / "index.html", page)
    written.add(target / "index.html")
    for folder in ("crops", "thumbs"):
        _remove_stale(target / folder, written)
    listed = len(entries["images"]) + len(entries["scenes"]) + len(entries["volumes"])
    return ReportResult(target / "index.html", k, sum(len(i.crops) for i in infos), listed,
                        round(time.perf_counter() - start, 3))  # fmt: skip


def _remove_stale(folder: Path, keep: set[Path]) -> None:
    if folder.is_dir():
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_file() and path not in keep:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


# ----------------------------------------------------------------------------------------------
# the page

_CSS = """
:root{--fg:#1d2433;--muted:#667085;--line:#e4e7ec;--bg:#f7f8fa;--card:#fff;--accent:#2e6be6}
*{box-sizing:border-box}[id]{scroll-margin-top:100px}body{margin:0;font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
color:var(--fg);background:var(--bg)}a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:10px 20px;
display:flex;flex-wrap:wrap;gap:12px 24px;align-items:center}header h1{font-size:18px;margin:0}
.stats{color:var(--muted)}.toolbar{margin-left:auto;display:flex;gap:8px;align-items:center}
button{font:inherit;border:1px solid var(--line);background:#fff;border-radius:6px;padding:5px 10px;cursor:pointer}
button.primary{background:var(--accent);color:#fff;border-color:var(--accent)}button:hover{filter:brightness(.96)}
nav{padding:6px 20px;background:#fff;border-bottom:1px solid var(--line);display:flex;gap:16px}
main{padding:16px 20px;max-width:1400px;margin:0 auto}h2{font-size:16px;margin:24px 0 10px}
table{border-collapse:collapse;background:var(--card);width:100%;border:1px solid var(--line)}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f2f4f7;font-weight:600}td.l,th.l{text-align:left}tr.ignored td{opacity:.45}
.sw{display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:-2px;border:1px solid #0003}
.bar{display:inline-block;height:8px;background:var(--accent);border-radius:4px;vertical-align:middle}
.cluster{content-visibility:auto;contain-intrinsic-size:auto 420px;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px;margin:12px 0}
.cluster.ignored{opacity:.55}.cluster h3{margin:0 0 6px;font-size:15px;display:flex;gap:10px;align-items:center}
.meta{color:var(--muted);font-weight:400;font-size:13px}
.controls{display:flex;flex-wrap:wrap;gap:14px;align-items:center;margin:6px 0 10px}
.controls input[type=text]{width:220px;padding:4px 6px;border:1px solid #c9ced6;border-radius:5px;font:inherit}
select{font:inherit;padding:3px;width:240px}
.crops{display:flex;flex-wrap:wrap;gap:6px}.crops img{width:144px;height:144px;object-fit:contain;
background:#111;border-radius:6px}.near{margin-top:8px;color:var(--muted);display:flex;flex-wrap:wrap;gap:8px;
align-items:center}.near button{padding:1px 7px;font-size:12px}.comp{margin-top:6px;font-size:13px}
.pill{display:inline-block;border:1px solid var(--line);border-radius:10px;padding:0 7px;margin:1px 3px 1px 0;
background:#fafbfc;font-size:12px}.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));
gap:12px}.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px}
.pair{display:flex;gap:6px}.pair img{width:calc(50% - 3px);height:auto;border-radius:6px;background:#111}
.card h4{margin:0 0 6px;font-size:13px}.legend{margin-top:6px}.slices{display:flex;gap:6px;flex-wrap:wrap}
.slices img{width:180px;height:auto;border-radius:6px}pre{background:#0f172a;color:#e2e8f0;padding:10px;border-radius:8px;
overflow:auto;max-height:320px}.summary{color:var(--muted)}
"""

_JS = r"""
(function(){
const D=JSON.parse(document.getElementById('alps-data').textContent);
const K=D.k, KEY=D.key;
let S={names:{},merge:{},ignore:{}};
try{const saved=JSON.parse(localStorage.getItem(KEY)||'null');if(saved&&saved.names)S=saved;}catch(e){}
function save(){try{localStorage.setItem(KEY,JSON.stringify(S));}catch(e){}}
function nm(c){return (S.names[c]||'').trim();}
function label(c){return c+(nm(c)?' · '+nm(c):'');}
function root(c){const path=[];let r=c;while(S.merge[r]!==undefined&&S.merge[r]!==''&&!path.includes(r)){
 path.push(r);r=+S.merge[r];}if(path.includes(r)){const cyc=path.slice(path.indexOf(r));r=Math.min(...cyc);}return r;}
function mapping(){const classes=new Map(),ignore=[];
 for(let c=0;c<K;c++){const r=root(c);if(S.ignore[c]||S.ignore[r]){ignore.push(c);continue;}
  const name=nm(r)||('cluster_'+r);if(!classes.has(name))classes.set(name,[]);classes.get(name).push(c);}
 return {classes,ignore};}
function toYAML(m){const out=['# alps map mapping from the report of '+D.dataset.replace(/\s+/g,' '),
 '# classes: name -> cluster ids (class ids 0..C-1 in this order); ignore: painted 255','classes:'];
 for(const [n,ids] of m.classes)out.push('  '+JSON.stringify(n)+': ['+ids.join(', ')+']');
 out.push('ignore: ['+m.ignore.join(', ')+']');out.push('num_clusters: '+K);return out.join('\n')+'\n';}
function toJSON(m){return JSON.stringify({classes:Object.fromEntries(m.classes),ignore:m.ignore,num_clusters:K},null,2)+'\n';}
function download(name,text,type){const a=document.createElement('a');
 a.href=URL.createObjectURL(new Blob([text],{type:type}));a.download=name;document.body.appendChild(a);a.click();
 setTimeout(function(){URL.revokeObjectURL(a.href);a.remove();},1000);}
function opt(o){return '<option value="'+o+'">'+o+(nm(o)?' · '+esc(nm(o)):'')+'</option>';}
function options(sel,c,full){const cur=S.merge[c]===undefined?'':String(S.merge[c]);const parts=['<option value="">— none —</option>'];
 if(full){for(const o of D.order){if(o!==c)parts.push(opt(o));}}else if(cur!==''){parts.push(opt(+cur));}
 sel.innerHTML=parts.join('');sel.value=cur;sel.dataset.full=full?'1':'';}
function esc(t){return t.replace(/[&<>"]/g,function(ch){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[ch];});}
const statusEls=[],rowEls=[];for(let c=0;c<K;c++){statusEls.push([]);rowEls.push([]);}
document.querySelectorAll('[data-status]').forEach(function(el){const c=+el.dataset.status;if(c<K)statusEls[c].push(el);});
document.querySelectorAll('[data-row]').forEach(function(el){const c=+el.dataset.row;if(c<K)rowEls[c].push(el);});
for(let c=0;c<K;c++){const a=document.getElementById('cluster-'+c);if(a)rowEls[c].push(a);}
function refresh(){const m=mapping();
 for(let c=0;c<K;c++){const r=root(c),ign=!!(S.ignore[c]||S.ignore[r]);
  const st=ign?'ignored':(r!==c?'→ '+label(r):(nm(c)||''));
  for(const el of statusEls[c])if(el.textContent!==st)el.textContent=st;
  for(const el of rowEls[c])el.classList.toggle('ignored',ign);}
 document.getElementById('mapping-preview').textContent=toYAML(m);
 document.getElementById('mapping-summary').textContent=m.classes.size+' classes, '+m.ignore.length+' ignored clusters';}
function staleOptions(){document.querySelectorAll('select.merge').forEach(function(s){if(s.dataset.full)options(s,+s.dataset.cluster,false);});}
document.querySelectorAll('input.name').forEach(function(el){const c=+el.dataset.cluster;el.value=S.names[c]||'';
 el.addEventListener('input',function(){S.names[c]=el.value;save();refresh();});
 el.addEventListener('change',staleOptions);});
document.querySelectorAll('select.merge').forEach(function(el){const c=+el.dataset.cluster;options(el,c,false);
 const fill=function(){if(!el.dataset.full)options(el,c,true);};
 ['focus','pointerdown','mousedown','keydown'].forEach(function(ev){el.addEventListener(ev,fill);});
 el.addEventListener('change',function(){if(el.value==='')delete S.merge[c];else S.merge[c]=+el.value;save();refresh();});});
document.querySelectorAll('input.ignore').forEach(function(el){const c=+el.dataset.cluster;el.checked=!!S.ignore[c];
 el.addEventListener('change',function(){if(el.checked)S.ignore[c]=true;else delete S.ignore[c];save();refresh();});});
document.querySelectorAll('button.merge-into').forEach(function(b){b.addEventListener('click',function(){
 const c=+b.dataset.cluster,t=+b.dataset.target;S.merge[c]=t;save();
 const sel=document.querySelector('select.merge[data-cluster="'+c+'"]');if(sel){options(sel,c,!!sel.dataset.full);}refresh();});});
document.getElementById('dl-yaml').addEventListener('click',function(){download('mapping.yaml',toYAML(mapping()),'text/yaml');});
document.getElementById('dl-json').addEventListener('click',function(){download('mapping.json',toJSON(mapping()),'application/json');});
document.getElementById('reset').addEventListener('click',function(){if(!confirm('Forget all names, merges and ignores?'))return;
 S={names:{},merge:{},ignore:{}};save();document.querySelectorAll('input.name').forEach(function(e){e.value='';});
 document.querySelectorAll('input.ignore').forEach(function(e){e.checked=false;});
 document.querySelectorAll('select.merge').forEach(function(e){options(e,+e.dataset.cluster,false);});refresh();});
window.alpsMapping=function(){const m=mapping();return {classes:Object.fromEntries(m.classes),ignore:m.ignore};};
refresh();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def _overview(infos: list[ClusterInfo], order: list[int], total_labelled: int, gt: bool) -> str:
    top = max((i.pixels for i in infos), default=1) or 1
    rows = []
    for c in order:
        i = infos[c]
        share = i.pixels / total_labelled if total_labelled else 0.0
        purity = f"<td>{_pct(i.purity)}</td>" if gt else ""
        rows.append(
            f'<tr data-row="{c}"><td class="l"><span class="sw" style="background:{i.colour}"></span> '
            f'<a href="#cluster-{c}">{c}</a></td><td class="l" data-status="{c}"></td>'
            f'<td><span class="bar" style="width:{max(2, round(120 * i.pixels / top))}px"></span></td>'
            f"<td>{_pct(share)}</td><td>{i.masks}</td><td>{i.images}</td><td>{i.median_area:.0f}</td>{purity}</tr>"
        )
    head = "<th>purity</th>" if gt else ""
    return (
        '<table id="overview-table"><thead><tr><th class="l">cluster</th><th class="l">name / mapping</th>'
        f"<th></th><th>share of labelled px</th><th>masks</th><th>images</th><th>median mask px</th>{head}"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _cluster_section(info: ClusterInfo, infos: list[ClusterInfo], share: float) -> str:
    c = info.id
    crops = (
        "".join(
            f'<img src="{_e(p)}" alt="cluster {c} mask {n}" loading="lazy" '
            f'width="{CROP_SIDE}" height="{CROP_SIDE}">'
            for n, p in enumerate(info.crops)
        )
        or '<span class="meta">no crop (no mask of this cluster in the sampled plain images)</span>'
    )
    near = "".join(
        f'<span><span class="sw" style="background:{infos[j].colour}"></span> <a href="#cluster-{j}">{j}</a> '
        f'<span class="meta">d={d:.2f}</span> <button class="merge-into" data-cluster="{c}" data-target="{j}" '
        f'title="merge cluster {c} into cluster {j}">merge into {j}</button></span>'
        for j, d in info.neighbours
    )
    comp = ""
    if info.composition:
        parts = " ".join(f'<span class="pill">{_e(n)} {_pct(v, 0)}</span>' for n, v in info.composition)
        comp = f'<div class="comp">ground truth: {parts} <span class="meta">purity {_pct(info.purity)}</span></div>'
    return (
        f'<article class="cluster" id="cluster-{c}"><h3><span class="sw" style="background:{info.colour}"></span>'
        f'Cluster {c} <span class="meta">{_pct(share)} of labelled px · {info.masks} masks · {info.images} image{"s" if info.images != 1 else ""} · '
        f'median {info.median_area:.0f} px</span> <span class="meta" data-status="{c}"></span></h3>'
        f'<div class="controls"><label>Name <input type="text" class="name" data-cluster="{c}" '
        f'placeholder="cluster_{c}"></label><label>Merge into <select class="merge" data-cluster="{c}">'
        f'<option value="">— none —</option></select></label><label><input type="checkbox" class="ignore" '
        f'data-cluster="{c}"> ignore (paint 255)</label></div><div class="crops">{crops}</div>{comp}'
        f'<div class="near">nearest clusters: {near or "none"}</div></article>'
    )


def _wh(entry: dict[str, Any]) -> str:
    """``width``/``height`` attributes of a thumbnail, so lazy images hold their place before loading."""
    size = entry.get("size")
    return f'width="{size[0]}" height="{size[1]}"' if size else ""


def _legend(items: list[tuple[int, float]], infos: list[ClusterInfo]) -> str:
    return "".join(
        f'<a class="pill" href="#cluster-{c}"><span class="sw" style="background:{infos[c].colour}"></span> '
        f'{c} <span data-status="{c}"></span> <span class="meta">{_pct(v, 0)}</span></a>'
        for c, v in items
        if c < len(infos)
    )


def _images_section(entries: dict[str, Any], infos: list[ClusterInfo]) -> str:
    counts = entries["counts"][0]
    out = []
    if entries["images"]:
        cards = "".join(
            f'<div class="card"><h4>{_e(e["id"])}</h4><div class="pair">'
            + "".join(
                f'<img src="{_e(e[k])}" alt="{k} {_e(e["id"])}" {_wh(e)} loading="lazy">'
                for k in ("image", "overlay")
                if k in e
            )
            + f'</div><div class="legend">{_legend(e["legend"], infos)}</div></div>'
            for e in entries["images"]
        )
        note = f"{len(entries['images'])} of {counts['images']} images (evenly sampled): image | overlay"
        out.append(
            f'<h2 id="images">Images</h2><p class="summary">{note}</p><div class="cards">{cards}</div>'
        )
    if entries["scenes"]:
        cards = "".join(
            f'<div class="card"><h4>{_e(e["id"])}</h4><img src="{_e(e["overlay"])}" alt="preview {_e(e["id"])}" {_wh(e)} '
            f'style="width:100%;height:auto" loading="lazy"><div class="legend">{_legend(e["legend"], infos)}</div></div>'
            for e in entries["scenes"]
            if "overlay" in e
        )
        out.append(f'<h2 id="scenes">Scenes</h2><p class="summary">{counts["scenes"]} scene(s): preview</p>'
                   f'<div class="cards">{cards}</div>')  # fmt: skip
    if entries["volumes"]:
        vcards: list[str] = []
        for v in entries["volumes"]:
            legend: dict[int, float] = {}
            for s in v["slices"]:
                for c, share in s["legend"]:
                    legend[c] = legend.get(c, 0.0) + share / max(1, len(v["slices"]))
            imgs = "".join(f'<img src="{_e(s["overlay"])}" alt="{_e(s["id"])}" title="{_e(s["id"])}" {_wh(s)} loading="lazy">'
                           for s in v["slices"] if "overlay" in s)  # fmt: skip
            vcards.append(f'<div class="card"><h4>{_e(v["id"])} <span class="meta">{_e(v.get("shape"))}</span></h4>'
                         f'<div class="slices">{imgs}</div><div class="legend">'
                         f'{_legend(sorted(legend.items(), key=lambda t: -t[1])[:12], infos)}</div></div>')  # fmt: skip
        out.append(f'<h2 id="volumes">Volumes</h2><div class="cards">{"".join(vcards)}</div>')
    return "".join(out)


def _gt_section(gt: dict[str, Any] | None) -> str:
    if gt is None:
        return ""
    rows = "".join(f'<tr><td class="l">{_e(n)}</td><td>{_pct(v)}</td></tr>' for n, v in gt["per_class"])
    return (
        f'<h2 id="ground-truth">Ground truth ({gt["images"]} images)</h2><p>mIoU Hungarian '
        f"<b>{_pct(gt['miou_hungarian'])}</b> · mIoU majority <b>{_pct(gt['miou_majority'])}</b> · pixel accuracy "
        f"{_pct(gt['pixel_accuracy'])} · coverage {_pct(gt['coverage'])}</p>"
        f'<table style="width:auto"><tr><th class="l">class</th><th>IoU (majority)</th></tr>{rows}</table>'
    )


def render_html(
    manifest: dict[str, Any],
    src: Path,
    infos: list[ClusterInfo],
    entries: dict[str, Any],
    gt: dict[str, Any] | None,
    total_px: int,
) -> str:
    """The report page (sections are static HTML; the script only adds the naming state)."""
    k = len(infos)
    labelled = sum(i.pixels for i in infos)
    order = sorted(range(k), key=lambda c: (-infos[c].pixels, c))
    name = src.resolve().name
    key = f"alps-report:{manifest.get('params_hash', '')}:{manifest.get('created', '')}:{k}"
    data = json.dumps({"k": k, "key": key, "dataset": name, "order": order}).replace("</", "<\\/")
    model = (manifest.get("model") or {}).get("name", "?")
    counts = entries["counts"][0]
    stats = (f"{k} clusters · {counts['images']} images" + (f" · {counts['scenes']} scenes" if counts["scenes"] else "")
             + (f" · {counts['volumes']} volumes" if counts["volumes"] else "")
             + f" · coverage {_pct(labelled / total_px if total_px else None)} labelled · model {_e(model)}")  # fmt: skip
    sections = "".join(
        _cluster_section(infos[c], infos, infos[c].pixels / labelled if labelled else 0) for c in order
    )
    nav = ['<a href="#overview">Overview</a>', '<a href="#clusters">Clusters</a>']
    nav += [f'<a href="#{s}">{s.title()}</a>' for s in ("images", "scenes", "volumes") if entries[s]]
    nav += ['<a href="#ground-truth">Ground truth</a>'] if gt else []
    nav += ['<a href="#mapping">Mapping</a>']
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>alps report · {_e(name)}</title><link rel="icon" href="data:,"><style>{_CSS}</style></head>
<body><header><h1>alps report · {_e(name)}</h1><span class="stats">{stats}</span>
<div class="toolbar"><span class="summary" id="mapping-summary"></span>
<button class="primary" id="dl-yaml">Download mapping (YAML)</button><button id="dl-json">JSON</button>
<button id="reset">Reset</button></div></header><nav>{"".join(nav)}</nav><main>
<h2 id="overview">Overview</h2><p class="summary">Clusters by share of labelled pixels. Name a cluster, merge it into
another or ignore it below; the page remembers your choices in this browser. Then download the mapping and run
<code>alps map DIR --mapping mapping.yaml</code>.</p>{_overview(infos, order, labelled, gt is not None)}
{_gt_section(gt)}<h2 id="clusters">Clusters</h2>{sections}{_images_section(entries, infos)}
<h2 id="mapping">Mapping</h2><pre id="mapping-preview"></pre></main>
<script type="application/json" id="alps-data">{data}</script><script>{_JS}</script></body></html>
"""
