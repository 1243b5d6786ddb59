"""Fast mode's factored two-way transformer (alps.sam.lowrank) against the restructured decoder, on real
weights: the same function up to float32 rounding, and the same masks from the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything.modeling import MaskDecoder, TwoWayTransformer

from alps.sam import MaskGenerator, generator, load_sam
from alps.sam.decoder import ImageContext, decode_tokens, upscale_masks_gemm
from alps.sam.lowrank import (
    LowRankContext,
    decode_tokens_lowrank,
    final_keys,
    first_upscaling_step,
    supports_lowrank,
)


@pytest.fixture(scope="module")
def litemedsam(litemedsam_checkpoint: Path) -> torch.nn.Module:
    return load_sam("litemedsam", checkpoint=litemedsam_checkpoint)


def _embed(sam: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """The model's image embedding of ``image`` (resized and padded as the generator does)."""

    gen = MaskGenerator(sam, mode="fast")
    with torch.no_grad():
        return gen._embed(image)[0]


def _compare(sam: torch.nn.Module, embedding: torch.Tensor, sparse: torch.Tensor) -> None:
    decoder = sam.mask_decoder
    assert supports_lowrank(decoder)
    ctx = ImageContext.build(sam.prompt_encoder, decoder, embedding)
    lr = LowRankContext.build(decoder, ctx)
    ref = decode_tokens(decoder, ctx, sparse)
    got = decode_tokens_lowrank(decoder, lr, sparse)
    assert float(ref.keys.std()) > 0.1 and float(ref.iou_pred.std()) > 1e-3  # not a degenerate case
    torch.testing.assert_close(got.iou_pred, ref.iou_pred, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        got.mask_tokens, ref.mask_tokens, rtol=0, atol=1e-4 * float(ref.mask_tokens.abs().max())
    )
    for p in range(len(sparse)):
        torch.testing.assert_close(
            final_keys(lr, got, p), ref.keys[p], rtol=0, atol=1e-4 * float(ref.keys.abs().max())
        )
    # the low-res logits through the factored first upscaling step, as the generator computes them
    prompt_idx = torch.arange(len(sparse)).repeat_interleave(2)
    mask_idx = torch.tensor([0, 3]).repeat(len(sparse))
    want = upscale_masks_gemm(decoder, ctx, ref, prompt_idx, mask_idx)
    have = upscale_masks_gemm(decoder, ctx, got, prompt_idx, mask_idx, first_upscaling_step(lr, got))
    scale = float(want.abs().max())
    assert scale > 1.0
    torch.testing.assert_close(have, want, rtol=0, atol=1e-4 * scale)


def test_factored_decoder_equals_the_decoder_on_point_prompts(sam_real_decoder: torch.nn.Module) -> None:
    """SAM ViT-H's real decoder, point prompts (a pad token each), an odd batch."""
    gen = torch.Generator().manual_seed(1)
    embedding = torch.randn(1, 256, 64, 64, generator=gen)
    points = torch.rand(3, 1, 2, generator=gen) * 1024
    with torch.no_grad():
        sparse, _ = sam_real_decoder.prompt_encoder(
            points=(points, torch.ones(3, 1, dtype=torch.int)), boxes=None, masks=None
        )
        _compare(sam_real_decoder, embedding, sparse)


def test_factored_decoder_equals_the_decoder_on_real_embeddings(
    litemedsam: torch.nn.Module, aerial_image: np.ndarray
) -> None:
    """LiteMedSAM's real encoder and decoder on a real aerial tile, box prompts."""
    embedding = _embed(litemedsam, aerial_image)
    boxes = torch.tensor([[0.0, 0.0, 128.0, 128.0], [100.0, 40.0, 180.0, 250.0]])
    with torch.no_grad():
        sparse, _ = litemedsam.prompt_encoder(points=None, boxes=boxes, masks=None)
        _compare(litemedsam, embedding, sparse)


def test_fast_mode_factored_gives_the_same_masks(
    litemedsam: torch.nn.Module, aerial_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generator uses the factored decoder in fast float32 mode; ``factored=False`` (the plain
    decoder) changes no mask beyond rounding at a threshold."""
    calls: list[int] = []
    real = generator.decode_tokens_lowrank

    def spy(*args: object) -> object:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(generator, "decode_tokens_lowrank", spy)
    factored = MaskGenerator(litemedsam, points_per_side=16, mode="fast").generate(aerial_image)
    assert calls
    calls.clear()
    plain = MaskGenerator(litemedsam, points_per_side=16, mode="fast", factored=False).generate(aerial_image)
    assert not calls
    assert len(plain) > 20
    same = {m["segmentation"].tobytes() for m in plain} & {m["segmentation"].tobytes() for m in factored}
    print(f"factored fast mode: {len(factored)} masks, plain {len(plain)}, identical {len(same)}")
    assert len(same) >= 0.97 * max(len(plain), len(factored))


def test_upscaling_in_bfloat16_after_the_float32_transformer(
    litemedsam: torch.nn.Module, aerial_image: np.ndarray
) -> None:
    """precision='mixed': the output upscaling in bfloat16 from the factored float32 keys (and from the
    plain decoder's keys) gives float32 logits within bfloat16 rounding of the float32 upscaling; a
    pixel changes side of the mask threshold only where its logit is within rounding of it."""
    embedding = _embed(litemedsam, aerial_image)
    decoder = litemedsam.mask_decoder
    boxes = torch.tensor([[0.0, 0.0, 128.0, 128.0], [100.0, 40.0, 180.0, 250.0], [30.0, 30.0, 90.0, 60.0]])
    with torch.no_grad():
        sparse, _ = litemedsam.prompt_encoder(points=None, boxes=boxes, masks=None)
        ctx = ImageContext.build(litemedsam.prompt_encoder, decoder, embedding)
        lr32 = LowRankContext.build(decoder, ctx)
        lr16 = LowRankContext.build(decoder, ctx, torch.bfloat16)
        assert lr16.up_shared.dtype == torch.bfloat16 and lr16.a1v.dtype == torch.float32
        got = decode_tokens_lowrank(decoder, lr32, sparse)
        ref = decode_tokens(decoder, ctx, sparse)
    prompt_idx, mask_idx = torch.arange(3), torch.zeros(3, dtype=torch.long)
    want = upscale_masks_gemm(decoder, ctx, got, prompt_idx, mask_idx, first_upscaling_step(lr32, got))
    scale = float(want.abs().max())
    assert all(int((want[i] > 0).sum()) > 500 for i in range(3))  # three real masks
    for have in (
        upscale_masks_gemm(
            decoder, ctx, got, prompt_idx, mask_idx, first_upscaling_step(lr16, got), torch.bfloat16
        ),
        upscale_masks_gemm(decoder, ctx, ref, prompt_idx, mask_idx, None, torch.bfloat16),
    ):
        assert have.dtype == torch.float32
        err = (have - want).abs()
        assert 1e-4 * scale < float(err.max()) < 3e-2 * scale  # bfloat16 rounding, not float32's
        flips = (have > 0) != (want > 0)
        assert float(flips.float().mean()) < 1e-3
        assert not flips.any() or float(want.abs()[flips].max()) < 5e-3 * scale


def test_supports_lowrank_only_for_sams_layout() -> None:
    """A transformer of another depth keeps the plain decoder."""
    two = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(2, 32, 4, 64))
    one = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(1, 32, 4, 64))
    assert supports_lowrank(two)
    assert not supports_lowrank(one)


def test_fast_mode_with_crops(litemedsam: torch.nn.Module, aerial_image: np.ndarray) -> None:
    """Fast mode over a crop layer (the factored decoder per crop, low-res boxes moved into the image,
    masks uncropped): the plain decoder's masks, and most of exact mode's."""
    kw = {"points_per_side": 8, "crop_n_layers": 1}
    factored = MaskGenerator(litemedsam, mode="fast", **kw).generate(aerial_image)
    plain = MaskGenerator(litemedsam, mode="fast", factored=False, **kw).generate(aerial_image)
    exact = MaskGenerator(litemedsam, mode="exact", **kw).generate(aerial_image)
    crops = {tuple(m["crop_box"]) for m in factored}
    print(
        f"crops: fast {len(factored)} masks from {len(crops)} crops, plain {len(plain)}, exact {len(exact)}"
    )
    assert len(crops) > 1  # masks from the whole image and from the crops
    assert all(m["segmentation"].shape == aerial_image.shape[:2] for m in factored)
    same = {m["segmentation"].tobytes() for m in plain} & {m["segmentation"].tobytes() for m in factored}
    assert len(same) >= 0.97 * max(len(plain), len(factored))
    big = [m["segmentation"] for m in exact if m["area"] >= 50]
    found = sum(
        max(
            (np.logical_and(e, f["segmentation"]).sum() / np.logical_or(e, f["segmentation"]).sum())
            for f in factored
        )
        >= 0.8
        for e in big
    )
    assert big and found >= 0.9 * len(big), f"fast found {found} of exact's {len(big)} masks"
