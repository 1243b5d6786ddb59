"""The restructured decoder pieces against SAM's own modules, on the real SAM decoder weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import batched_mask_to_box

import alps.sam.decoder as decoder_module
from alps.sam.decoder import (
    ImageContext,
    SamResize,
    decode_tokens,
    upscale_logits_like_sam,
    upscale_masks,
    upscale_masks_gemm,
)
from alps.sam.generator import mask_areas, mask_boxes, masks_to_rles


def _decoded(sam: torch.nn.Module, n_prompts: int) -> tuple[ImageContext, object]:
    gen = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 256, 64, 64, generator=gen)
    ctx = ImageContext.build(sam.prompt_encoder, sam.mask_decoder, embedding)
    points = torch.rand(n_prompts, 1, 2, generator=gen) * 1024
    labels = torch.ones(n_prompts, 1, dtype=torch.int)
    sparse, _ = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    return ctx, decode_tokens(sam.mask_decoder, ctx, sparse)


def test_gemm_upscaling_equals_the_decoder_modules(sam_real_decoder: torch.nn.Module) -> None:
    """Transposed convs as matrix products + one final pixel shuffle = SAM's upscaling + hypernetworks."""
    decoder = sam_real_decoder.mask_decoder
    ctx, out = _decoded(sam_real_decoder, 3)
    cases = {
        "every output of every prompt, interleaved": (
            torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2]),
            torch.tensor([1, 1, 1, 2, 2, 2, 3, 3, 3]),
        ),
        "uneven outputs per prompt, a prompt left out": (torch.tensor([2, 0, 2]), torch.tensor([3, 0, 1])),
    }
    for name, (prompt_idx, mask_idx) in cases.items():
        ref = upscale_masks(decoder, ctx, out, prompt_idx, mask_idx)  # type: ignore[arg-type]
        got = upscale_masks_gemm(decoder, ctx, out, prompt_idx, mask_idx)  # type: ignore[arg-type]
        assert got.shape == ref.shape == (len(prompt_idx), 256, 256), name
        scale = ref.abs().max()
        assert scale > 1.0, name  # real logits, not a degenerate all-zero output
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(scale), msg=name)
        # the sign (the mask) agrees everywhere except within rounding distance of the threshold
        flips = (got > 0) != (ref > 0)
        assert bool((ref[flips].abs() < 1e-3).all()), name


def test_gemm_upscaling_band_size_changes_no_bits(
    sam_real_decoder: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bands of embedding rows (uneven last band included) give the bits of one whole-image pass."""
    decoder = sam_real_decoder.mask_decoder
    ctx, out = _decoded(sam_real_decoder, 2)
    prompt_idx, mask_idx = torch.tensor([1, 0, 1, 0]), torch.tensor([3, 2, 1, 1])
    results = {}
    for rows in (64, 16, 5, 1):
        monkeypatch.setattr(decoder_module, "UPSCALE_ROWS", rows)
        results[rows] = upscale_masks_gemm(decoder, ctx, out, prompt_idx, mask_idx)  # type: ignore[arg-type]
    assert float(results[64].abs().max()) > 1.0
    for rows in (16, 5, 1):
        assert torch.equal(results[rows], results[64]), rows


def test_upscale_masks_is_the_decoder_modules_bitwise(sam_real_decoder: torch.nn.Module) -> None:
    """The reference upscaling (the fallback for other layouts) gives the very bits of SAM's
    output_upscaling and hypernetwork product, per-prompt batching included."""
    decoder = sam_real_decoder.mask_decoder
    ctx, out = _decoded(sam_real_decoder, 2)
    prompt_idx, mask_idx = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 3, 1, 2])
    got = upscale_masks(decoder, ctx, out, prompt_idx, mask_idx)  # type: ignore[arg-type]
    keys = out.keys  # type: ignore[attr-defined]
    src = keys.transpose(1, 2).reshape(len(keys), -1, *ctx.size)
    with torch.no_grad():
        upscaled = decoder.output_upscaling(src)
        tokens = out.mask_tokens[prompt_idx, mask_idx]  # type: ignore[attr-defined]
        hyper = torch.stack(
            [decoder.output_hypernetworks_mlps[int(m)](t) for t, m in zip(tokens, mask_idx, strict=True)]
        )
    # one (outputs, c') @ (c', pixels) product per prompt, as SAM's decoder multiplies its outputs
    ref = torch.bmm(hyper.view(2, 2, -1), upscaled.flatten(2)).view(-1, 256, 256)
    assert got.abs().max() > 1.0
    assert torch.equal(got, ref)


@pytest.mark.parametrize(
    ("low", "model_size", "input_size", "out_size"),
    [
        ((256, 256), 1024, (1024, 1024), (512, 512)),  # ViT-B, square crop: scale 2 down
        ((256, 256), 1024, (1024, 922), (400, 360)),  # non-square: padding cropped, scale 2.56
        ((256, 256), 256, (256, 256), (400, 400)),  # LiteMedSAM: 256 px model, upscaled to the tile
    ],
)
def test_sam_resize_decides_every_threshold_like_sam(
    sam_real_decoder: torch.nn.Module,
    low: tuple[int, int],
    model_size: int,
    input_size: tuple[int, int],
    out_size: tuple[int, int],
) -> None:
    """Exact mode's resize: the same bits as Sam.postprocess_masks at the pixels it recomputes, the
    same answer to ``logits > t`` for the mask and stability thresholds everywhere."""
    ctx, out = _decoded(sam_real_decoder, 4)
    prompt_idx, mask_idx = torch.arange(4).repeat_interleave(3), torch.tensor([1, 2, 3]).repeat(4)
    low_res = upscale_masks(sam_real_decoder.mask_decoder, ctx, out, prompt_idx, mask_idx)  # type: ignore[arg-type]
    if low != tuple(low_res.shape[-2:]):
        low_res = torch.nn.functional.interpolate(low_res[:, None], low, mode="bilinear")[:, 0]
    ref = upscale_logits_like_sam(low_res, model_size, input_size, out_size)
    resize = SamResize.build(low, model_size, input_size, out_size)
    got = resize.logits(low_res, 0.0, 1.0)
    got_t = resize.logits(low_res, 0.0, 1.0, transposed=True)  # exact mode's column-major masks
    assert got.shape == ref.shape and got_t.shape == (ref.shape[0], ref.shape[2], ref.shape[1])
    for t in (-1.0, 0.0, 1.0):
        assert torch.equal(got > t, ref > t), t
        assert torch.equal(got_t.transpose(1, 2) > t, ref > t), t
        assert 0 < int((ref > t).sum()) < ref.numel()  # real decisions, not a constant mask
    k, y, x = (torch.randint(0, n, (5000,), generator=torch.Generator().manual_seed(1)) for n in ref.shape)
    assert torch.equal(resize.exact_at(low_res, k, y, x), ref[k, y, x])
    for approx in (resize.approx(low_res), resize.approx(low_res, transposed=True).transpose(1, 2)):
        assert float((approx - ref).abs().max()) < 1e-5 * float(low_res.abs().max())


def test_sam_resize_band_matches_the_dense_product() -> None:
    """The banded resize (exact mode's fast path) is the composite matrix product, to float32 rounding,
    on a square crop, a non-square one with padding, and an upscaled LiteMedSAM tile."""
    x = torch.randn(3, 256, 256, generator=torch.Generator().manual_seed(0)) * 5
    for geometry in [
        ((256, 256), 1024, (1024, 1024), (512, 512)),
        ((256, 256), 1024, (1024, 922), (400, 360)),
        ((256, 256), 256, (256, 256), (400, 400)),
    ]:
        resize = SamResize.build(*geometry)
        assert resize.band_h is not None and resize.band_w is not None, geometry
        dense = torch.matmul(resize.rows, x @ resize.cols_t)
        banded = resize.approx(x)
        assert banded.shape == dense.shape == (3, *geometry[3])
        assert float((banded - dense).abs().max()) < 1e-5 * float(x.abs().max()), geometry


def test_mask_areas_counts_pixels() -> None:
    masks = torch.rand(4, 70, 90, generator=torch.Generator().manual_seed(0)) > 0.3
    assert torch.equal(mask_areas(masks).long(), masks.flatten(1).sum(1))


def test_mask_boxes_equal_segment_anythings() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 70, 90, generator=gen) > 0.999  # sparse: boxes well inside the image
    masks[1] = False  # empty
    masks[2] = False
    masks[2, 69, 0] = True  # one pixel in a corner
    masks[3] = True  # full
    masks[4, :, :] = False
    masks[4, 10:20, 30:31] = True  # a one-column bar
    got = mask_boxes(masks)
    ref = batched_mask_to_box(masks)
    assert got.dtype == ref.dtype
    assert torch.equal(got, ref)
    assert got[2].tolist() == [0, 69, 0, 69] and got[1].tolist() == [0, 0, 0, 0]
    assert mask_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)
    assert torch.equal(mask_boxes(masks.transpose(1, 2).contiguous(), transposed=True), ref)


def test_rles_of_column_major_masks_equal_pycocotools() -> None:
    """Exact mode's masks come transposed (column-major); their RLEs are those of the masks."""
    from pycocotools import mask as mask_utils

    masks = torch.rand(5, 37, 53, generator=torch.Generator().manual_seed(2)) > 0.6
    masks[0] = False
    want = [mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in masks]
    for got in (masks_to_rles(masks), masks_to_rles(masks.transpose(1, 2).contiguous(), transposed=True)):
        assert [r["counts"] for r in got] == [r["counts"] for r in want]
        assert all(list(r["size"]) == [37, 53] for r in got)
