"""SAM's mask decoder, restructured for many prompts on one image.

The official decoder repeats the 64x64x256 image embedding once per prompt and projects it through
every attention layer per prompt. Most of that work does not depend on the prompt, or can be done on
the (few) prompt tokens instead of the 4096 image tokens. This module evaluates the same function as
:class:`segment_anything.modeling.MaskDecoder` with identical weights (only floating-point rounding
differs):

* layer 0 sees the same image keys for every prompt, so its image-side projections are computed
  once per image (:class:`ImageContext`);
* where tokens attend to the image, the key projection is folded into the query
  (``q . (W_k x + b_k) = (W_k^T q) . x + const``; the constant cancels in the softmax) and the value
  projection is applied after the attention-weighted sum (rows of a softmax sum to one);
* where the image attends to tokens, the query projection is folded into the token keys and the
  output projection into the token values, so per prompt the image side costs
  ``N x (heads * tokens) x C`` instead of ``N x C x C``;
* the expensive output upscaling runs only for prompts with at least one mask whose predicted IoU
  passes the caller's threshold (the IoU head does not depend on the upscaling).

Shapes: ``N`` = embedding cells (64*64), ``C`` = 256 channels, ``T`` = prompt tokens incl. the
IoU and mask tokens, ``H`` = attention heads, ``d`` = channels per head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch import Tensor, nn


def _heads(attn: Attention) -> tuple[int, int]:
    return attn.num_heads, attn.internal_dim // attn.num_heads


def split_heads(x: Tensor, heads: int) -> Tensor:
    """Per-cell projections (N, heads * d) -> (heads, N, d), contiguous."""
    return x.reshape(x.shape[0], heads, -1).transpose(0, 1).contiguous()


@dataclass
class ImageContext:
    """Prompt-independent decoder tensors for one image embedding."""

    keys: Tensor  # (1, N, C) embedding + dense no-mask prompt embedding
    layer0_k: Tensor  # (H, N, d) token->image keys of layer 0
    layer0_v: Tensor  # (H, N, d) token->image values of layer 0
    layer0_q: Tensor  # (H, N, d) image->token queries of layer 0
    size: tuple[int, int]  # embedding grid (h, w)
    # positional parts of later layers, by id of the attention module: token->image
    # ``W_k pe`` (H, d, N) and image->token ``pe W_q^T`` (H, N, d); biases are handled per prompt
    pe_keys: dict[int, Tensor] = field(default_factory=dict)
    pe_queries: dict[int, Tensor] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def build(cls, prompt_encoder: PromptEncoder, decoder: MaskDecoder, embedding: Tensor) -> ImageContext:
        """``embedding``: (1, C, h, w) image embedding from the encoder. The context computes in the
        embedding's dtype (the decoder's too, e.g. bfloat16); the prompt encoder's dense positional
        encoding is computed in its own (float32) and then cast."""
        h, w = embedding.shape[-2:]
        dtype = embedding.dtype
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(dtype)
        # the stored keys are channels-last and contiguous: a transposed view made every per-prompt
        # copy of them a strided gather (3.3 ms instead of 0.1 ms for two prompts); the layer-0
        # projections read the transposed view, whose GEMM gives the bits of the pinned outputs
        keys_view = (embedding + dense).flatten(2).transpose(1, 2)
        key_pe = prompt_encoder.get_dense_pe().to(dtype).flatten(2).transpose(1, 2)
        layer0 = decoder.transformer.layers[0]
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        keys_pe = keys_view + key_pe
        keys = keys_view.contiguous()

        def split(x: Tensor, attn: Attention) -> Tensor:
            return split_heads(x[0], attn.num_heads)

        pe = key_pe[0]
        pe_keys, pe_queries = {}, {}
        transformer = decoder.transformer
        later = transformer.layers[1:]
        for attn in [
            *(layer.cross_attn_token_to_image for layer in later),
            transformer.final_attn_token_to_image,
        ]:
            heads, d = _heads(attn)
            pe_keys[id(attn)] = (
                (pe @ attn.k_proj.weight.T).reshape(-1, heads, d).permute(1, 2, 0).contiguous()
            )
        for attn in (layer.cross_attn_image_to_token for layer in later):
            heads, d = _heads(attn)
            pe_queries[id(attn)] = (
                (pe @ attn.q_proj.weight.T).reshape(-1, heads, d).transpose(0, 1).contiguous()
            )
        return cls(
            keys=keys,
            layer0_k=split(t2i.k_proj(keys_pe), t2i),
            layer0_v=split(t2i.v_proj(keys_view), t2i),
            layer0_q=split(i2t.q_proj(keys_pe), i2t),
            size=(h, w),
            pe_keys=pe_keys,
            pe_queries=pe_queries,
        )


def _per_head(x: Tensor, w: Tensor) -> Tensor:
    """``x`` (B, H, T, k) times a per-head matrix shared by all prompts ``w`` (H, k, M) -> (B, H, T, M).

    One batched GEMM over heads (``torch.matmul`` would first copy ``w`` once per prompt).
    """
    b, h, t, k = x.shape
    out = torch.bmm(x.transpose(0, 1).reshape(h, b * t, k), w)
    return out.reshape(h, b, t, -1).transpose(0, 1)


def _token_to_image(attn: Attention, q_tok: Tensor, keys: Tensor, pe_k: Tensor) -> Tensor:
    """Tokens (B, T, C) attend to per-prompt image keys (B, N, C) plus the positional part
    ``pe_k`` = ``W_k pe`` (H, d, N) projected once per image; returns (B, T, C)."""
    b, t, c = q_tok.shape
    heads, d = _heads(attn)
    q = attn.q_proj(q_tok).reshape(b, t, heads, d).transpose(1, 2) / math.sqrt(d)  # (B,H,T,d)
    w_k = attn.k_proj.weight.reshape(heads, d, c)
    folded = torch.einsum("bhtd,hdc->bhtc", q, w_k).reshape(b, heads * t, c)
    pe_term = _per_head(q, pe_k).reshape(b, heads * t, -1)
    # (B,H*T,N), summed into the fresh pe_term; the k bias is a constant per row
    scores = pe_term.baddbmm_(folded, keys.transpose(1, 2))
    probs = torch.softmax(scores, dim=-1)
    mixed = torch.bmm(probs, keys).reshape(b, heads, t, c)  # softmax rows sum to one
    w_v = attn.v_proj.weight.reshape(heads, d, c)
    out = torch.einsum("bhtc,hdc->bhtd", mixed, w_v) + attn.v_proj.bias.reshape(1, heads, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, heads * d))


def _token_to_image_shared(attn: Attention, q_tok: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Tokens (B, T, C) attend to image keys/values projected once per image: k, v (H, N, d)."""
    b, t, _ = q_tok.shape
    heads, d = _heads(attn)
    q = attn.q_proj(q_tok).reshape(b, t, heads, d).transpose(1, 2) / math.sqrt(d)  # (B,H,T,d)
    probs = torch.softmax(_per_head(q, k.transpose(1, 2)), dim=-1)  # (B,H,T,N)
    out = _per_head(probs, v)  # (B,H,T,d)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, heads * d))


def _image_to_token(
    attn: Attention,
    q_tok: Tensor,
    v_tok: Tensor,
    keys: Tensor,
    shared_q: Tensor | None,
    pe_q: Tensor | None,
    overwrite: bool = False,
) -> Tensor:
    """Image cells attend to tokens; returns ``keys + attention output`` (B, N, C), before the norm.

    ``q_tok``: token keys input (queries + pe), ``v_tok``: token values input (queries), both
    (B, T, C). The image queries are either projected once per image (``shared_q``, (H, N, d)) or
    ``keys + pe`` with the query projection folded into the token keys and the positional part
    ``pe_q`` = ``pe W_q^T`` (H, N, d) projected once per image. The output projection
    is folded into the token values, its bias spread over the heads (each head's softmax sums to 1).
    ``overwrite``: the sum is written over ``keys`` (the same bits, without a fresh (B, N, C) copy).
    """
    b, t, c = q_tok.shape
    heads, d = _heads(attn)
    kt = attn.k_proj(q_tok).reshape(b, t, heads, d).transpose(1, 2) / math.sqrt(d)  # (B,H,T,d)
    if shared_q is not None:
        scores = _per_head(kt, shared_q.transpose(1, 2))  # (B,H,T,N)
    else:
        w_q = attn.q_proj.weight.reshape(heads, d, c)
        folded = torch.einsum("hdc,bhtd->bhtc", w_q, kt).reshape(b, heads * t, c)
        bias = torch.einsum("hd,bhtd->bht", attn.q_proj.bias.reshape(heads, d), kt).reshape(b, heads * t, 1)
        assert pe_q is not None
        pe_term = _per_head(kt, pe_q.transpose(1, 2)).reshape(b, heads * t, -1) + bias
        scores = pe_term.baddbmm_(folded, keys.transpose(1, 2)).reshape(b, heads, t, -1)
    probs = torch.softmax(scores, dim=2).reshape(b, heads * t, -1)  # over the tokens of each head
    vt = attn.v_proj(v_tok).reshape(b, t, heads, d)
    w_o = attn.out_proj.weight.reshape(c, heads, d)
    values = torch.einsum("bthd,chd->bhtc", vt, w_o) + attn.out_proj.bias / heads
    if overwrite:
        return keys.baddbmm_(probs.transpose(1, 2), values.reshape(b, heads * t, c))
    return torch.baddbmm(keys, probs.transpose(1, 2), values.reshape(b, heads * t, c))


def token_side(
    layer: TwoWayAttentionBlock, queries: Tensor, query_pe: Tensor, attend: Callable[[Tensor], Tensor]
) -> Tensor:
    """The token half of one TwoWayAttentionBlock, as SAM computes it: self-attention, the tokens'
    attention to the image (``attend(queries + query_pe)``, computed by the caller's image-side form)
    and the MLP, each with its residual and norm. Returns the new queries (B, T, C)."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    queries = layer.norm2(queries + attend(queries + query_pe))
    return layer.norm3(queries + layer.mlp(queries))


def _block(
    layer: TwoWayAttentionBlock,
    queries: Tensor,
    keys: Tensor | None,
    query_pe: Tensor,
    ctx: ImageContext,
) -> tuple[Tensor, Tensor]:
    """One TwoWayAttentionBlock; ``keys=None`` means the shared image keys of layer 0."""
    t2i = layer.cross_attn_token_to_image

    def attend(q: Tensor) -> Tensor:
        if keys is None:
            return _token_to_image_shared(t2i, q, ctx.layer0_k, ctx.layer0_v)
        return _token_to_image(t2i, q, keys, ctx.pe_keys[id(t2i)])

    queries = token_side(layer, queries, query_pe, attend)
    q = queries + query_pe
    shared_q = ctx.layer0_q if keys is None else None
    keys_in = ctx.keys if keys is None else keys
    i2t = layer.cross_attn_image_to_token
    # a later layer's keys are this block's own and not read again: the sum may overwrite them
    pre_norm = _image_to_token(
        i2t, q, queries, keys_in, shared_q, ctx.pe_queries.get(id(i2t)), overwrite=keys is not None
    )
    return queries, layer.norm4(pre_norm)


@dataclass
class DecoderOutput:
    iou_pred: Tensor  # (B, M) predicted IoU of every mask output (M = 4 incl. the single-mask one)
    mask_tokens: Tensor  # (B, M, C)
    keys: Tensor  # (B, N, C) final image keys


@torch.no_grad()
def decode_tokens(decoder: MaskDecoder, ctx: ImageContext, sparse: Tensor) -> DecoderOutput:
    """Run the two-way transformer for a batch of prompts (``sparse``: (B, S, C) prompt tokens)."""
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    transformer = decoder.transformer
    queries, keys = tokens, None
    for layer in transformer.layers:
        queries, keys = _block(layer, queries, keys, tokens, ctx)
    assert keys is not None
    final = transformer.final_attn_token_to_image
    attn_out = _token_to_image(final, queries + tokens, keys, ctx.pe_keys[id(final)])
    queries = transformer.norm_final_attn(queries + attn_out)
    iou_pred = decoder.iou_prediction_head(queries[:, 0, :])
    return DecoderOutput(iou_pred, queries[:, 1 : 1 + decoder.num_mask_tokens, :], keys)


def _hyper_vectors(decoder: MaskDecoder, out: DecoderOutput, prompt_idx: Tensor, mask_idx: Tensor) -> Tensor:
    """(K, c') hypernetwork output of each (prompt, mask output) pair: each output's MLP on its tokens."""
    tokens = out.mask_tokens[prompt_idx, mask_idx]  # (K, C)
    mlps = decoder.output_hypernetworks_mlps
    hyper = torch.empty(
        len(prompt_idx), mlps[0].layers[-1].out_features, dtype=tokens.dtype, device=tokens.device
    )
    for i, mlp in enumerate(mlps):
        sel = mask_idx == i
        if sel.any():
            hyper[sel] = mlp(tokens[sel])
    return hyper


def _activate_(act: nn.Module, x: Tensor) -> Tensor:
    """``act(x)``, in place for GELU and ReLU (same values; a fresh multi-MB output per call was measured
    ~4x slower than the op itself in the per-prompt loop)."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if type(act) is nn.ReLU:
        return F.relu_(x)
    return act(x)


@torch.no_grad()
def upscale_masks(
    decoder: MaskDecoder, ctx: ImageContext, out: DecoderOutput, prompt_idx: Tensor, mask_idx: Tensor
) -> Tensor:
    """Low-resolution mask logits (len(prompt_idx), 4h, 4w) for the given (prompt, mask output) pairs,
    with the decoder's own upscaling modules: the reference of the tests and the fallback of
    :func:`upscale_masks_gemm` (which both modes use) for a non-standard upscaling layout.

    The upscaling network runs once per distinct prompt, the hypernetwork once per pair.
    """
    h, w = ctx.size
    prompts, inverse = torch.unique(prompt_idx, return_inverse=True)
    src = out.keys[prompts].transpose(1, 2).reshape(len(prompts), -1, h, w)
    upscaled = decoder.output_upscaling(src)  # (P, c', 4h, 4w), the official modules
    hyper = _hyper_vectors(decoder, out, prompt_idx, mask_idx)  # (K, c')
    return _per_prompt_products(hyper, inverse, upscaled.flatten(2)).view(-1, *upscaled.shape[-2:])


def _per_prompt_products(hyper: Tensor, inverse: Tensor, features: Tensor) -> Tensor:
    """``hyper[k] @ features[inverse[k]]`` for every k: (K, c') and (P, c', L) -> (K, L).

    One ``(M, c') @ (c', L)`` product per prompt over its M vectors, as SAM's decoder does for its four
    outputs (each logit is one length-c' dot product, so the batching changes no bits); the (K, c', L)
    gather of the features a per-pair product would need is never built.
    """
    counts = torch.bincount(inverse, minlength=len(features))
    if bool((counts == counts[0]).all()):  # the usual case: the same outputs for every prompt
        order = torch.argsort(inverse, stable=True)
        per_prompt = hyper[order].view(len(features), -1, hyper.shape[-1])  # (P, M, c')
        logits = torch.bmm(per_prompt, features).view(-1, features.shape[-1])
        return logits[torch.argsort(order)]
    return torch.stack([hyper[k] @ features[inverse[k]] for k in range(len(hyper))])


def _gemm_upscaling(
    decoder: MaskDecoder,
) -> tuple[nn.ConvTranspose2d, LayerNorm2d, nn.Module, nn.ConvTranspose2d, nn.Module] | None:
    """The parts of SAM's output upscaling if it has the standard layout (2x2 stride-2 transposed convs,
    LayerNorm2d, activations), else None."""
    layers = list(decoder.output_upscaling)
    if len(layers) != 5:
        return None
    up1, norm, act1, up2, act2 = layers
    ok = all(
        isinstance(c, nn.ConvTranspose2d)
        and c.kernel_size == (2, 2)
        and c.stride == (2, 2)
        and c.padding == (0, 0)
        and c.groups == 1
        and c.bias is not None
        for c in (up1, up2)
    )
    if not ok or not isinstance(norm, LayerNorm2d):
        return None
    return up1, norm, act1, up2, act2


def _conv_t_as_matrix(conv: nn.ConvTranspose2d) -> tuple[Tensor, Tensor]:
    """A 2x2 stride-2 transposed conv as ``(C_in, 4 C_out)`` weights (columns in (dy, dx, c) order), bias."""
    assert conv.bias is not None
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1)
    return weight, conv.bias.repeat(4)


# Embedding rows upscaled together by :func:`upscale_masks_gemm`: 16 rows of 64 cells keep the
# intermediates (4 MB and 8 MB per chunk) in cache; whole prompts at once went to memory and back
# (decoder batches of 2 prompts on one thread: 1.64 -> 1.30 s per 64 prompts, same bits as unchunked).
UPSCALE_ROWS = 16


# ``first_step(prompt, cell0, cell1)``: the first upscaling step's product ``keys[cell0:cell1] @ W1 + b1``
# (cells x 4 C1) of one prompt, for decoders whose final keys are kept in another form
FirstStep = Callable[[int, int, int], Tensor]


@torch.no_grad()
def upscale_masks_gemm(
    decoder: MaskDecoder,
    ctx: ImageContext,
    out: DecoderOutput,
    prompt_idx: Tensor,
    mask_idx: Tensor,
    first_step: FirstStep | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """:func:`upscale_masks` computed channels-last as matrix products, a band of embedding rows at a
    time (rounding differs from the modules').

    A 2x2 stride-2 transposed convolution writes each input cell into its own 2x2 output block, so it is
    one ``(cells, C_in) @ (C_in, 4 C_out)`` product; LayerNorm2d becomes a layer norm over the last axis.
    A band of ``UPSCALE_ROWS`` embedding rows goes through both steps, the activations and the
    hypernetwork products while it is in cache. Output row ``4i + 2a + a'`` and column ``4j + 2b + b'``
    come from cell ``(i, j)`` and the sub-positions ``(a, b)``, ``(a', b')`` of the two steps: the first
    step's rows are reordered to ``(i, a, j, b)`` (runs of ``2 C_1`` floats) and the second step runs
    once per ``a'``, so each hypernetwork product yields whole image rows and nothing is shuffled at the
    pixel level. Every cell and channel is computed independently, so the band size and the split change
    no bits. Falls back to :func:`upscale_masks` for another layout. ``first_step`` computes the first
    step's product in place of ``out.keys @ W1`` (for :func:`alps.sam.lowrank.decode_tokens_lowrank`,
    whose keys stay factored; it must return ``dtype``). ``dtype``: the dtype the two steps, their norm
    and activations and the hypernetwork products compute in (default: the decoder's); the logits are
    float32 either way.
    """
    parts = _gemm_upscaling(decoder)
    if parts is None:
        assert first_step is None, "first_step needs the standard upscaling layout"
        return upscale_masks(decoder, ctx, out, prompt_idx, mask_idx)
    up1, norm, act1, up2, act2 = parts
    h, w = ctx.size
    w1, b1 = _conv_t_as_matrix(up1)
    w2, b2 = _conv_t_as_matrix(up2)
    c1, c2 = int(up1.out_channels), int(up2.out_channels)
    hyper = _hyper_vectors(decoder, out, prompt_idx, mask_idx)  # (K, c2)
    if dtype is not None and dtype != w1.dtype:
        w1, b1, w2, b2, hyper = (t.to(dtype) for t in (w1, b1, w2, b2, hyper))
    norm_w, norm_b = (None if t is None else t.to(w1.dtype) for t in (norm.weight, norm.bias))
    # the second step's columns (a', b', c2) split by a': (c1, 2 c2) each
    w2_by_row = [w2[:, a * 2 * c2 : (a + 1) * 2 * c2].contiguous() for a in (0, 1)]
    b2_by_row = [b2[a * 2 * c2 : (a + 1) * 2 * c2] for a in (0, 1)]

    def from_keys(prompt: int, cell0: int, cell1: int) -> Tensor:
        return torch.addmm(b1, out.keys[prompt, cell0:cell1].to(w1.dtype), w1)

    step1 = first_step or from_keys
    # float32 logits whatever the decoder's dtype (a bfloat16 band is widened as it is written)
    logits = hyper.new_empty(len(prompt_idx), 4 * h, 4 * w, dtype=torch.float32)
    order = torch.argsort(prompt_idx, stable=True)
    prompts, counts = torch.unique_consecutive(prompt_idx[order], return_counts=True)
    rows = UPSCALE_ROWS
    start = 0
    for prompt, count in zip(prompts.tolist(), counts.tolist(), strict=True):
        pairs = order[start : start + count]
        start += count
        first = int(pairs[0])
        contiguous = count == 1 or bool((pairs[1:] - pairs[:-1] == 1).all())
        dest = logits[first : first + count] if contiguous else logits.new_empty(count, 4 * h, 4 * w)
        by_row = dest.view(count, h, 2, 2, 4 * w)  # (M, i, a, a', column)
        vectors = hyper[pairs]  # (M, c2)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            x = step1(prompt, r0 * w, r1 * w)  # rows (i, j), cols (a, b, c1)
            x = x.view(r1 - r0, w, 2, 2 * c1).transpose(1, 2).reshape(-1, c1)  # rows (i, a, j, b)
            x = _activate_(act1, F.layer_norm(x, (c1,), norm_w, norm_b, norm.eps))
            for a in (0, 1):
                y = _activate_(act2, torch.addmm(b2_by_row[a], x, w2_by_row[a]))  # cols (b', c2)
                band = vectors @ y.view(-1, c2).T  # (M, i * a * j * b * b') = whole rows 4i + 2a + a'
                by_row[:, r0:r1, :, a] = band.view(count, r1 - r0, 2, 4 * w)
        if not contiguous:
            logits[pairs] = dest
    return logits


def upscale_logits_like_sam(
    low_res: Tensor, model_size: int, input_size: tuple[int, int], out_size: tuple[int, int]
) -> Tensor:
    """Exactly :meth:`Sam.postprocess_masks` for (K, h, w) logits: to model size, crop, to ``out_size``."""
    x = F.interpolate(low_res[:, None], (model_size, model_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, out_size, mode="bilinear", align_corners=False)[:, 0]


# ---------------------------------------------------------------------- exact post-processing resize
def _linear_taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PyTorch's bilinear taps along one axis (``align_corners=False``, no antialias), computed with its
    float32 arithmetic: source indices ``i0``, ``i1`` (n_out,) int64 and weights ``w0``, ``w1`` (n_out,)."""
    dst = torch.arange(n_out, dtype=torch.float32)
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = _fma(scale, dst + 0.5, torch.tensor(-0.5)).clamp(min=0.0)  # contracted like the kernel
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = (src - i0.float()).clamp(0.0, 1.0)
    return i0, i1, 1.0 - w1, w1


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 ``a * b + c`` with one rounding, as PyTorch's compiled CPU kernel contracts it (the
    product is exact in float64; the float64 sum rounds once more only in ties, ~2^-29 of cases)."""
    return (a.double() * b.double() + c.double()).float()


@dataclass(frozen=True)
class SamResize:
    """:func:`upscale_logits_like_sam` for one geometry as two matrix products, made exact at thresholds.

    ``Sam.postprocess_masks`` resizes (K, h, w) low-res logits bilinearly to the model size, crops the
    valid ``input_size`` part and resizes that to ``out_size``. Both resizes are linear and separable, so
    the result is ``A_h @ x @ A_w^T`` with composite (out, h) / (out, w) weight matrices (built in float64).
    That differs from PyTorch's two-pass kernel only by float32 rounding (< ~1e-6 of the largest input
    magnitude); values within ``margin`` of a threshold are recomputed with the kernel's own arithmetic
    (:meth:`exact_at`), so every comparison ``logits > t`` for the given thresholds gives the very bits of
    the official path.
    """

    rows: Tensor  # (out_h, h) float32 composite weights
    cols_t: Tensor  # (w, out_w) float32 composite weights, transposed
    # per axis: (first-stage taps i0, i1, w0, w1 over the model size, second-stage taps over the crop)
    taps_h: tuple[tuple[Tensor, ...], tuple[Tensor, ...]]
    taps_w: tuple[tuple[Tensor, ...], tuple[Tensor, ...]]
    # the same matrices as bands (None where a band would not be narrower than the matrix)
    band_h: _Band | None = None
    band_w: _Band | None = None

    @classmethod
    def build(
        cls, low_res: tuple[int, int], model_size: int, input_size: tuple[int, int], out_size: tuple[int, int]
    ) -> SamResize:
        mats, taps = [], []
        for n_low, n_in, n_out in zip(low_res, input_size, out_size, strict=True):
            first, second = _linear_taps(n_low, model_size), _linear_taps(n_in, n_out)
            taps.append((first, second))
            m1 = _tap_matrix(first, n_low)[:n_in]  # (n_in, n_low)
            mats.append(_tap_matrix(second, n_in) @ m1)  # (n_out, n_low) float64
        rows, cols = mats
        return cls(
            rows.float(), cols.T.float().contiguous(), taps[0], taps[1], _Band.of(rows), _Band.of(cols)
        )

    def approx(self, low_res: Tensor, transposed: bool = False) -> Tensor:
        """(K, h, w) -> (K, out_h, out_w) float32 logits, within rounding of the official ones;
        ``transposed``: (K, out_w, out_h), each mask column-major as COCO RLEs want it (rows resized
        first, then the columns of the transposed result: 13.6 ms per 16 masks of 512² on one thread,
        against 16.5 for the row-major result and 8.5 more for transposing its mask)."""
        if self.band_h is None or self.band_w is None:
            if transposed:
                return torch.matmul(self.cols_t.T, (self.rows @ low_res).transpose(1, 2))
            return torch.matmul(self.rows, low_res @ self.cols_t)
        if transposed:
            return self.band_w.along_rows(self.band_h.along_rows(low_res).transpose(1, 2))
        return self.band_h.along_rows(self.band_w.along_cols(low_res))

    def exact_at(self, low_res: Tensor, k: Tensor, y: Tensor, x: Tensor) -> Tensor:
        """The official logits at pixels ``(y, x)`` of masks ``k`` (all (P,) int64), bit for bit."""
        (r0, r1, a0, a1), (s0, s1, e0, e1) = self.taps_h
        (c0, c1, b0, b1), (t0, t1, f0, f1) = self.taps_w

        def first(row: Tensor, col: Tensor) -> Tensor:  # model-size pixel (row, col), first resize
            def along_w(r: Tensor) -> Tensor:
                return _fma(low_res[k, r, c0[col]], b0[col], low_res[k, r, c1[col]] * b1[col])

            return _fma(along_w(r0[row]), a0[row], along_w(r1[row]) * a1[row])

        def along_w2(row: Tensor) -> Tensor:
            return _fma(first(row, t0[x]), f0[x], first(row, t1[x]) * f1[x])

        return _fma(along_w2(s0[y]), e0[y], along_w2(s1[y]) * e1[y])

    def logits(
        self, low_res: Tensor, threshold: float, offset: float, margin: float = 1e-5, transposed: bool = False
    ) -> Tensor:
        """:meth:`approx`, with every value within ``margin * max|low_res|`` of ``threshold`` or
        ``threshold +- offset`` (the mask and stability cut-offs) recomputed exactly; ``transposed`` as
        in :meth:`approx`."""
        out = self.approx(low_res, transposed)
        if not len(out):
            return out
        # one mask at a time with a scalar tolerance (a broadcast one made each comparison ~1.7x slower),
        # through one reused buffer; the same pixels as comparing the whole batch at once
        tols = (low_res.flatten(1).abs().amax(1) * margin).tolist()
        d = torch.empty_like(out[0])
        found = []
        for i, tol in enumerate(tols):
            torch.sub(out[i], threshold, out=d).abs_()
            near = d <= tol
            if offset != 0.0:
                near |= d.sub_(abs(offset)).abs_() <= tol
            a, b = _nonzero_2d(near)
            if len(a):
                found.append((torch.full_like(a, i), a, b))
        if found:
            k, a, b = (torch.cat(parts) for parts in zip(*found, strict=True))
            out[k, a, b] = self.exact_at(low_res, k, b, a) if transposed else self.exact_at(low_res, k, a, b)
        return out


def _nonzero_2d(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.nonzero(mask, as_tuple=True)`` of a (H, W) bool tensor, in the same order: rows with a
    true pixel first (byte-wise row maxima), then the pixels of those rows only. Near-threshold pixels
    are few, and ``nonzero`` over every pixel was measured at 9 ms per 16 masks of 512² (one thread)."""
    rows = torch.nonzero(mask.view(torch.uint8).amax(1), as_tuple=True)[0]
    if not len(rows):
        return rows, rows
    r, x = torch.nonzero(mask[rows], as_tuple=True)
    return rows[r], x


@dataclass(frozen=True)
class _Band:
    """A resize matrix (n_out, n_in) in blocks of ``block`` output positions, each reading one window of
    ``width`` consecutive inputs: a bilinear composite touches a few inputs per output, so the two
    batched products below do ~n_in/width times fewer FLOPs than the dense ones (ViT-B on a 512² crop:
    34 of 256 inputs per 64 outputs; 16 masks in 32-40 instead of 60 ms on one thread). Values differ from
    the dense product only by float32 rounding."""

    index: Tensor  # (blocks * width,) int64: the window of each block, concatenated
    weight: Tensor  # (blocks, width, block) float32: weight[b, j, o] = M[b * block + o, window_b[j]]
    n_out: int

    @classmethod
    def of(cls, m: Tensor, block: int = 64) -> _Band | None:
        """The band of ``m`` (float64), or None when a window would cover more than half the inputs."""
        n_out, n_in = m.shape
        blocks = -(-n_out // block)
        spans = []
        for b in range(blocks):
            used = torch.nonzero(m[b * block : (b + 1) * block].abs().sum(0)).flatten()
            spans.append((int(used.min()), int(used.max()) + 1) if len(used) else (0, 1))
        width = max(hi - lo for lo, hi in spans)
        if 2 * width > n_in:
            return None
        index = torch.empty(blocks, width, dtype=torch.long)
        weight = torch.zeros(blocks, width, block, dtype=torch.float64)
        for b, (lo, _hi) in enumerate(spans):
            lo = min(lo, n_in - width)
            index[b] = torch.arange(lo, lo + width)
            part = m[b * block : (b + 1) * block, lo : lo + width]
            weight[b, :, : len(part)] = part.T
        return cls(index.flatten(), weight.float(), n_out)

    def along_cols(self, x: Tensor) -> Tensor:
        """``x @ M^T`` for x (K, h, n_in) -> (K, h, n_out)."""
        k, h, _ = x.shape
        blocks, width, block = self.weight.shape
        windows = x[:, :, self.index].view(k * h, blocks, width).transpose(0, 1)  # (blocks, K*h, width)
        out = torch.bmm(windows, self.weight).transpose(0, 1).reshape(k, h, blocks * block)
        return out if blocks * block == self.n_out else out[:, :, : self.n_out].contiguous()

    def along_rows(self, x: Tensor) -> Tensor:
        """``M @ x`` for x (K, n_in, c) -> (K, n_out, c)."""
        k, _, c = x.shape
        blocks, width, block = self.weight.shape
        windows = x[:, self.index, :].view(k, blocks, width, c)
        out = torch.matmul(self.weight.transpose(1, 2), windows).reshape(k, blocks * block, c)
        return out if blocks * block == self.n_out else out[:, : self.n_out].contiguous()


def _tap_matrix(taps: tuple[Tensor, ...], n_in: int) -> Tensor:
    """(n_out, n_in) float64 matrix of a bilinear resize along one axis."""
    i0, i1, w0, w1 = taps
    m = torch.zeros(len(i0), n_in, dtype=torch.float64)
    rows = torch.arange(len(i0))
    m.index_put_((rows, i0), w0.double(), accumulate=True)
    m.index_put_((rows, i1), w1.double(), accumulate=True)
    return m
