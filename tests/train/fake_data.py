"""Small datasets built from the real deepforest sample images, for the training tests.

* ``make_tree_dataset``: mmsegmentation layout, tree / not-tree maps from the rasterised tree boxes, split
  by image (train: OSBS_029, val: SOAP_061).
* ``make_colour_pseudo_dataset``: ``alps label`` layout whose labels are k-means clusters of pixel colours,
  with the darkest pixels left unlabeled (255). These are NOT ALPS labels, just real images with
  structured, learnable labels standing in for them.

Run ``python tests/train/fake_data.py OUT`` to write both for a look.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from alps.samples.neon import TreeImage, rasterize_boxes
from alps.train.data import read_image, write_tiles

SCALE = 0.48  # 400 px sample images -> 192 px -> four 96 px tiles
TILE = 96


def make_tree_dataset(samples: dict[str, TreeImage], root: Path) -> Path:
    for split, image_id in (("train", "OSBS_029"), ("val", "SOAP_061")):
        sample = samples[image_id]
        assert sample.boxes is not None
        image = read_image(sample.image)
        label = rasterize_boxes(sample.boxes, image.shape[:2])
        write_tiles(image, label, root / "img_dir" / split, root / "ann_dir" / split, image_id, TILE, SCALE)
    (root / "classes.json").write_text(json.dumps({"0": "not_tree", "1": "tree"}))
    return root


def kmeans_colours(pixels: np.ndarray, k: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """Cluster centres ``(k, 3)`` of ``(N, 3)`` float pixels (plain Lloyd iterations)."""
    rng = np.random.default_rng(seed)
    centres = pixels[rng.choice(len(pixels), k, replace=False)]
    for _ in range(iterations):
        nearest = ((pixels[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack(
            [pixels[nearest == c].mean(0) if (nearest == c).any() else centres[c] for c in range(k)]
        )
    return centres


def make_colour_pseudo_dataset(
    samples: dict[str, TreeImage], root: Path, k: int = 4, write_num_classes: bool = True
) -> Path:
    images = {i: read_image(s.image) for i, s in samples.items()}
    pixels = np.concatenate([im[::8, ::8].reshape(-1, 3) for im in images.values()]).astype(np.float64)
    centres = kmeans_colours(pixels, k)
    splits = {"OSBS_029": "train", "SOAP_031": "train", "SOAP_061": "val"}
    for image_id, image in images.items():
        flat = image.reshape(-1, 3).astype(np.float64)
        label = ((flat[:, None] - centres[None]) ** 2).sum(-1).argmin(1).astype(np.uint8)
        label = label.reshape(image.shape[:2])
        label[image.mean(-1) < 55] = 255  # "unlabeled", as SAM leaves gaps
        split = splits.get(image_id, "train")
        write_tiles(image, label, root / "images" / split, root / "labels" / split, image_id, TILE, SCALE)
    manifest: dict = {"ignore_index": 255, "note": "k-means colour clusters standing in for ALPS labels"}
    if write_num_classes:
        manifest["num_classes"] = k
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


if __name__ == "__main__":
    from alps.samples.neon import tree_images

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fake_datasets")
    found = {s.id: s for s in tree_images(["OSBS_029", "SOAP_061", "SOAP_031"])}
    print(make_tree_dataset(found, out / "trees"))
    print(make_colour_pseudo_dataset(found, out / "pseudo"))
    for path in sorted((out / "pseudo" / "labels" / "train").glob("*.png"))[:1]:
        print(path, np.unique(np.asarray(Image.open(path)), return_counts=True))
