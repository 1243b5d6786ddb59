"""``alps label``: image collection in, pseudo-labelled segmentation dataset out.

Stages (each a module with its own front door; this file only orchestrates them):

1. masks: the mask source (SAM automatic generator, or SLIC superpixels as a baseline) on each
   image; the encoder runs once per image and its embedding is kept;
2. gate: :func:`alps.labeling.features.filter_masks` drops masks covering more than ``area_threshold`` of
   the image or fewer than ``min_area`` pixels;
3. features: :func:`alps.labeling.features.pool_mask_features` pools the kept embedding inside each mask;
4. table: one Parquet mask table per image (:mod:`alps.labeling.table`, written atomically), then a small
   per-image state file saying which parameters and which input bytes produced it;
5. clustering: streaming k-means over all tables (:mod:`alps.labeling.cluster`), model saved, every mask
   assigned (stored in the tables' ``cluster`` column);
6. painting: label maps (largest mask first, 255 = unlabeled, :mod:`alps.labeling.paint`) and overlays;
7. layout: ``images/<split>/`` and ``labels/<split>/`` (mmsegmentation style), ``splits/*.txt``
   and ``manifest.json``.

Output directory::

    DIR/params.json              parameters that the tables depend on (checked on every re-run)
    DIR/tables/<id>.parquet      mask table per image (stage 4)
    DIR/state/<id>.json          per-image status: input sha256, parameter hash, counts, timings
    DIR/cluster_model.npz        cluster centres (stage 5)
    DIR/labels/<split>/<id>.png  pseudo-label maps (uint8, or uint16 when K > 255)
    DIR/images/<split>/<id>.*    the labelled images (hard link or copy of the input when it is
                                 already plain 8-bit RGB PNG/JPEG, else the converted pixels as PNG)
    DIR/overlays/<id>.jpg        colour overlays for looking at the result
    DIR/splits/<split>.txt       ids per split
    DIR/manifest.json            everything about the run (written atomically, last)
    DIR/log.txt                  log of every run into DIR (appended)

Resuming: stages 1-4 are skipped for an image whose state file records the same parameter hash
and the same input sha256 and whose table exists; stages 5-7 always re-run (they are cheap and
deterministic), so an interrupted run, re-run, yields byte-identical labels. Changing a parameter
the tables depend on (model, checkpoint, mask source, gate, generator settings, device) is refused
with the list of changes unless ``force=True``, which discards the old tables. Parameters used only
by stages 5-7 (``clusters``, ``val_fraction``, and ``seed`` for a checkpointed model) may change
freely: the tables are reused.

Medical volumes (NIfTI files, DICOM series folders) are sliced along ``axis`` into PNGs under
``DIR/slices/`` that go through stages 1-6 like images; their label maps are then stacked back into
``DIR/labels/<volume id>.nii.gz`` with the input's affine and header (:mod:`alps.labeling.inputs.volume`).

SLIC baseline (``masks="slic"``): superpixels from :func:`skimage.segmentation.slic` with
``n_segments = points_per_side ** 2`` (same prompt budget as SAM; override with
``n_segments=...``) and ``compactness=10``. There is no SAM embedding for them, so the SAM encoder
still runs once per image and its embedding is pooled inside each superpixel: the two sources
differ only in where the masks come from.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from alps import __version__
from alps.core.files import atomic_path, remove_stale_files
from alps.core.images import ImageFile, ImageReadError, LoadedImage, find_images, load_image
from alps.sam.types import Geometry, MaskResult

log = logging.getLogger("alps.labeling.run")

FORMAT_VERSION = 1  # bump when table contents change meaning; old outputs are then refused
MASK_SOURCES = ("sam", "slic")
SPLITS = ("train", "val")
RANDOM_CHECKPOINT = "random"
_SLIC_KEYS = {"n_segments", "compactness", "sigma"}
_LINKABLE = {".png", ".jpg", ".jpeg"}
_STATE_FIELDS = ("height", "width", "source_mode", "conversion", "n_masks", "n_masks_kept", "seconds")


class ParamsMismatchError(ValueError):
    """The output directory holds work done with other parameters; the message lists them."""


class OutputDirError(ValueError):
    """The output directory is unusable (inside an input, or a foreign non-empty directory)."""


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class ImageRecord:
    """What happened to one input image (one entry of ``manifest.json["images"]``)."""

    id: str
    source: str
    relpath: str
    status: str = "pending"  # "ok" or "failed"
    resumed: bool = False  # stages 1-4 were skipped: an earlier run had done them
    error: str | None = None
    sha256: str | None = None
    height: int | None = None
    width: int | None = None
    source_mode: str | None = None
    conversion: list[str] = field(default_factory=list)
    n_masks: int = 0  # from the mask source
    n_masks_kept: int = 0  # after the gate
    n_labelled_pixels: int = 0
    split: str | None = None
    image: str | None = None  # paths relative to the output directory
    label: str | None = None
    overlay: str | None = None
    table: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    tiles: int | None = None  # scenes only: tiles (alps.labeling.inputs.scene)
    vector: str | None = None  # scenes only: polygons of the labelled regions


@dataclass
class LabelRun:
    """Result of :func:`label`: where everything is and what happened."""

    out: Path
    manifest_path: Path
    images: list[ImageRecord]
    clusters: int  # number of clusters actually used (may be < requested with few masks)
    cluster_sizes: list[int]  # masks per cluster
    class_pixels: list[int]  # labelled pixels per class over all label maps
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    volumes: list[Any] = field(default_factory=list)  # VolumeRecord per input volume

    @property
    def ok(self) -> list[ImageRecord]:
        return [r for r in self.images if r.status == "ok"]

    @property
    def failed(self) -> list[ImageRecord]:
        return [r for r in self.images if r.status == "failed"]

    @property
    def overlays(self) -> list[Path]:
        return [self.out / r.overlay for r in self.images if r.overlay]

    @property
    def labels(self) -> list[Path]:
        return [self.out / r.label for r in self.images if r.label]

    def summary_table(self) -> Any:
        """A :class:`rich.table.Table` with counts and timings (print it with a rich console)."""
        from rich.table import Table

        table = Table(title=f"alps label -> {self.out}", show_header=True, header_style="bold")
        table.add_column("item")
        table.add_column("value", justify="right")
        resumed = sum(r.resumed for r in self.ok)
        if self.volumes:
            ok_volumes = sum(v.status == "ok" for v in self.volumes)
            table.add_row("volumes read", f"{ok_volumes} of {len(self.volumes)}")
        table.add_row("images found", str(len(self.images)))
        table.add_row("labelled", f"{len(self.ok)} ({resumed} resumed)")
        table.add_row("failed", f"[red]{len(self.failed)}[/red]" if self.failed else "0")
        for split in SPLITS:
            n = sum(r.split == split for r in self.ok)
            if n:
                table.add_row(f"  {split}", str(n))
        table.add_row("masks generated", str(sum(r.n_masks for r in self.ok)))
        table.add_row("masks kept by the gate", str(sum(r.n_masks_kept for r in self.ok)))
        table.add_row("clusters used", str(self.clusters))
        pixels = sum((r.height or 0) * (r.width or 0) for r in self.ok)
        labelled = sum(r.n_labelled_pixels for r in self.ok)
        table.add_row("pixels labelled", f"{100.0 * labelled / pixels:.1f}%" if pixels else "-")
        for stage, seconds in self.timings.items():
            table.add_row(f"time: {stage}", f"{seconds:.1f} s")
        table.add_row("manifest", str(self.manifest_path))
        table.add_row("overlays", str(self.out / "overlays"))
        return table

    def print_summary(self) -> None:
        from rich.console import Console

        console = Console(stderr=True)
        console.print(self.summary_table())
        for record in self.failed:
            console.print(f"[red]failed[/red] {record.source}: {record.error}", highlight=False)
        for note in self.warnings:
            console.print(f"[yellow]warning[/yellow] {note}", highlight=False)


# ----------------------------------------------------------------------------------------------
# small helpers


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_json(path: Path, data: Any) -> None:
    _atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def _sha256_file(path: Path) -> str:
    from alps.core.files import sha256_file

    return sha256_file(path)


def _hash_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _runtime() -> dict[str, Any]:
    from alps.core.runtime import allocator_tuned

    return {"torch_threads": torch.get_num_threads(), "malloc_tuned": allocator_tuned()}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "alps-seg": __version__, "torch": torch.__version__}
    for dist in (
        "segment-anything",
        "numpy",
        "pillow",
        "pyarrow",
        "scikit-learn",
        "scikit-image",
        "pycocotools",
        "opencv-python-headless",
        "tifffile",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send the ``alps`` loggers' INFO records to ``path`` (appended) for the duration."""
    logger = logging.getLogger("alps")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


class StageTimer:
    """Accumulates wall-clock seconds per named stage: ``with timer("masks"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}


# ----------------------------------------------------------------------------------------------
# checks on inputs and output


def check_output_dir(inputs: Sequence[Path], out: Path) -> None:
    """Refuse an output directory equal to or inside an input, or containing an input."""
    out_r = out.expanduser().resolve()
    for item in inputs:
        inp = Path(item).expanduser().resolve()
        if inp.is_dir() and (out_r == inp or inp in out_r.parents):
            raise OutputDirError(
                f"output directory {out} is inside the input {item}: outputs could be read back as inputs "
                "or overwrite them; choose an output directory outside every input"
            )
        if out_r == inp or out_r in inp.parents:
            raise OutputDirError(
                f"input {item} is inside the output directory {out}: the run could overwrite or delete it; "
                "choose an output directory that holds no input"
            )


# ----------------------------------------------------------------------------------------------
# model and mask sources


@dataclass
class _ModelSpec:
    name: str
    checkpoint: str | None  # resolved path, or None for random init / a given module
    checkpoint_sha256: str | None
    module: torch.nn.Module | None = None  # when the caller passed a model instance


def _state_dict_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _resolve_model(model: str | torch.nn.Module, checkpoint: str | Path | None) -> _ModelSpec:
    """Which weights the run uses, and their sha256 (before any heavy loading)."""
    if isinstance(model, torch.nn.Module):
        if checkpoint is not None:
            raise ValueError("pass either a model instance or a checkpoint, not both")
        return _ModelSpec(type(model).__name__, None, _state_dict_sha256(model), module=model)
    from alps.sam.build import MODEL_TYPES, resolve_checkpoint
    from alps.sam.weights import REGISTRY

    if model not in MODEL_TYPES:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODEL_TYPES)}")
    if checkpoint is not None and str(checkpoint) == RANDOM_CHECKPOINT:
        return _ModelSpec(model, None, None)
    if checkpoint is None:
        if model not in REGISTRY:
            raise ValueError(f"no published weights registered for {model!r}; pass checkpoint=PATH")
        checkpoint = model
    path = resolve_checkpoint(checkpoint, model)
    entry = REGISTRY.get(str(checkpoint))
    digest = entry.sha256 if entry is not None else _sha256_file(path)  # registry files are verified
    return _ModelSpec(model, str(path), digest)


MaskSource = Callable[[np.ndarray], MaskResult]


def _sam_source(sam: Any, kwargs: dict[str, Any]) -> MaskSource:
    from alps.sam import MaskGenerator

    generator = MaskGenerator(sam, **kwargs)

    def run(image: np.ndarray) -> MaskResult:
        with torch.inference_mode():
            return generator.generate_with_embedding(image)

    return run


def _encoder_embedding(sam: Any) -> Callable[[np.ndarray], tuple[torch.Tensor, Geometry]]:
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    model_size = int(sam.image_encoder.img_size)

    def run(image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        with torch.inference_mode():
            predictor.set_image(image)
            embedding = predictor.features[0].detach().to("cpu", torch.float32).clone()
            input_size = tuple(predictor.input_size)
            predictor.reset_image()
        return embedding, Geometry(image.shape[:2], input_size, model_size, int(embedding.shape[-1]))

    return run


def slic_records(
    image: np.ndarray, *, n_segments: int, compactness: float = 10.0, sigma: float = 0.0
) -> list[dict[str, Any]]:
    """SLIC superpixels as generator-style records (``segmentation`` a COCO RLE, scores 1.0)."""
    from pycocotools import mask as mask_utils
    from skimage.segmentation import slic

    height, width = image.shape[:2]
    segments = slic(
        image, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0, channel_axis=-1
    )
    records = []
    for value in np.unique(segments):
        mask = segments == value
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ys, xs = np.nonzero(mask)
        records.append(
            {
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "area": int(ys.size),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
                "predicted_iou": 1.0,
                "point_coords": [[float(xs.mean()), float(ys.mean())]],
                "stability_score": 1.0,
                "crop_box": [0, 0, width, height],
            }
        )
    return records


def _check_generator_kwargs(masks: str, kwargs: dict[str, Any]) -> None:
    """Reject unknown mask-source settings before any work is done."""
    if masks == "slic":
        allowed = set(_SLIC_KEYS)
    else:
        from alps.sam import MaskGenerator

        allowed = set(inspect.signature(MaskGenerator).parameters) - {
            "model",
            "points_per_side",
            "prompt",
            "mode",
            "output_mode",
        }
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"unknown {masks} mask setting(s) {unknown}; allowed: {sorted(allowed)}")


def _slic_source(sam: Any, points_per_side: int, kwargs: dict[str, Any]) -> MaskSource:
    options = {"n_segments": points_per_side**2, "compactness": 10.0, "sigma": 0.0, **kwargs}
    embed = _encoder_embedding(sam)

    def run(image: np.ndarray) -> MaskResult:
        embedding, geometry = embed(image)
        return MaskResult(slic_records(image, **options), embedding, geometry)

    return run


# ----------------------------------------------------------------------------------------------
# parameters and resume state


def _generator_settings(
    spec: _ModelSpec, prompt: str | None, masks: str, given: dict[str, Any]
) -> dict[str, Any]:
    """The caller's generator keywords on top of the thresholds the generator uses for this model's
    prompt type (SAM masks only; box-trained LiteMedSAM: boxes), written out for the manifest."""
    if masks != "sam":
        return dict(sorted(given.items()))
    from alps.sam.build import BOX_PROMPT_MODELS
    from alps.sam.generator import THRESHOLDS, default_prompt

    if prompt is None:
        prompt = (
            default_prompt(spec.module)
            if spec.module is not None
            else ("boxes" if spec.name in BOX_PROMPT_MODELS else "points")
        )
    iou, stability = THRESHOLDS[prompt]
    defaults = {"pred_iou_thresh": iou, "stability_score_thresh": stability}
    return dict(sorted({**defaults, **given}.items()))


def _table_params(spec: _ModelSpec, p: dict[str, Any]) -> dict[str, Any]:
    """Everything the mask tables depend on (changing any of it invalidates them)."""
    params = {
        "format": FORMAT_VERSION,
        "model": spec.name,
        "checkpoint_sha256": spec.checkpoint_sha256,
        "masks": p["masks"],
        "area_threshold": p["area_threshold"],
        "min_area": p["min_area"],
        "points_per_side": p["points_per_side"],
        "prompt": p["prompt"] if p["masks"] == "sam" else None,  # SLIC ignores them
        "mode": p["mode"] if p["masks"] == "sam" else None,
        "device": torch.device(p["device"]).type,  # floating point differs between device types
        "generator": dict(sorted(p["generator_kwargs"].items())),
    }
    if spec.checkpoint_sha256 is None:  # random initialisation: the seed picks the weights
        params["seed"] = p["seed"]
    return params


def _check_params(out: Path, params: dict[str, Any], force: bool) -> None:
    """Compare with ``params.json`` of an earlier run; refuse on change unless ``force``."""
    path = out / "params.json"
    if not path.exists():
        leftovers = [p.name for p in out.iterdir()] if out.exists() else []
        if leftovers and not force:
            raise OutputDirError(
                f"{out} is not empty and was not written by `alps label` (no params.json); "
                "choose a new or empty directory, or pass --force to write into it anyway"
            )
        _write_json(path, params)
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    changed = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
    if not changed:
        return
    if not force:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {params.get(k)!r}" for k in changed)
        raise ParamsMismatchError(
            f"{out} holds mask tables made with other settings ({details}). Re-run with the earlier "
            "settings to resume, choose another output directory, or pass --force (force=True) to "
            "discard the earlier tables and start over."
        )
    log.warning("--force: discarding earlier tables (changed: %s)", ", ".join(changed))
    for sub in ("tables", "state"):
        shutil.rmtree(out / sub, ignore_errors=True)
    _write_json(path, params)


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------------------------
# stages


def _process_image(
    item: ImageFile,
    record: ImageRecord,
    source: MaskSource,
    out: Path,
    area_threshold: float,
    min_area: int,
) -> None:
    """Stages 1-4 for one image; fills ``record``; raises ImageReadError for unreadable input."""
    from alps.labeling.features import filter_masks, pool_mask_features
    from alps.labeling.table import write_mask_table

    timer = StageTimer()
    with timer("read"):
        loaded = load_image(item.path)
    pixels = loaded.pixels
    height, width = pixels.shape[:2]
    with timer("masks"):
        result = source(pixels)
    with timer("gate"):
        kept = filter_masks(result.masks, height * width, max_area_fraction=area_threshold, min_area=min_area)
    with timer("features"):
        features = pool_mask_features(result.embedding, kept, result.geometry)
    with timer("table"):
        write_mask_table(out / "tables" / f"{item.id}.parquet", item.id, kept, features, (height, width))
    record.height, record.width = height, width
    record.source_mode, record.conversion = loaded.source_mode, list(loaded.notes)
    record.n_masks, record.n_masks_kept = len(result.masks), len(kept)
    record.seconds = timer.rounded()


def _split_ids(
    ids: Sequence[str], val_fraction: float, seed: int, groups: dict[str, str] | None = None
) -> dict[str, str]:
    """Deterministic split: ids ordered by a seeded hash, the first ``round(n * f)`` go to val.

    At least one image goes to val when ``0 < f`` and there are two or more images, and at least
    one stays in train when ``f < 1``. ``groups`` (id -> group, e.g. slice -> volume) splits whole
    groups instead: every id of a group lands in the group's split; ids not in it are their own group.
    """
    if groups:
        keys = {i: groups.get(i, i) for i in ids}
        by_group = _split_ids(list(dict.fromkeys(keys.values())), val_fraction, seed)
        return {i: by_group[keys[i]] for i in ids}
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    n = len(ids)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    if val_fraction < 1:
        n_val = min(n_val, max(n - 1, 0))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    val = set(order[:n_val])
    return {i: ("val" if i in val else "train") for i in ids}


def _place_image(item: ImageFile, loaded: LoadedImage, dest_dir: Path) -> Path:
    """Put the labelled image in the dataset: link/copy a plain RGB PNG/JPEG, else write a PNG."""
    from PIL import Image

    suffix = item.path.suffix.lower()
    if suffix in _LINKABLE and not loaded.converted:
        dest = dest_dir / f"{item.id}{'.jpg' if suffix == '.jpeg' else suffix}"
        if dest.exists():
            try:
                same = os.path.samefile(dest, item.path) or (
                    dest.stat().st_size == item.path.stat().st_size
                    and dest.stat().st_mtime_ns == item.path.stat().st_mtime_ns
                )
            except OSError:
                same = False
            if same:
                return dest
            dest.unlink()
        dest_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item.path, dest)
        except OSError:  # other filesystem, or links not allowed
            with atomic_path(dest) as tmp:
                shutil.copy2(item.path, tmp)
        return dest
    dest = dest_dir / f"{item.id}.png"
    with atomic_path(dest) as tmp:
        Image.fromarray(loaded.pixels).save(tmp, format="PNG")
    return dest


def label(
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    model: str | torch.nn.Module = "litemedsam",
    checkpoint: str | Path | None = None,
    clusters: int = 46,
    area_threshold: float = 0.3,
    min_area: int = 0,
    points_per_side: int = 32,
    prompt: str | None = None,
    mode: str = "exact",
    device: str = "cpu",
    seed: int = 0,
    val_fraction: float = 0.0,
    masks: str = "sam",
    force: bool = False,
    progress: bool = True,
    bands: str | Sequence[int] | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    vector_format: str = "gpkg",
    axis: int = 2,
    window: str | Sequence[float] | None = None,
    min_foreground: float | None = None,
    **generator_kwargs: Any,
) -> LabelRun:
    """Turn the images under ``inputs`` into a pseudo-labelled dataset in ``out``.

    Args:
        inputs: image files and/or folders (searched recursively for PNG, JPEG, TIFF), NIfTI
            volumes (``.nii``, ``.nii.gz``) and DICOM series folders (see :mod:`alps.labeling.inputs.volume`).
        out: output directory; must not be or lie inside an input (nor hold one).
        model: ``model_type`` (``litemedsam``, ``vit_t``, ``vit_b``, ``vit_l``, ``vit_h``), or a
            ready ``Sam`` module (its weights are hashed for the resume check).
        checkpoint: weights file or registry name; ``None`` = the registered weights of ``model``
            (LiteMedSAM is fetched on demand, large SAM files must be fetched first with
            ``alps weights fetch``); ``"random"`` = random initialisation from ``seed`` (tests).
        clusters: number of k-means clusters = pseudo-classes (46 in ALPS).
        area_threshold: masks covering more than this fraction of the image are dropped.
        min_area: masks smaller than this many pixels are dropped.
        points_per_side: prompt grid of the generator (SLIC: ``n_segments = points_per_side**2``).
        prompt: ``"points"``, ``"boxes"`` or ``None`` (the model's default).
        mode: ``"exact"`` (same masks as the official generator) or ``"fast"``.
        device: ``"cpu"`` or ``"cuda"``.
        seed: seed of clustering, split and random weights.
        val_fraction: fraction of images put in the ``val`` split (deterministic in ``seed``).
        masks: ``"sam"`` or ``"slic"`` (ablation baseline, see the module docstring).
        force: discard earlier work made with other parameters instead of refusing.
        progress: show progress bars.
        bands: the three bands (1-based, e.g. ``"4,3,2"``) of raster scenes shown to SAM as RGB,
            or one band to replicate; default: the RGB-tagged bands, else bands 1-3.
        tile_size, tile_overlap: tiling of raster scenes (GeoTIFFs that are georeferenced or
            larger than one tile, see :mod:`alps.labeling.inputs.scene`); default: from the model's input size
            (:func:`alps.geo.raster.default_tile_size`) and an eighth of a tile.
        vector_format: polygons of labelled scenes: ``"gpkg"`` (GeoPackage), ``"geojson"`` or
            ``"both"`` (``vectors/<id>.gpkg`` / ``.geojson``).
        axis: volumes only: voxel axis (0, 1, 2) the slices are taken along (default 2).
        window: volumes only: ``"center,width"`` (e.g. ``"40,400"``), or ``None``/``"auto"`` for
            the 0.5-99.5 percentiles of each volume (:mod:`alps.medical.volume`).
        min_foreground: volumes only: slices with a smaller share of foreground pixels are skipped
            (default :data:`alps.medical.volume.MIN_FOREGROUND`; 0 keeps every slice).
        **generator_kwargs: any other ``SamAutomaticMaskGenerator`` keyword (``pred_iou_thresh``,
            ``stability_score_thresh``, ``points_per_batch``, ``crop_n_layers``, ...), or for SLIC
            ``n_segments``, ``compactness``, ``sigma``. Unset ones take the generator's defaults
            (thresholds per prompt type: :data:`alps.sam.generator.THRESHOLDS`).

    Returns:
        A :class:`LabelRun`; the same information is in ``out/manifest.json``.

    Raises:
        OutputDirError, ParamsMismatchError, ValueError: before any work is done.
    """
    t_start = time.perf_counter()
    if masks not in MASK_SOURCES:
        raise ValueError(f"masks must be one of {MASK_SOURCES}, got {masks!r}")
    if clusters < 1:
        raise ValueError(f"clusters must be >= 1, got {clusters}")
    if not 0.0 < area_threshold <= 1.0:
        raise ValueError(f"area_threshold must be in (0, 1], got {area_threshold}")
    _check_generator_kwargs(masks, generator_kwargs)
    from alps.geo.raster import parse_bands
    from alps.labeling.inputs.scene import TileSettings

    band_list = parse_bands(bands)
    if tile_size is not None and tile_size < 64:
        raise ValueError(f"tile_size must be at least 64 px, got {tile_size}")
    if tile_overlap is not None and not 0 <= tile_overlap < (tile_size or 512) / 2:
        raise ValueError(f"tile_overlap must be in [0, tile_size/2), got {tile_overlap}")
    tiling = TileSettings(band_list, tile_size, tile_overlap)
    from alps.core.runtime import keep_freed_memory
    from alps.geo.export import vector_suffixes

    vector_suffixes(vector_format)  # raises ValueError for an unknown format
    keep_freed_memory()  # ~20 % faster CPU mask generation (see alps.core.runtime)
    input_list = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    out = Path(out).expanduser()
    check_output_dir(input_list, out)
    from alps.labeling.inputs.volume import VolumeJob
    from alps.medical.volume import MIN_FOREGROUND, check_axis, find_volumes, non_volume_inputs, parse_window

    volume_job = VolumeJob(
        tuple(find_volumes(input_list)),
        check_axis(axis),
        parse_window(window),
        MIN_FOREGROUND if min_foreground is None else float(min_foreground),
    )
    try:
        files = find_images(non_volume_inputs(input_list))
    except ValueError:
        if not volume_job.volumes:
            raise
        files = []  # volumes only
    spec = _resolve_model(model, checkpoint)
    parameters = {
        "inputs": [str(p) for p in input_list],
        "model": spec.name,
        "checkpoint": spec.checkpoint if spec.module is None else None,
        "checkpoint_sha256": spec.checkpoint_sha256,
        "masks": masks,
        "clusters": clusters,
        "area_threshold": area_threshold,
        "min_area": min_area,
        "points_per_side": points_per_side,
        "prompt": prompt,
        "mode": mode,
        "device": device,
        "seed": seed,
        "val_fraction": val_fraction,
        "generator_kwargs": _generator_settings(spec, prompt, masks, generator_kwargs),
        "bands": list(band_list) if band_list is not None else None,
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
        "vector_format": vector_format,
    }
    if volume_job.volumes:
        parameters["volumes"] = volume_job.settings()
    table_params = _table_params(spec, parameters)
    params_hash = _hash_json(table_params)
    _check_params(out, table_params, force)
    for sub in ("tables", "state"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    with _log_to(out / "log.txt"):
        log.info("alps label %s: %d image(s) -> %s", __version__, len(files), out)
        return _run(
            files, out, spec, parameters, table_params, params_hash, progress, t_start, tiling, volume_job
        )


def _run(
    files: list[ImageFile],
    out: Path,
    spec: _ModelSpec,
    p: dict[str, Any],
    table_params: dict[str, Any],
    params_hash: str,
    progress: bool,
    t_start: float,
    tiling: Any = None,
    volume_job: Any = None,
) -> LabelRun:
    from alps.geo.raster import is_scene
    from alps.labeling.cluster import assign_clusters, fit_clusters
    from alps.labeling.inputs.scene import (
        TileSettings,
        label_scene,
        place_scene,
        plan_scene,
        scene_complete,
        scene_tables,
    )
    from alps.labeling.table import read_mask_table, table_rles

    tiling = tiling if tiling is not None else TileSettings()
    model_input = _model_input(spec)
    plain_side = tiling.resolve(model_input)[0]
    plans: dict[str, Any] = {}  # scene id -> alps.labeling.inputs.scene.ScenePlan

    timer = StageTimer()
    notes: list[str] = []
    volume_set = None  # alps.labeling.inputs.volume.VolumeSet
    if volume_job is not None and volume_job.volumes:
        with timer("volumes"):  # read, window, slice to DIR/slices (unchanged slices keep their bytes)
            volume_set = volume_job.prepare(out, [f.id for f in files])
        files = [*files, *volume_set.files]
    records = {f.id: ImageRecord(id=f.id, source=str(f.path), relpath=f.relpath) for f in files}

    # which images still need stages 1-4
    todo: list[ImageFile] = []
    with timer("hash inputs"):
        for item in files:
            record = records[item.id]
            try:
                record.sha256 = _sha256_file(item.path)
            except OSError as err:
                record.status, record.error = "failed", f"cannot read file: {err}"
                continue
            state = _load_state(out / "state" / f"{item.id}.json")
            table = out / "tables" / f"{item.id}.parquet"
            if is_scene(item.path, max_plain_side=plain_side, bands_given=tiling.bands is not None):
                try:
                    plans[item.id] = plan = plan_scene(item.path, tiling, model_input)
                except Exception as err:  # rasterio raises many types for unreadable rasters
                    record.status, record.error = "failed", f"{item.path}: cannot read raster ({err})"
                    continue
                done = scene_complete(out, item.id, plan) and (state or {}).get("scene") == plan.settings()
            else:
                done = table.exists()
            if (
                state is not None
                and state.get("status") == "ok"
                and state.get("params_hash") == params_hash
                and state.get("sha256") == record.sha256
                and done
            ):
                for key in _STATE_FIELDS:
                    setattr(record, key, state[key])
                record.tiles = state.get("tiles")
                record.status, record.resumed = "ok", True
            else:
                todo.append(item)
    log.info("%d image(s) done earlier, %d to process", len(files) - len(todo), len(todo))

    # stages 1-4
    if todo:
        with timer("load model"):
            sam = spec.module if spec.module is not None else _load_model(spec, p)
            sam = sam.to(p["device"]).eval()
            extra = dict(p["generator_kwargs"])
            if p["masks"] == "slic":
                source = _slic_source(sam, p["points_per_side"], extra)
            else:
                extra.update(points_per_side=p["points_per_side"], output_mode="coco_rle")
                if p["prompt"] is not None:
                    extra["prompt"] = p["prompt"]
                if p["mode"] != "exact":
                    extra["mode"] = p["mode"]
                source = _sam_source(sam, extra)
        with timer("masks"):
            for item in tqdm(todo, desc="masks", unit="image", disable=not progress):
                record = records[item.id]
                state_path = out / "state" / f"{item.id}.json"
                try:
                    if item.id in plans:
                        _process_scene(item, record, plans[item.id], source, out, p, params_hash, progress)
                    else:
                        _process_image(item, record, source, out, p["area_threshold"], p["min_area"])
                except ImageReadError as err:
                    record.status, record.error = "failed", str(err)
                    log.warning("skipped %s", err)
                    (out / "tables" / f"{item.id}.parquet").unlink(missing_ok=True)
                    _write_json(
                        state_path,
                        {
                            "id": item.id,
                            "status": "failed",
                            "error": str(err),
                            "sha256": record.sha256,
                            "params_hash": params_hash,
                        },
                    )
                    continue
                record.status = "ok"
                _write_json(
                    state_path,
                    {
                        "id": item.id,
                        "source": record.source,
                        "status": "ok",
                        "sha256": record.sha256,
                        "params_hash": params_hash,
                        "height": record.height,
                        "width": record.width,
                        "source_mode": record.source_mode,
                        "conversion": record.conversion,
                        "n_masks": record.n_masks,
                        "n_masks_kept": record.n_masks_kept,
                        "seconds": record.seconds,
                        **(
                            {"tiles": record.tiles, "scene": plans[item.id].settings()}
                            if item.id in plans
                            else {}
                        ),
                    },
                )
                log.info("%s: %d masks, %d kept", item.id, record.n_masks, record.n_masks_kept)

    ok = [f for f in files if records[f.id].status == "ok"]
    keep_tables = {out / "tables" / f"{f.id}.parquet" for f in ok if f.id not in plans}
    for f in ok:
        if f.id in plans and (out / "tables" / f.id).is_dir():
            keep_tables.update(path for path in (out / "tables" / f.id).iterdir())
    keep_states = {out / "state" / f"{f.id}.json" for f in files}
    remove_stale_files(out / "tables", keep_tables)  # tables of images no longer among the inputs
    remove_stale_files(out / "state", keep_states)

    # stage 5
    table_paths = []
    for f in ok:
        if f.id in plans:
            table_paths.extend(scene_tables(out, f.id, plans[f.id]))
        else:
            table_paths.append(out / "tables" / f"{f.id}.parquet")
    assignments: dict[str, np.ndarray] = {}
    k_used = 0
    cluster_meta: dict[str, Any] = {}
    if table_paths:
        with timer("cluster"):
            with warnings.catch_warnings():  # fit_clusters' notes are reported in the summary instead
                warnings.simplefilter("ignore", RuntimeWarning)
                model = fit_clusters(table_paths, p["clusters"], seed=p["seed"], progress=progress)
            model.save(out / "cluster_model.npz")
            assignments = assign_clusters(table_paths, model)
            k_used = model.k_effective
            cluster_meta = model.metadata()
            notes.extend(model.warnings)
    cluster_sizes = np.zeros(k_used, dtype=np.int64)
    for values in assignments.values():
        cluster_sizes += np.bincount(values, minlength=k_used)[:k_used]

    # stages 6-7
    from alps.labeling.paint import paint_label_map, palette, save_label_png, save_overlay

    colours = palette(k_used)

    groups = volume_set.group if volume_set is not None else None  # slices split by volume
    splits = _split_ids([f.id for f in ok], p["val_fraction"], p["seed"], groups)
    class_pixels = np.zeros(max(k_used, 1), dtype=np.int64)
    produced: set[Path] = set()
    predict = model.predict if table_paths and k_used else None
    with timer("labels"):
        for item in tqdm(ok, desc="labels", unit="image", disable=not progress):
            record = records[item.id]
            split = record.split = splits[item.id]
            if item.id in plans:
                try:
                    made = label_scene(
                        item.id, plans[item.id], out, split, assignments, predict, k_used, colours,
                        p.get("vector_format", "gpkg"),
                    )  # fmt: skip
                    image_path = place_scene(
                        item.path, out / "images" / split / f"{item.id}{item.path.suffix}"
                    )
                except Exception as err:  # the raster changed or vanished since stage 1
                    record.status, record.error = "failed", f"{item.path}: {type(err).__name__}: {err}"
                    continue
                produced.update({made["label"], made["overlay"], *made["vectors"], image_path})
                counts = made["counts"]
                record.n_labelled_pixels = int(counts.sum())
                class_pixels[: counts.size] += counts
                record.image = image_path.relative_to(out).as_posix()
                record.label = made["label"].relative_to(out).as_posix()
                record.overlay = made["overlay"].relative_to(out).as_posix()
                record.vector = made["vector"].relative_to(out).as_posix()
                record.table = f"tables/{item.id}"
                continue
            try:
                loaded = load_image(item.path)
            except ImageReadError as err:  # changed or vanished since stage 1
                record.status, record.error = "failed", str(err)
                continue
            table = read_mask_table(out / "tables" / f"{item.id}.parquet")
            areas = np.asarray(table.column("area").to_numpy(), dtype=np.int64)
            label_map = paint_label_map(
                loaded.pixels.shape[0],
                loaded.pixels.shape[1],
                table_rles(table),
                assignments.get(item.id, np.zeros(0, np.int32)),
                areas=areas,
                num_clusters=max(k_used, 1),
            )
            label_path = out / "labels" / split / f"{item.id}.png"
            save_label_png(label_path, label_map)
            overlay_path = out / "overlays" / f"{item.id}.jpg"
            save_overlay(overlay_path, loaded.pixels, label_map, colours=colours)
            image_path = _place_image(item, loaded, out / "images" / split)
            produced.update({label_path, overlay_path, image_path})
            counts = _class_counts(label_map, k_used)
            record.n_labelled_pixels = int(counts.sum())
            class_pixels[: counts.size] += counts
            record.image = image_path.relative_to(out).as_posix()
            record.label = label_path.relative_to(out).as_posix()
            record.overlay = overlay_path.relative_to(out).as_posix()
            record.table = f"tables/{item.id}.parquet"
    if volume_set is not None:
        slice_labels = {
            f.id: out / str(records[f.id].label)
            for f in ok
            if f.id in volume_set.group and records[f.id].status == "ok" and records[f.id].label
        }
        with timer("label volumes"):
            produced |= volume_set.assemble(out, slice_labels)
    plain_ok = [f for f in ok if f.id not in plans and records[f.id].status == "ok"]
    if plain_ok and k_used:
        from alps.geo.export import write_coco_instances

        coco_path = out / "coco" / "instances.json"
        coco_images = [
            {
                "id": f.id,
                "file_name": records[f.id].image,
                "height": records[f.id].height,
                "width": records[f.id].width,
            }
            for f in plain_ok
        ]
        with timer("coco"):
            write_coco_instances(
                coco_path,
                coco_images,
                [out / "tables" / f"{f.id}.parquet" for f in plain_ok],
                assignments,
                k_used,
            )
        produced.add(coco_path)
    for folder in ("labels", "images", "overlays", "vectors", "coco"):
        remove_stale_files(out / folder, produced)

    ok_ids = [f.id for f in ok if records[f.id].status == "ok"]
    split_lists = {s: [i for i in ok_ids if records[i].split == s] for s in SPLITS}
    for split, ids in split_lists.items():
        path = out / "splits" / f"{split}.txt"
        if ids:
            _atomic_write_text(path, "".join(f"{i}\n" for i in ids))
        else:
            path.unlink(missing_ok=True)

    timings = {"total": round(time.perf_counter() - t_start, 3), **timer.rounded()}
    failed = [r for r in records.values() if r.status == "failed"]
    if failed:
        notes.append(f"{len(failed)} image(s) could not be read and were skipped (see manifest)")
    if volume_set is not None and volume_set.failed:
        notes.append(f"{len(volume_set.failed)} volume(s) could not be read and were skipped (see manifest)")
    if not ok_ids:
        notes.append("no image could be labelled")
    run = LabelRun(
        out=out,
        manifest_path=out / "manifest.json",
        images=[records[f.id] for f in files],
        clusters=k_used,
        cluster_sizes=[int(v) for v in cluster_sizes],
        class_pixels=[int(v) for v in class_pixels[:k_used]],
        timings=timings,
        warnings=notes,
        volumes=volume_set.records if volume_set is not None else [],
    )
    _write_manifest(run, spec, p, table_params, params_hash, cluster_meta, split_lists)
    log.info(
        "done: %d labelled, %d failed, %d clusters, %.1f s",
        len(ok_ids),
        len(failed),
        k_used,
        timings["total"],
    )
    return run


def _model_input(spec: _ModelSpec) -> int:
    """Longest side of the model's encoder input (sets the default tile size of scenes)."""
    if spec.module is not None:
        return int(getattr(getattr(spec.module, "image_encoder", None), "img_size", 1024))
    return 256 if spec.name == "litemedsam" else 1024


def _process_scene(
    item: ImageFile,
    record: ImageRecord,
    plan: Any,
    source: MaskSource,
    out: Path,
    p: dict[str, Any],
    params_hash: str,
    progress: bool,
) -> None:
    """Stages 1-4 for a raster scene, tile by tile (:mod:`alps.labeling.inputs.scene`); fills ``record``."""
    from alps.labeling.inputs.scene import process_scene

    marker = out / "tables" / item.id / "plan.json"
    settings = {**plan.settings(), "sha256": record.sha256, "params_hash": params_hash}
    old = _load_state(marker)
    start = time.perf_counter()
    from rasterio.errors import RasterioError

    try:
        done = process_scene(
            item.id,
            plan,
            source,
            out,
            p["area_threshold"],
            p["min_area"],
            fresh=old != settings,
            progress=progress,
        )
    except (RasterioError, OSError) as err:
        raise ImageReadError(f"{item.path}: cannot read raster tile ({err})") from err
    _write_json(marker, settings)
    scene = plan.scene
    record.height, record.width = scene.height, scene.width
    record.source_mode = f"{'/'.join(sorted(set(scene.dtypes)))}x{scene.count}"
    notes = [f"bands {','.join(str(b) for b in scene.bands)} of {scene.count}"]
    if plan.stretch.low is not None:
        lo, hi = plan.stretch.percentiles
        notes.append(f"stretched per band ({lo:g}-{hi:g}%, whole-scene sample)")
    notes.append(f"tiled {plan.tile_size} px, overlap {plan.tile_overlap} px")
    record.conversion = notes
    record.tiles = len(plan.tiles)
    import pyarrow.parquet as pq

    from alps.labeling.inputs.scene import scene_tables

    # generated masks: tiles done by this call only; kept masks: every tile table of the scene
    record.n_masks = done["n_masks"]
    record.n_masks_kept = sum(pq.ParquetFile(t).metadata.num_rows for t in scene_tables(out, item.id, plan))
    tile_seconds = done["tile_seconds"]
    record.seconds = {
        "total": round(time.perf_counter() - start, 3),
        "per_tile": round(float(np.mean(tile_seconds)), 3) if tile_seconds else 0.0,
    }


def _class_counts(label_map: np.ndarray, k: int) -> np.ndarray:
    """Pixels per cluster 0..k-1 of a label map (unlabeled pixels not counted)."""
    from alps.labeling.paint import label_value_to_cluster

    clusters = label_value_to_cluster(label_map).reshape(-1)
    clusters = clusters[(clusters >= 0) & (clusters < k)]
    return np.bincount(clusters, minlength=k)[:k] if k else np.zeros(0, np.int64)


def _load_model(spec: _ModelSpec, p: dict[str, Any]) -> torch.nn.Module:
    from alps.sam import load_sam

    return load_sam(spec.name, checkpoint=spec.checkpoint, device=p["device"], seed=p["seed"])


def _write_manifest(
    run: LabelRun,
    spec: _ModelSpec,
    p: dict[str, Any],
    table_params: dict[str, Any],
    params_hash: str,
    cluster_meta: dict[str, Any],
    split_lists: dict[str, list[str]],
) -> None:
    k = run.clusters
    dtype = "uint16" if k > 255 else "uint8"
    manifest = {
        "alps_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "name": spec.name,
            "checkpoint": p["checkpoint"],
            "checkpoint_sha256": spec.checkpoint_sha256,
            "random_init": spec.checkpoint_sha256 is None,
        },
        "parameters": p,
        "params_hash": params_hash,
        "table_params": table_params,
        "versions": _versions(),
        "runtime": _runtime(),
        # top-level copies for dataset readers (alps.train and mmsegmentation-style loaders)
        "num_classes": k,
        "ignore_index": 255,
        "dataset": {
            "layout": "mmsegmentation",
            "img_dir": {s: f"images/{s}" for s in SPLITS if split_lists[s]},
            "ann_dir": {s: f"labels/{s}" for s in SPLITS if split_lists[s]},
            "split_files": {s: f"splits/{s}.txt" for s in SPLITS if split_lists[s]},
            "seg_map_suffix": ".png",
            "num_classes": k,
            "ignore_index": 255,
            "label_dtype": dtype,
            "label_encoding": "cluster c is stored as c if c < 255 else c + 1; 255 = unlabeled",
            "splits": {s: len(ids) for s, ids in split_lists.items()},
        },
        "counts": {
            "images": len(run.images),
            "labelled": len(run.ok),
            "resumed": sum(r.resumed for r in run.ok),
            "failed": len(run.failed),
            "masks": sum(r.n_masks for r in run.ok),
            "masks_kept": sum(r.n_masks_kept for r in run.ok),
        },
        "clustering": cluster_meta,
        "cluster_sizes": run.cluster_sizes,
        "class_pixels": run.class_pixels,
        "timings": run.timings,
        "warnings": run.warnings,
        "images": [asdict(r) for r in run.images],
        **({"volumes": [asdict(v) for v in run.volumes]} if run.volumes else {}),
    }
    _write_json(run.manifest_path, manifest)
