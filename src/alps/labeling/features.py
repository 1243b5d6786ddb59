"""One feature vector per mask, pooled inside the mask from a named feature source.

Feature sources (:func:`mask_features`):

* ``sam`` — the SAM image embedding pooled inside the mask (the paper's features; :func:`pool_mask_features`);
* ``sam+stats`` — ``sam`` plus per-mask colour (CIELAB mean and spread), size and shape statistics
  (:func:`mask_statistics`), each part scaled so that no part dominates the distances;
* ``cnn:NAME`` — a small ImageNet CNN (``cnn:efficientnet_lite0``) run once per image, its stride-8 and
  stride-16 feature maps pooled inside the mask exactly like the SAM embedding. Use it (or ``sam+stats``)
  when the SAM model's embedding does not fit the domain, e.g. LiteMedSAM (a medical model) on aerial images.

Pooling the SAM embedding:

The encoder never runs again here: masks live in original image pixels, the embedding lives on the
``embed_size``² grid of the padded model input, and :class:`~alps.sam.types.Geometry` links the two.
A pixel ``(y, x)`` of the original image covers the input rectangle
``[y·ry, (y+1)·ry) × [x·rx, (x+1)·rx)`` with ``ry = h/H`` and ``rx = w/W`` (``input_size = (h, w)``);
embedding cell ``(i, j)`` covers ``[i·s, (i+1)·s) × [j·s, (j+1)·s)`` with ``s = geometry.stride``.
The weight of a cell is the exact fraction of its area covered by the mask under this mapping
(area resampling), so non-square images, padding and non-integer scale factors need no special cases.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from alps.core.rle import BoolArray, decode_masks

if TYPE_CHECKING:  # only annotations: table/label/evaluation code must not pay for importing torch
    import torch

    from alps.sam.types import Geometry

__all__ = [
    "FEATURE_SOURCES",
    "cell_weights",
    "check_feature_source",
    "cnn_features",
    "combine_stats",
    "filter_masks",
    "mask_features",
    "mask_statistics",
    "pool_mask_features",
]

FloatArray = npt.NDArray[np.float32]


def filter_masks(
    records: list[dict[str, Any]],
    image_area: int,
    *,
    max_area_fraction: float = 0.3,
    min_area: int = 0,
) -> list[dict[str, Any]]:
    """The ALPS filtering gate: drop masks that cover too much of the image or are too small.

    Args:
        records: mask records as produced by ``SamAutomaticMaskGenerator`` (need ``area`` in pixels).
        image_area: ``H * W`` of the image in pixels.
        max_area_fraction: masks with ``area / image_area > max_area_fraction`` are dropped
            (0.3 in the paper: such masks are mostly background or whole scenes).
        min_area: masks with ``area < min_area`` pixels are dropped.

    Returns:
        The kept records, same objects and order.
    """
    if image_area <= 0:
        raise ValueError(f"image_area must be positive, got {image_area}")
    limit = max_area_fraction * image_area
    return [r for r in records if min_area <= int(r["area"]) and int(r["area"]) <= limit]


def _cell_edges(length: int, input_length: int, geometry: Geometry) -> npt.NDArray[np.float64]:
    """Edges of the ``embed_size`` cells along one axis, in original pixel units, clipped to the image.

    Cells lying in the padding get zero width.
    """
    ratio = input_length / length  # input pixels per original pixel
    edges = np.arange(geometry.embed_size + 1, dtype=np.float64) * geometry.stride / ratio
    return np.clip(edges, 0.0, float(length))


def _integral_to(
    values: npt.NDArray[Any], edges: npt.NDArray[np.float64], axis: int
) -> npt.NDArray[np.float64]:
    """Integral of a pixel-constant array from 0 to each (fractional) edge along ``axis``.

    ``∫_0^e = Σ_{k < ⌊e⌋} v[k] + (e - ⌊e⌋) · v[⌊e⌋]``; the sums are block sums between the distinct
    floors (one pass over ``values``, far cheaper than a strided cumulative sum or ``reduceat``).
    """
    size = values.shape[axis]
    lo = np.minimum(np.floor(edges).astype(np.intp), size - 1)
    frac = edges - lo
    starts = np.unique(np.concatenate([[0], lo]))
    bounds = [*starts.tolist(), size]
    acc_dtype = np.float64 if values.dtype.kind == "f" else np.int32
    lead = (slice(None),) * axis
    segments = np.stack(
        [values[(*lead, slice(a, b))].sum(axis=axis, dtype=acc_dtype) for a, b in itertools.pairwise(bounds)],
        axis=axis,
    )
    before = np.cumsum(segments, axis=axis) - segments  # sum of everything before each start
    shape = [1] * values.ndim
    shape[axis] = len(edges)
    head = np.take(before, np.searchsorted(starts, lo), axis=axis).astype(np.float64)
    return head + np.take(values, lo, axis=axis).astype(np.float64) * frac.reshape(shape)


def cell_weights(masks: BoolArray, geometry: Geometry) -> npt.NDArray[np.float64]:
    """Fraction of each embedding cell covered by each mask (exact area resampling).

    The integral of a pixel-constant mask over ``[0, y) × [0, x)`` is piecewise bilinear, so the
    coverage of every cell follows from that integral at the cell corners (separably, per axis).

    Args:
        masks: ``(n, H, W)`` bool masks in original image pixels.
        geometry: how the image maps onto the model input.

    Returns:
        ``(n, E, E)`` float64 weights in ``[0, 1]`` (1 = cell fully inside the mask).
    """
    _, height, width = masks.shape
    in_h, in_w = geometry.input_size
    ys = _cell_edges(height, in_h, geometry)
    xs = _cell_edges(width, in_w, geometry)
    rows = _integral_to(masks.view(np.uint8), ys, axis=1)  # (n, E+1, W)
    corner = _integral_to(rows, xs, axis=2)  # (n, E+1, E+1)
    area = corner[:, 1:, 1:] - corner[:, :-1, 1:] - corner[:, 1:, :-1] + corner[:, :-1, :-1]
    # original-pixel area -> input-pixel area -> fraction of one cell
    scale = (in_h / height) * (in_w / width) / geometry.stride**2
    return np.clip(area * scale, 0.0, 1.0)


def _pixels_of(
    masks: BoolArray, weights: npt.NDArray[np.float64], geometry: Geometry
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``(mask index, y, x)`` of every pixel of each mask, searching only the cells it touches.

    Args:
        masks: ``(n, H, W)`` bool.
        weights: ``(n, E, E)`` cell coverage of the same masks (non-zero exactly where pixels are).
    """
    _, height, width = masks.shape
    in_h, in_w = geometry.input_size
    per_y = geometry.stride * height / in_h  # original pixels per cell
    per_x = geometry.stride * width / in_w
    found = []
    for k in range(masks.shape[0]):
        cell_rows = np.flatnonzero(weights[k].any(axis=1))
        cell_cols = np.flatnonzero(weights[k].any(axis=0))
        y0 = max(int(np.floor(cell_rows[0] * per_y)) - 1, 0)
        y1 = min(int(np.ceil((cell_rows[-1] + 1) * per_y)) + 1, height)
        x0 = max(int(np.floor(cell_cols[0] * per_x)) - 1, 0)
        x1 = min(int(np.ceil((cell_cols[-1] + 1) * per_x)) + 1, width)
        ys, xs = np.nonzero(masks[k, y0:y1, x0:x1])
        found.append((np.full(ys.size, k, dtype=np.intp), ys + y0, xs + x0))
    idx, ys, xs = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return idx, ys, xs


def _bilinear_mean(
    grid: npt.NDArray[np.float32],
    masks: BoolArray,
    weights: npt.NDArray[np.float64],
    geometry: Geometry,
) -> npt.NDArray[np.float32]:
    """Mean over each mask's pixels of the embedding bilinearly sampled at the pixel centres.

    Args:
        grid: ``(E, E, C)`` embedding, channels last.
        masks: ``(n, H, W)`` non-empty bool masks.
        weights: ``(n, E, E)`` their cell coverage (locates the pixels cheaply).

    Returns:
        ``(n, C)`` float32.
    """
    n, height, width = masks.shape
    in_h, in_w = geometry.input_size
    s = geometry.stride
    idx, ys, xs = _pixels_of(masks, weights, geometry)
    # embedding coordinates where cell centres are integers; clamp to cells that hold image content
    v = (ys + 0.5) * (in_h / height) / s - 0.5
    u = (xs + 0.5) * (in_w / width) / s - 0.5
    v = np.clip(v, 0.0, float(np.ceil(in_h / s) - 1))
    u = np.clip(u, 0.0, float(np.ceil(in_w / s) - 1))
    last = grid.shape[0] - 1
    v0 = np.minimum(np.floor(v).astype(np.intp), last)
    u0 = np.minimum(np.floor(u).astype(np.intp), last)
    v1 = np.minimum(v0 + 1, last)
    u1 = np.minimum(u0 + 1, last)
    fv = (v - v0)[:, None].astype(np.float32)
    fu = (u - u0)[:, None].astype(np.float32)
    samples = (
        grid[v0, u0] * (1 - fv) * (1 - fu)
        + grid[v0, u1] * (1 - fv) * fu
        + grid[v1, u0] * fv * (1 - fu)
        + grid[v1, u1] * fv * fu
    )
    # idx is sorted and every mask has pixels, so per-mask sums are contiguous runs
    starts = np.searchsorted(idx, np.arange(n))
    sums = np.add.reduceat(samples, starts, axis=0, dtype=np.float64)
    counts = np.diff(np.append(starts, idx.size)).astype(np.float64)
    return (sums / counts[:, None]).astype(np.float32)


def pool_mask_features(
    embedding: torch.Tensor,
    masks: BoolArray | Sequence[Mapping[str, Any]],
    geometry: Geometry,
    *,
    normalize: bool = True,
    min_cells: float = 1.0,
    chunk_pixels: int = 2**25,
) -> FloatArray:
    """Pool the image embedding inside each mask: one feature vector per mask.

    Each feature is the mean of the embedding cells weighted by the fraction of each cell the mask
    covers (see :func:`cell_weights`). A mask smaller than ``min_cells`` cells in total would just
    copy the (blocky) cell or two it touches, so it is featurised instead by the mean, over its
    pixels, of the embedding bilinearly sampled at each pixel centre (cell centres sit at grid
    coordinates ``i + 0.5``; samples are clamped to cells that contain image, never pure padding).
    For a one-pixel mask this is the bilinear sample at that pixel. An empty mask gets the mean over
    the image's own cells and a warning. No mask gets a zero vector unless the embedding is zero.

    Args:
        embedding: ``(C, E, E)`` image embedding (``E = geometry.embed_size``), any float dtype/device.
        masks: ``(N, H, W)`` bool array in original image pixels (``(H, W) = geometry.original_size``),
            or a sequence of COCO RLE dicts / generator records (decoded chunk by chunk).
        geometry: how the image was mapped onto the encoder input.
        normalize: L2-normalise each feature (cosine geometry for k-means).
        min_cells: masks covering fewer cells than this (in cell areas) use bilinear sampling.
        chunk_pixels: at most this many mask pixels are processed at once (bounds the memory of
            masks decoded from RLE to about ``chunk_pixels`` bytes).

    Returns:
        ``(N, C)`` float32 features.
    """
    if embedding.ndim != 3:
        raise ValueError(f"embedding must be (C, E, E), got shape {tuple(embedding.shape)}")
    channels, eh, ew = embedding.shape
    e = geometry.embed_size
    if (eh, ew) != (e, e):
        raise ValueError(f"embedding grid {eh}x{ew} does not match geometry.embed_size={e}")
    height, width = geometry.original_size
    count = len(masks)
    out = np.zeros((count, channels), dtype=np.float32)
    if count == 0:
        return out
    if isinstance(masks, np.ndarray) and masks.shape[1:] != (height, width):
        raise ValueError(f"masks have shape {masks.shape[1:]}, geometry says {(height, width)}")

    flat = embedding.detach().cpu().float().numpy().reshape(channels, e * e)
    cells = np.ascontiguousarray(flat.T)  # (E*E, C)
    grid = cells.reshape(e, e, channels)
    chunk = max(1, chunk_pixels // (height * width))
    in_h, in_w = geometry.input_size
    pixels_per_cell = geometry.stride**2 * (height / in_h) * (width / in_w)
    n_empty = 0
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        if isinstance(masks, np.ndarray):
            block = np.ascontiguousarray(masks[start:stop], dtype=bool)
        else:
            block = decode_masks(masks[start:stop], size=(height, width))
        grid_weights = cell_weights(block, geometry)
        weights = grid_weights.reshape(stop - start, e * e)
        coverage = weights.sum(axis=1)
        pooled = coverage >= min_cells
        if pooled.any():
            w = (weights[pooled] / coverage[pooled, None]).astype(np.float32)
            out[start:stop][pooled] = w @ cells
        small = np.flatnonzero(~pooled)
        if small.size:
            nonempty = coverage[small] * pixels_per_cell > 0.5  # area in pixels, robust to rounding
            if nonempty.any():
                rows = small[nonempty]
                out[start + rows] = _bilinear_mean(grid, block[rows], grid_weights[rows], geometry)
            if not nonempty.all():
                n_empty += int((~nonempty).sum())
                out[start + small[~nonempty]] = _image_mean(cells, geometry)
    if n_empty:
        warnings.warn(f"{n_empty} empty mask(s) got the image-mean feature", RuntimeWarning, stacklevel=2)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
    return out


def _image_mean(cells: npt.NDArray[np.float32], geometry: Geometry) -> npt.NDArray[np.float32]:
    """Mean of the ``(E*E, C)`` cells weighted by how much of each the image covers (padding excluded)."""
    full = np.ones((1, *geometry.original_size), dtype=bool)
    w = cell_weights(full, geometry).reshape(-1)
    return (w / w.sum()).astype(np.float32) @ cells


CNN_MODELS = ("efficientnet_lite0",)
FEATURE_SOURCES = ("sam", "sam+stats", *(f"cnn:{name}" for name in CNN_MODELS))
STATS_DIM = 9


def check_feature_source(kind: str) -> str:
    """``kind`` if it names a feature source (:data:`FEATURE_SOURCES`), else a one-line ``ValueError``."""
    if kind not in FEATURE_SOURCES:
        raise ValueError(f"unknown feature source {kind!r}; choose from {', '.join(FEATURE_SOURCES)}")
    return kind


def mask_statistics(
    image: npt.NDArray[np.uint8], masks: BoolArray | Sequence[Mapping[str, Any]]
) -> FloatArray:
    """Colour, size and shape of each mask, scaled so that each of the four parts weighs about the same.

    Parts (values standardised with fixed, documented constants so features of different images are
    comparable without a second pass over the data; then each part divided by ``sqrt(its length)``
    so every part contributes about one unit of squared norm):

    * colour: CIELAB mean ``((L - 50) / 25, a / 25, b / 25)``;
    * texture: CIELAB standard deviation ``(sL / 10, sa / 10, sb / 10)``;
    * size: ``(ln(area / image area) + 6) / 2``;
    * shape: fill of the bounding box ``(area / box area - 0.6) / 0.2`` and elongation
      ``ln(box width / box height) / 0.5``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(N, H, W)`` bool or COCO RLE dicts / generator records of size ``(H, W)``.

    Returns:
        ``(N, 9)`` float32.
    """
    from skimage.color import rgb2lab

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    height, width = image.shape[:2]
    lab = rgb2lab(image).reshape(-1, 3)
    out = np.zeros((len(masks), STATS_DIM), dtype=np.float64)
    for i in range(len(masks)):
        if isinstance(masks, np.ndarray):
            mask = masks[i]
            if mask.shape != (height, width):
                raise ValueError(f"mask {i} has shape {mask.shape}, image is {(height, width)}")
        else:
            mask = decode_masks(masks[i : i + 1], size=(height, width))[0]
        flat = np.flatnonzero(mask)
        if flat.size == 0:
            continue
        pixels = lab[flat]
        ys, xs = np.divmod(flat, width)
        box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        colour = (pixels.mean(axis=0) - [50.0, 0.0, 0.0]) / 25.0
        texture = pixels.std(axis=0) / 10.0
        size = (np.log(flat.size / (height * width)) + 6.0) / 2.0
        fill = (flat.size / (box_h * box_w) - 0.6) / 0.2
        elongation = np.log(box_w / box_h) / 0.5
        out[i] = [
            *colour / np.sqrt(3),
            *texture / np.sqrt(3),
            size,
            fill / np.sqrt(2),
            elongation / np.sqrt(2),
        ]
    return out.astype(np.float32)


@functools.cache
def _cnn(name: str) -> torch.nn.Module:
    """The ImageNet CNN ``name`` as a timm feature extractor (stride 8 and 16 maps), eval mode, on CPU."""
    import timm

    from alps.core.state_dict import load_matching, read_state_dict
    from alps.samples.encoders import fetch_efficientnet_lite0_weights

    if name != "efficientnet_lite0":
        raise ValueError(f"unknown CNN {name!r}; choose from {', '.join(CNN_MODELS)}")
    classifier = timm.create_model(name, pretrained=False)
    load_matching(classifier, read_state_dict(fetch_efficientnet_lite0_weights()))
    extractor = timm.create_model(name, pretrained=False, features_only=True, out_indices=(2, 3))
    missing = extractor.load_state_dict(classifier.state_dict(), strict=False).missing_keys
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} feature-extractor tensors not in the classifier weights")
    return extractor.eval()


def cnn_features(
    name: str,
    image: npt.NDArray[np.uint8],
    masks: BoolArray | Sequence[Mapping[str, Any]],
    *,
    input_size: int = 512,
    device: str = "cpu",
) -> FloatArray:
    """Pool the stride-8 and stride-16 feature maps of an ImageNet CNN inside each mask.

    The image is resized (bilinear) so its longest side is ``input_size`` and padded bottom/right
    to a square, as SAM does, so :func:`pool_mask_features` pools each map with a
    :class:`~alps.sam.types.Geometry` of the map's grid. Each map's pooled vector is L2-normalised
    and the two are concatenated and scaled by ``1/sqrt(2)`` (unit norm in total).

    Args:
        name: a CNN of :data:`CNN_MODELS`.
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(N, H, W)`` bool or COCO RLE dicts / records.
        input_size: network input side in pixels (a multiple of 16).

    Returns:
        ``(N, C)`` float32 (C = 40 + 112 for EfficientNet-Lite0).
    """
    import torch
    import torch.nn.functional as F

    from alps.sam.types import Geometry

    if input_size % 16:
        raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
    height, width = image.shape[:2]
    scale = input_size / max(height, width)
    in_h, in_w = max(1, round(height * scale)), max(1, round(width * scale))
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(in_h, in_w), mode="bilinear", align_corners=False)
    x = F.pad((x - 127.5) / 128.0, (0, input_size - in_w, 0, input_size - in_h))
    model = _cnn(name).to(device)
    with torch.no_grad():
        maps = model(x.to(device))
    parts = []
    for fmap in maps:
        grid = int(fmap.shape[-1])
        geometry = Geometry((height, width), (in_h, in_w), input_size, grid)
        parts.append(pool_mask_features(fmap[0], masks, geometry))
    return (np.concatenate(parts, axis=1) / np.sqrt(len(parts))).astype(np.float32)


def mask_features(
    kind: str,
    image: npt.NDArray[np.uint8] | None,
    embedding: torch.Tensor | None,
    geometry: Geometry | None,
    masks: BoolArray | Sequence[Mapping[str, Any]],
    *,
    stats_weight: float = 0.5,
    device: str = "cpu",
) -> FloatArray:
    """One feature vector per mask from the feature source ``kind`` (see the module docstring).

    Args:
        kind: ``sam``, ``sam+stats`` or ``cnn:NAME`` (:data:`FEATURE_SOURCES`).
        image: ``(H, W, 3)`` uint8 RGB, the image the masks belong to (needed except for ``sam``).
        embedding: ``(C, E, E)`` SAM embedding (needed for ``sam`` and ``sam+stats``).
        geometry: how the image was mapped onto the SAM encoder input (with ``embedding``).
        masks: ``(N, H, W)`` bool or COCO RLE dicts / generator records (the kept masks).
        stats_weight: ``sam+stats`` only: the statistics block is scaled by this after its own
            scaling (each of its 4 parts ~1 unit of squared norm, the block ~``4 * stats_weight**2``),
            then the whole vector is L2-normalised; the SAM part has norm 1 before that.
        device: where the CNN runs.

    Returns:
        ``(N, D)`` float32: D = 256 (``sam``, LiteMedSAM/SAM), 256 + 9 (``sam+stats``),
        152 (``cnn:efficientnet_lite0``).
    """
    check_feature_source(kind)
    if kind.startswith("cnn:"):
        if image is None:
            raise ValueError(f"feature source {kind} needs the image")
        return cnn_features(kind[4:], image, masks, device=device)
    if embedding is None or geometry is None:
        raise ValueError(f"feature source {kind} needs the SAM embedding and its geometry")
    sam = pool_mask_features(embedding, masks, geometry)
    if kind == "sam":
        return sam
    if image is None:
        raise ValueError(f"feature source {kind} needs the image")
    return combine_stats(sam, mask_statistics(image, masks), stats_weight)


def combine_stats(sam: FloatArray, stats: FloatArray, weight: float = 0.5) -> FloatArray:
    """``sam+stats`` from its parts: ``[sam, weight * stats]``, L2-normalised per row, ``(N, C + 9)``."""
    joined = np.concatenate([sam, weight * stats], axis=1).astype(np.float32)
    norms = np.linalg.norm(joined, axis=1, keepdims=True)
    np.divide(joined, norms, out=joined, where=norms > 0)
    return joined
