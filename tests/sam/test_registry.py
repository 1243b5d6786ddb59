"""The model registry: one ModelSpec per model type, and what build/generator derive from it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alps.sam import MODEL_TYPES, MODELS, default_prompt, load_sam, model_input_size, model_spec
from alps.sam.build import (
    BOX_PROMPT_MODELS,
    BUILDERS,
    LITEMEDSAM_ENCODER,
    MOBILE_SAM_ENCODER,
    LiteMedSam,
    build_sam_tiny_vit,
)
from alps.sam.weights import REGISTRY


def test_every_model_type_has_one_frozen_spec() -> None:
    assert MODEL_TYPES == tuple(MODELS) == ("vit_b", "vit_l", "vit_h", "vit_t", "litemedsam")
    for name, spec in MODELS.items():
        assert spec.name == name
        assert spec.weights is None or REGISTRY[spec.weights].model_type == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.input_size = 1  # type: ignore[misc]
    assert {name: spec.input_size for name, spec in MODELS.items()} == {
        "vit_b": 1024,
        "vit_l": 1024,
        "vit_h": 1024,
        "vit_t": 1024,
        "litemedsam": 256,
    }
    assert (
        BOX_PROMPT_MODELS == {n for n, s in MODELS.items() if s.default_prompt == "boxes"} == {"litemedsam"}
    )


def test_unknown_model_type_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown model_type 'vit_x'; choose one of \['vit_b'"):
        model_spec("vit_x")
    with pytest.raises(ValueError, match="unknown model_type 'vit_x'"):
        default_prompt("vit_x")


@pytest.mark.parametrize("name", ["vit_t", "litemedsam"])
def test_built_models_match_their_spec(name: str) -> None:
    spec = model_spec(name)
    model = load_sam(name)
    assert model.image_encoder.img_size == spec.input_size == model_input_size(model)
    assert model.prompt_encoder.input_image_size == (spec.input_size, spec.input_size)
    assert default_prompt(model) == default_prompt(name) == spec.default_prompt
    torch.manual_seed(0)
    a = BUILDERS[name]()
    torch.manual_seed(0)
    b = spec.builder()
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_models_built_outside_the_registry() -> None:
    # the LiteMedSam class carries its model type; a plain Sam falls back to its encoder and to points
    lite = build_sam_tiny_vit(LITEMEDSAM_ENCODER, LiteMedSam)
    assert default_prompt(lite) == "boxes" and model_input_size(lite) == 256
    mobile = build_sam_tiny_vit(MOBILE_SAM_ENCODER)
    assert default_prompt(mobile) == "points" and model_input_size(mobile) == 1024
