"""SAM-family models and automatic mask generation.

``registry`` (one :class:`ModelSpec` per model type), ``build`` (architectures and ``load_sam``),
``tiny_vit`` / ``vit_fast`` (encoders), ``weights`` (published checkpoints), ``prompts`` (point and
box grids), ``decoder`` and ``generator`` (the exact/fast automatic mask generator), ``types`` (what
the generator hands to the next stage).

Names load lazily so that ``alps.sam.weights`` (used by the CLI) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alps.sam.build import BUILDERS, MODEL_TYPES, LiteMedSam, load_sam, model_input_size
    from alps.sam.generator import MaskGenerator, default_prompt
    from alps.sam.registry import MODELS, ModelSpec, model_spec
    from alps.sam.tiny_vit import TinyViT, TinyViTConfig
    from alps.sam.types import Geometry, MaskResult
    from alps.sam.weights import WeightsEntry, fetch_weights, list_weights, weights_path

# public name -> module that defines it
_EXPORTS = {
    "BUILDERS": "alps.sam.build",
    "MODEL_TYPES": "alps.sam.build",
    "LiteMedSam": "alps.sam.build",
    "load_sam": "alps.sam.build",
    "model_input_size": "alps.sam.build",
    "MODELS": "alps.sam.registry",
    "ModelSpec": "alps.sam.registry",
    "model_spec": "alps.sam.registry",
    "TinyViT": "alps.sam.tiny_vit",
    "TinyViTConfig": "alps.sam.tiny_vit",
    "WeightsEntry": "alps.sam.weights",
    "fetch_weights": "alps.sam.weights",
    "list_weights": "alps.sam.weights",
    "weights_path": "alps.sam.weights",
    "MaskGenerator": "alps.sam.generator",
    "default_prompt": "alps.sam.generator",
    "Geometry": "alps.sam.types",
    "MaskResult": "alps.sam.types",
}

__all__ = [
    "BUILDERS",
    "MODELS",
    "MODEL_TYPES",
    "Geometry",
    "LiteMedSam",
    "MaskGenerator",
    "MaskResult",
    "ModelSpec",
    "TinyViT",
    "TinyViTConfig",
    "WeightsEntry",
    "default_prompt",
    "fetch_weights",
    "list_weights",
    "load_sam",
    "model_input_size",
    "model_spec",
    "weights_path",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alps.sam' has no attribute {name!r}")
    return getattr(import_module(module), name)
