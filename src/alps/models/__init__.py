"""SAM-family models: builders, TinyViT, weights registry.

Names load lazily so that ``alps.models.weights`` (used by the CLI) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alps.models.build import BUILDERS, MODEL_TYPES, LiteMedSam, load_sam, model_input_size
    from alps.models.tiny_vit import TinyViT, TinyViTConfig
    from alps.models.weights import WeightsEntry, fetch_weights, list_weights, weights_path

# public name -> module that defines it
_EXPORTS = {
    "BUILDERS": "alps.models.build",
    "MODEL_TYPES": "alps.models.build",
    "LiteMedSam": "alps.models.build",
    "load_sam": "alps.models.build",
    "model_input_size": "alps.models.build",
    "TinyViT": "alps.models.tiny_vit",
    "TinyViTConfig": "alps.models.tiny_vit",
    "WeightsEntry": "alps.models.weights",
    "fetch_weights": "alps.models.weights",
    "list_weights": "alps.models.weights",
    "weights_path": "alps.models.weights",
}

__all__ = [
    "BUILDERS",
    "MODEL_TYPES",
    "LiteMedSam",
    "TinyViT",
    "TinyViTConfig",
    "WeightsEntry",
    "fetch_weights",
    "list_weights",
    "load_sam",
    "model_input_size",
    "weights_path",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alps.models' has no attribute {name!r}")
    return getattr(import_module(module), name)
