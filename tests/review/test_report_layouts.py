"""`alps report` on a synthetic dataset with plain images, a scene and a volume (no SAM), and K > 255."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from alps.geo.outputs import write_label_geotiff
from alps.labeling.cluster import ClusterModel
from alps.labeling.paint import paint_label_map, save_label_png, save_overlay
from alps.labeling.table import set_clusters, write_mask_table
from alps.review.report import build_report


def plain_image(root: Path, image_id: str, k: int, rng: np.random.Generator, centers: np.ndarray) -> dict:
    h, w = 48, 64
    rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / "train" / f"{image_id}.png")
    records, clusters = [], rng.integers(0, k, 6)
    for _ in range(6):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, 32, 2)
        mask[y : y + 16, x : x + 20] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        records.append({"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    table = root / "tables" / f"{image_id}.parquet"
    write_mask_table(table, image_id, records, centers[clusters] + 0.01, (h, w))
    set_clusters(table, clusters)
    label = paint_label_map(h, w, [r["segmentation"] for r in records], clusters, num_clusters=k)
    save_label_png(root / "labels" / "train" / f"{image_id}.png", label)
    save_overlay(root / "overlays" / f"{image_id}.jpg", rgb, label)
    return {"id": image_id, "status": "ok", "split": "train", "height": h, "width": w,
            "image": f"images/train/{image_id}.png", "label": f"labels/train/{image_id}.png",
            "overlay": f"overlays/{image_id}.jpg", "table": f"tables/{image_id}.parquet"}  # fmt: skip


def dataset(root: Path, k: int) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("images/train", "tables", "labels/train", "overlays"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    centers = rng.normal(size=(k, 4)).astype(np.float32)
    ClusterModel(centers=centers, seed=0, n_seen=0, inertia=0.0, k=k).save(root / "cluster_model.npz")
    images = [plain_image(root, f"im{i}", k, rng, centers) for i in range(3)]
    slices = [plain_image(root, f"ct_z{z:04d}", k, rng, centers) for z in range(5)]
    scene_values = np.full((300, 200), 7, np.uint8)
    write_label_geotiff(root / "labels" / "train" / "scene.tif", 300, 200, None, (1, 0, 0, 0, -1, 0), "uint8",
                        lambda b: scene_values[b[0] : b[1], b[2] : b[3]])  # fmt: skip
    Image.fromarray(np.full((300, 200, 3), 120, np.uint8)).save(root / "overlays" / "scene.jpg")
    (root / "tables" / "scene").mkdir()
    scene = {"id": "scene", "status": "ok", "split": "train", "height": 300, "width": 200,
             "label": "labels/train/scene.tif", "overlay": "overlays/scene.jpg",
             "table": "tables/scene"}  # fmt: skip
    volume = {"id": "ct", "status": "ok", "shape": [48, 64, 5], "slice_ids": [s["id"] for s in slices]}
    pixels = np.zeros(k, np.int64)
    for r in [*images, *slices]:
        values = np.asarray(Image.open(root / r["label"]), dtype=np.int64)
        values = np.where(values > 255, values - 1, values)
        pixels += np.bincount(values[values != 255], minlength=k)[:k]
    pixels[7] += 300 * 200
    manifest = {"num_classes": k, "class_pixels": pixels.tolist(), "cluster_sizes": [1] * k,
                "images": [*images, scene, *slices], "volumes": [volume],
                "model": {"name": "test"}}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_report_lists_images_scenes_and_volume_slices(tmp_path: Path) -> None:
    run = dataset(tmp_path / "run", 12)
    result = build_report(run, crops_per_cluster=3)
    page = result.path.read_text()
    assert result.path == run / "report" / "index.html"
    assert all(f'id="cluster-{c}"' in page for c in range(12))
    assert 'id="scenes"' in page and "preview scene" in page
    assert 'id="volumes"' in page and page.count('title="ct_z') == 4  # a few slices, evenly sampled
    assert "3 of 3 images" in page  # slices are listed under their volume, not as images
    for crop in (run / "report" / "crops").glob("*.jpg"):
        with Image.open(crop) as image:
            assert max(image.size) == 144
    assert result.crops <= 3 * 12
    # a second report replaces the first: no stale thumbnails
    build_report(run, crops_per_cluster=1)
    names = [p.name for p in (run / "report" / "crops").glob("*.jpg")]
    assert names and all(n.endswith("_0.jpg") for n in names)


def test_report_with_more_than_255_clusters(tmp_path: Path) -> None:
    run = dataset(tmp_path / "wide", 300)
    result = build_report(run, crops_per_cluster=1)
    page = result.path.read_text()
    assert 'id="cluster-299"' in page and result.clusters == 300
