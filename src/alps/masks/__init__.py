"""Automatic mask generation with SAM-family models."""

from alps.masks.generator import MaskGenerator, default_prompt
from alps.masks.image import to_rgb_uint8
from alps.masks.types import Geometry, MaskResult

__all__ = ["Geometry", "MaskGenerator", "MaskResult", "default_prompt", "to_rgb_uint8"]
