"""Types that travel with generated masks to the later stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Geometry:
    """How an image was mapped onto the encoder input, so features can be pooled without the encoder.

    The image (``original_size`` = H, W) is resized so its longest side equals ``model_size``
    (giving ``input_size`` = h, w), then padded at the bottom/right to ``model_size`` squared.
    The embedding grid has ``embed_size`` cells per side; one cell covers ``stride`` input pixels.
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_size: int
    embed_size: int = 64

    @property
    def stride(self) -> float:
        return self.model_size / self.embed_size


@dataclass
class MaskResult:
    """Masks of one image plus the embedding computed for them (crop layer 0 = the whole image)."""

    masks: list[dict[str, Any]]
    embedding: torch.Tensor  # (C, embed_size, embed_size) float32 on CPU
    geometry: Geometry
