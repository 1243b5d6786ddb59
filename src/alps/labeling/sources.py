"""Mask sources of ``alps label``: the SAM automatic generator, or SLIC superpixels (baseline).

A mask source is a function ``(H, W, 3) uint8 image -> MaskResult``: generator-style mask records
plus the SAM image embedding and its geometry, so that the feature stage pools the embedding the
masks came from and never runs the encoder a second time.

SLIC baseline (``masks="slic"``): superpixels from :func:`skimage.segmentation.slic` with
``n_segments = points_per_side ** 2`` (same prompt budget as SAM; override with
``n_segments=...``) and ``compactness=10``. There is no SAM embedding for them, so the SAM encoder
still runs once per image and its embedding is pooled inside each superpixel: the two sources
differ only in where the masks come from.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alps.core.files import sha256_file
from alps.labeling.inputs.base import MaskSource
from alps.sam.types import Geometry, MaskResult

RANDOM_CHECKPOINT = "random"
SLIC_KEYS = {"n_segments", "compactness", "sigma"}


@dataclass(frozen=True)
class ResolvedModel:
    """Which weights a run uses (resolved before any heavy loading)."""

    name: str
    checkpoint: str | None  # resolved path, or None for random init / a given module
    checkpoint_sha256: str | None
    module: torch.nn.Module | None = None  # when the caller passed a model instance


def state_dict_sha256(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolve_model(model: str | torch.nn.Module, checkpoint: str | Path | None) -> ResolvedModel:
    """Which weights the run uses, and their sha256 (before any heavy loading)."""
    if isinstance(model, torch.nn.Module):
        if checkpoint is not None:
            raise ValueError("pass either a model instance or a checkpoint, not both")
        return ResolvedModel(type(model).__name__, None, state_dict_sha256(model), module=model)
    from alps.sam.build import MODEL_TYPES, resolve_checkpoint
    from alps.sam.weights import REGISTRY

    if model not in MODEL_TYPES:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODEL_TYPES)}")
    if checkpoint is not None and str(checkpoint) == RANDOM_CHECKPOINT:
        return ResolvedModel(model, None, None)
    if checkpoint is None:
        if model not in REGISTRY:
            raise ValueError(f"no published weights registered for {model!r}; pass checkpoint=PATH")
        checkpoint = model
    path = resolve_checkpoint(checkpoint, model)
    entry = REGISTRY.get(str(checkpoint))
    digest = entry.sha256 if entry is not None else sha256_file(path)  # registry files are verified
    return ResolvedModel(model, str(path), digest)


def sam_source(sam: Any, kwargs: dict[str, Any]) -> MaskSource:
    from alps.sam import MaskGenerator

    generator = MaskGenerator(sam, **kwargs)

    def run(image: np.ndarray) -> MaskResult:
        with torch.inference_mode():
            return generator.generate_with_embedding(image)

    return run


def encoder_embedding(sam: Any) -> Callable[[np.ndarray], tuple[torch.Tensor, Geometry]]:
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


def check_generator_kwargs(masks: str, kwargs: dict[str, Any]) -> None:
    """Reject unknown mask-source settings before any work is done."""
    if masks == "slic":
        allowed = set(SLIC_KEYS)
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


def slic_source(sam: Any, points_per_side: int, kwargs: dict[str, Any]) -> MaskSource:
    options = {"n_segments": points_per_side**2, "compactness": 10.0, "sigma": 0.0, **kwargs}
    embed = encoder_embedding(sam)

    def run(image: np.ndarray) -> MaskResult:
        embedding, geometry = embed(image)
        return MaskResult(slic_records(image, **options), embedding, geometry)

    return run


def generator_settings(
    spec: ResolvedModel, prompt: str | None, masks: str, given: dict[str, Any]
) -> dict[str, Any]:
    """The caller's generator keywords on top of the thresholds the generator uses for this model's
    prompt type (SAM masks only; box-trained LiteMedSAM: boxes), written out for the manifest."""
    if masks != "sam":
        return dict(sorted(given.items()))
    from alps.sam.generator import THRESHOLDS, default_prompt

    if prompt is None:
        prompt = default_prompt(spec.module) if spec.module is not None else default_prompt(spec.name)
    iou, stability = THRESHOLDS[prompt]
    defaults = {"pred_iou_thresh": iou, "stability_score_thresh": stability}
    return dict(sorted({**defaults, **given}.items()))


def model_input(model: ResolvedModel) -> int:
    """Longest side of the model's encoder input in pixels (sets the default tile size of scenes)."""
    if model.module is not None:
        from alps.sam.build import model_input_size

        return model_input_size(model.module)
    from alps.sam.registry import model_spec

    return model_spec(model.name).input_size


def build_source(
    model: ResolvedModel,
    masks: str,
    points_per_side: int,
    prompt: str | None,
    mode: str,
    generator: dict[str, Any],
    device: str,
    seed: int,
) -> MaskSource:
    """Load the model (once) and return the run's mask source."""
    if model.module is not None:
        sam = model.module
    else:
        from alps.sam import load_sam

        sam = load_sam(model.name, checkpoint=model.checkpoint, device=device, seed=seed)
    sam = sam.to(device).eval()
    extra = dict(generator)
    if masks == "slic":
        return slic_source(sam, points_per_side, extra)
    extra.update(points_per_side=points_per_side, output_mode="coco_rle")
    if prompt is not None:
        extra["prompt"] = prompt
    if mode != "exact":
        extra["mode"] = mode
    return sam_source(sam, extra)
