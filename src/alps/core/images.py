"""Finding input images and reading them as RGB ``uint8`` arrays.

Conversion rule of :func:`read_image` (what SAM sees; applied identically on every run):

========================  ===========================================================================
source                    result (always ``H x W x 3`` ``uint8``)
========================  ===========================================================================
8-bit RGB                 unchanged
8-bit grayscale / 1-bit   the single band replicated to three channels (1-bit: 0 / 255)
grayscale + alpha         alpha dropped, gray band replicated (noted ``alpha dropped``)
RGBA                      alpha dropped, not composited (noted ``alpha dropped``)
palette (``P``)           palette looked up to RGB (transparency dropped)
CMYK / YCbCr / LAB / HSV  converted to RGB by Pillow
16/32-bit integer, float  the input rule of :mod:`alps.core.rgb` (joint stretch, one fallback): the
                          2nd and 98th percentiles of all finite
                          values (all bands together, so colour balance is kept) map to 0 and 255,
                          values outside are clipped, NaN/inf become 0 (noted ``stretched``)
more than 3 bands         the first three bands (multispectral band selection: later issue)
two bands                 the first band replicated
EXIF orientation tag      applied (the array is upright, as viewers show it)
========================  ===========================================================================

TIFF files are decoded with ``tifffile`` (multi-band and high-bit-depth rasters), falling back
to Pillow; 16-bit colour PNGs with OpenCV (Pillow would truncate them to 8 bits).
Images smaller than :data:`MIN_SIDE` pixels on a side, empty, corrupt or unsupported files raise
:class:`ImageReadError`.

Decompression-bomb guard: a file Pillow decodes may hold at most :func:`max_image_pixels` pixels
(default :data:`MAX_IMAGE_PIXELS`, 2**30 = a 32768 x 32768 scene, 3 GiB as RGB; set
``ALPS_MAX_IMAGE_PIXELS`` or pass ``max_pixels``); a larger one raises :class:`ImageReadError` before
its pixels are decoded. Pillow's own ``Image.MAX_IMAGE_PIXELS`` is set only while a file is
opened (under a lock) and restored afterwards, so importing alps changes nothing in Pillow.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from alps.core.rgb import STRETCH_PERCENTILES, stretch_to_uint8, to_rgb_uint8

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MIN_SIDE",
    "STRETCH_PERCENTILES",
    "ImageFile",
    "ImageReadError",
    "LoadedImage",
    "find_images",
    "iter_images",
    "load_image",
    "max_image_pixels",
    "read_image",
    "stretch_to_uint8",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MIN_SIDE = 32
MAX_ID_LENGTH = 120

MAX_IMAGE_PIXELS = 1 << 30
"""Default pixel limit of the decompression-bomb guard (aerial scenes are legitimately large)."""
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageReadError(RuntimeError):
    """An input image could not be read; the message names the file and the reason."""


@dataclass(frozen=True)
class ImageFile:
    """One input image.

    ``id`` is unique within one :func:`find_images` call, filesystem-safe and derived only from
    the path relative to its input root (not from the file's content), so re-runs keep it.
    """

    path: Path
    id: str
    relpath: str  # posix path relative to the input root it was found under


@dataclass
class LoadedImage:
    """Pixels plus how they were obtained from the file."""

    pixels: np.ndarray  # (H, W, 3) uint8
    source_mode: str  # e.g. "RGB", "RGBA", "I;16", "uint16x4"
    notes: list[str] = field(default_factory=list)  # conversions applied, e.g. "alpha dropped"

    @property
    def converted(self) -> bool:
        """True when the pixels differ from a plain 8-bit RGB decode of the file."""
        return self.source_mode != "RGB" or bool(self.notes)


# ----------------------------------------------------------------------------------------------
# finding


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip hidden folders
        found.extend(Path(dirpath) / f for f in filenames if _is_image(Path(f)))
    return found


_UNSAFE = re.compile(r"[^\w.\-]+")  # \w is unicode-aware: letters and digits of any script are kept


def _safe_id(relpath: str) -> str:
    stem = relpath.rsplit(".", 1)[0] if "." in Path(relpath).name else relpath
    text = unicodedata.normalize("NFC", stem).replace("/", "__")
    text = _UNSAFE.sub("_", text).strip("._") or "image"
    if len(text) > MAX_ID_LENGTH:
        text = text[:MAX_ID_LENGTH] + "-" + _short_hash(relpath)
    return text


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def find_images(inputs: str | Path | Sequence[str | Path]) -> list[ImageFile]:
    """Find PNG, JPEG and TIFF files under ``inputs`` (files or folders, searched recursively).

    Hidden files and folders (name starting with ``.``) are skipped. The id of an image is its
    path relative to the input folder (or its file name, for a file given directly) without the
    extension, with ``/`` replaced by ``__`` and characters other than letters, digits, ``.``,
    ``-`` and ``_`` replaced by ``_``. Ids that would clash (``a/x.png`` vs ``a__x.png``,
    ``x.png`` vs ``x.jpg``, the same name under two inputs, or names differing only in case)
    all get a short hash of their input root and relative path appended.

    Returns the images sorted by input order, then relative path. Raises ``FileNotFoundError``
    for an input that does not exist and ``ValueError`` if no image is found.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    entries: list[tuple[Path, str, str]] = []  # (path, relpath, disambiguation key)
    seen: set[Path] = set()
    for index, item in enumerate(inputs):
        root = Path(item).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"input not found: {root}")
        if root.is_dir():
            files = [(p, p.relative_to(root).as_posix()) for p in _walk(root)]
        else:
            files = [(root, root.name)]
        for path, rel in sorted(files, key=lambda pr: pr[1]):
            resolved = path.resolve()
            if resolved in seen:  # the same file reached through two inputs
                continue
            seen.add(resolved)
            entries.append((path, rel, f"{index}:{rel}"))
    if not entries:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {[str(i) for i in inputs]}")
    ids = [_safe_id(rel) for _, rel, _ in entries]
    counts = Counter(i.casefold() for i in ids)
    out = []
    for (path, rel, key), image_id in zip(entries, ids, strict=True):
        if counts[image_id.casefold()] > 1:
            image_id = f"{image_id}-{_short_hash(key)}"
        out.append(ImageFile(path=path, id=image_id, relpath=rel))
    return out


# ----------------------------------------------------------------------------------------------
# reading


def _to_rgb(array: np.ndarray, source_mode: str, notes: list[str]) -> np.ndarray:
    """Apply the band and bit-depth part of the conversion rule to an (H, W[, C]) array."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"unsupported array shape {array.shape}")
    bands = array.shape[2]
    if bands == 2:
        notes.append("alpha dropped" if source_mode in {"LA", "La"} else "first band used")
        array = array[:, :, :1]
    elif bands == 4 and source_mode in {"RGBA", "RGBa"}:
        notes.append("alpha dropped")
        array = array[:, :, :3]
    elif bands > 3:
        notes.append(f"first 3 of {bands} bands used")
        array = array[:, :, :3]
    if array.dtype not in (np.uint8, np.bool_):
        notes.append(f"stretched {array.dtype} ({STRETCH_PERCENTILES[0]:g}-{STRETCH_PERCENTILES[1]:g}%)")
    return to_rgb_uint8(array)


def max_image_pixels() -> int:
    """The guard's pixel limit: ``ALPS_MAX_IMAGE_PIXELS`` if set (a positive integer), else the default."""
    value = os.environ.get("ALPS_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) <= 0:
        raise ValueError(f"ALPS_MAX_IMAGE_PIXELS must be a positive integer, got {value!r}")
    return int(value)


@contextmanager
def _open_bounded(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """``Image.open`` (header only) with Pillow's bomb check at ``max_pixels``, then restored; raises
    :class:`ImageReadError` for an image of more pixels."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns above it and raises above twice it
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError as err:
            raise ImageReadError(f"{path}: {err}; raise the limit with ALPS_MAX_IMAGE_PIXELS") from err
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with opened:
        width, height = opened.size
        if width * height > max_pixels:
            raise ImageReadError(
                f"{path}: image is {width}x{height} = {width * height} px, more than the limit of "
                f"{max_pixels} px (decompression-bomb guard); raise it with ALPS_MAX_IMAGE_PIXELS"
            )
        yield opened


def _read_pil(path: Path, max_pixels: int) -> LoadedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "palette images with transparency" chatter
        with _open_bounded(path, max_pixels) as opened:
            opened.load()
            image: Image.Image = opened
            notes: list[str] = []
            orientation = image.getexif().get(0x0112, 1)
            if orientation not in (None, 1):
                notes.append(f"EXIF orientation {orientation} applied")
                image = ImageOps.exif_transpose(image)
            mode = image.mode
            if mode in {"P", "PA"}:
                notes.append("palette to RGB")
                rgba = np.asarray(image.convert("RGBA"))
                if rgba[:, :, 3].min() < 255:
                    notes.append("alpha dropped")
                return LoadedImage(_to_rgb(rgba[:, :, :3], mode, notes), mode, notes)
            if mode in {"CMYK", "YCbCr", "LAB", "HSV"}:
                notes.append(f"{mode} to RGB")
                image = image.convert("RGB")
            elif mode == "1":
                image = image.convert("L")
            array = np.asarray(image)
    return LoadedImage(_to_rgb(array, mode, notes), mode, notes)


def _read_tiff(path: Path) -> LoadedImage | None:
    """Decode with tifffile; None when tifffile is missing or cannot decode (Pillow then tries)."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        array = tifffile.imread(path, key=0)
    except Exception:
        return None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] <= 16 and array.shape[0] < min(array.shape[1:]):
        array = np.moveaxis(array, 0, -1)  # planar (bands, H, W) -> (H, W, bands)
    if array.ndim not in (2, 3):
        return None
    bands = 1 if array.ndim == 2 else array.shape[2]
    mode = "RGB" if (array.dtype == np.uint8 and bands == 3) else f"{array.dtype}x{bands}"
    notes: list[str] = []
    return LoadedImage(_to_rgb(array, mode, notes), mode, notes)


def _png_is_16bit_colour(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(26)
    # IHDR: bit depth at byte 24, colour type at 25 (2 = RGB, 6 = RGBA)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def _read_png16(path: Path) -> LoadedImage:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)  # via numpy: cv2.imread cannot open unicode paths everywhere
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("OpenCV could not decode the file")
    mode = "RGBA;16" if array.shape[2] == 4 else "RGB;16"
    array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]  # BGR(A) -> RGB(A)
    notes: list[str] = []
    if array.shape[2] == 4:
        notes.append("alpha dropped")
        array = array[:, :, :3]
    return LoadedImage(_to_rgb(array, mode, notes), mode, notes)


def load_image(path: str | Path, *, max_pixels: int | None = None, min_side: int = MIN_SIDE) -> LoadedImage:
    """Read ``path`` following the module's conversion rule; raise :class:`ImageReadError` on failure.

    ``max_pixels``: the decompression-bomb limit for files Pillow decodes (default
    :func:`max_image_pixels`); ``min_side``: the smallest side accepted, in pixels (training tiles
    may be smaller than what SAM needs).
    """
    path = Path(path)
    limit = max_image_pixels() if max_pixels is None else max_pixels
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageReadError(f"{path}: cannot access file ({err.strerror or err})") from err
    if size == 0:
        raise ImageReadError(f"{path}: empty file")
    try:
        loaded = None
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            loaded = _read_tiff(path)
        elif suffix == ".png" and _png_is_16bit_colour(path):
            loaded = _read_png16(path)
        if loaded is None:
            loaded = _read_pil(path, limit)
    except ImageReadError:
        raise
    except Exception as err:  # Pillow raises many types for corrupt data (OSError, SyntaxError, ...)
        raise ImageReadError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    height, width = loaded.pixels.shape[:2]
    if min(height, width) < min_side:
        raise ImageReadError(f"{path}: image is {width}x{height} px; at least {min_side} px per side needed")
    return loaded


def read_image(path: str | Path) -> np.ndarray:
    """Read ``path`` as an ``(H, W, 3) uint8`` RGB array (see the module docstring for the rule)."""
    return load_image(path).pixels


def iter_images(files: Iterable[ImageFile]) -> Iterable[tuple[ImageFile, LoadedImage | ImageReadError]]:
    """Yield each file with its loaded image, or the error it raised (so a caller can go on)."""
    for item in files:
        try:
            yield item, load_image(item.path)
        except ImageReadError as err:
            yield item, err
