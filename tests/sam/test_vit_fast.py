"""The ViT forwards of fast mode (same maths) and exact mode (same bits) compute what segment-anything's
ImageEncoderViT computes."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

from alps.sam.vit_fast import encode_image, vit_forward, vit_forward_exact


def _small_vit(img_size: int) -> ImageEncoderViT:
    torch.manual_seed(0)
    enc = ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=96,
        depth=3,
        num_heads=4,
        mlp_ratio=4,
        out_chans=32,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=5,  # 8x8 grid with 5x5 windows: exercises window padding
        global_attn_indexes=(1,),
    )
    for p in enc.parameters():  # random relative-position tables (zeros by default would hide bugs)
        torch.nn.init.normal_(p, std=0.05)
    return enc.eval()


@pytest.mark.parametrize("batch", [1, 2])
def test_vit_forward_matches_official(batch: int) -> None:
    enc = _small_vit(128)
    x = torch.randn(batch, 3, 128, 128)
    with torch.no_grad():
        ref = enc(x)
        ours = vit_forward(enc, x)
    assert ours.shape == ref.shape == (batch, 32, 8, 8)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4), (ours - ref).abs().max()


def test_encode_image_falls_back_to_module_forward() -> None:
    module = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(encode_image(module, x), module(x))


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("batch", [1, 2])
def test_vit_forward_exact_is_bit_identical(batch: int, per_head: bool) -> None:
    # per_head=False is the batched in-place path other devices take; both run here on CPU tensors
    enc = _small_vit(128)
    x = torch.randn(batch, 3, 128, 128)
    with torch.no_grad():
        ref = enc(x)
        ours = vit_forward_exact(enc, x, per_head=per_head)
    assert torch.equal(ours, ref), (ours - ref).abs().max()
    assert not torch.equal(vit_forward(enc, x), ref)  # the fast path differs in rounding: a real check


def test_encode_image_exact_uses_module_forward_for_subclasses() -> None:
    class Custom(ImageEncoderViT):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 0.0

    torch.manual_seed(0)
    enc = Custom(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encode_image(enc, x, exact=True), torch.zeros(1, 8, 4, 4))
