"""What we know about each SAM-family model, in one place: :data:`MODELS` and :func:`model_spec`.

One frozen :class:`ModelSpec` per ``model_type`` holds its builder, the side of the square image
its encoder takes, how pixels are normalised, the prompt type it was trained with and the
weights-registry name of its published checkpoint. ``alps.sam.build`` (``BUILDERS``,
``MODEL_TYPES``, ``BOX_PROMPT_MODELS``, ``model_input_size``) and
``alps.sam.generator.default_prompt`` are derived from it.

This module does not import torch: builders import their architecture on call, so the CLI can
list model types cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

Prompt = Literal["points", "boxes"]

#: attribute :meth:`ModelSpec.build` sets on every model it builds (read by :func:`spec_of`)
MODEL_TYPE_ATTR = "model_type"

_SAM_NORM = "resize longest side, ImageNet mean/std per channel (SAM), zero-pad bottom/right to a square"


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one ``model_type``.

    ``builder`` returns a randomly initialised model (from torch's current RNG state);
    ``input_size`` is the side in pixels of the square encoder input; ``preprocessing`` says how
    pixels are normalised; ``default_prompt`` is the prompt type the model was trained with;
    ``weights`` is the ``alps.sam.weights.REGISTRY`` name of its published checkpoint, or ``None``.
    """

    name: str
    builder: Callable[[], Sam]
    input_size: int
    preprocessing: str
    default_prompt: Prompt
    weights: str | None

    def build(self) -> Sam:
        """A random-initialised model tagged with its ``model_type`` (attribute ``model_type``)."""
        model = self.builder()
        setattr(model, MODEL_TYPE_ATTR, self.name)
        return model


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]) -> Callable[[], Sam]:
    def build() -> Sam:
        from alps.sam.build import build_sam_vit

        return build_sam_vit(embed_dim, depth, num_heads, global_attn)

    return build


def _mobile_sam() -> Sam:
    from alps.sam.build import MOBILE_SAM_ENCODER, build_sam_tiny_vit

    return build_sam_tiny_vit(MOBILE_SAM_ENCODER)


def _litemedsam() -> Sam:
    from alps.sam.build import LITEMEDSAM_ENCODER, LiteMedSam, build_sam_tiny_vit

    return build_sam_tiny_vit(LITEMEDSAM_ENCODER, LiteMedSam)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("vit_b", _vit(768, 12, 12, (2, 5, 8, 11)), 1024, _SAM_NORM, "points", "vit_b"),
        ModelSpec("vit_l", _vit(1024, 24, 16, (5, 11, 17, 23)), 1024, _SAM_NORM, "points", "vit_l"),
        ModelSpec("vit_h", _vit(1280, 32, 16, (7, 15, 23, 31)), 1024, _SAM_NORM, "points", "vit_h"),
        ModelSpec("vit_t", _mobile_sam, 1024, _SAM_NORM, "points", "vit_t"),
        ModelSpec(
            "litemedsam",
            _litemedsam,
            256,
            "resize longest side, min-max scale each image to [0, 1] over its valid pixels, "
            "zero-pad bottom/right to a square (LiteMedSam.preprocess)",
            "boxes",  # trained with box prompts only: point prompts give empty masks
            "litemedsam",
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ``ValueError`` naming the known types otherwise."""
    spec = MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model_type {name!r}; choose one of {list(MODELS)}")
    return spec


def spec_of(model: object) -> ModelSpec | None:
    """The spec of a model built by :meth:`ModelSpec.build` (or ``load_sam``), else ``None``."""
    name = getattr(model, MODEL_TYPE_ATTR, None)
    return MODELS.get(name) if isinstance(name, str) else None
