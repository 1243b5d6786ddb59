"""SAM's two-way transformer with the image side kept in factored form (fast mode, float32).

In SAM's mask decoder the image keys change per prompt only through the image-to-token attentions:
layer ``l`` adds ``U_l = P_l V_l``, where ``P_l`` (N x H*T) are the softmax weights of the N image cells
over the H*T head-tokens and ``V_l`` (H*T x C) the tokens' values after the output projection, and then
takes a layer norm. So every prompt's keys are the shared image embedding ``X0``, scaled per row, plus
a rank <= H*T update per layer, plus per-row constants:

    X1 = r1 (X0 + P0 V0 - mu1) diag(g_a) + b_a
    X2 = r2 (X1 + P1 V1 - mu2) diag(g_b) + b_b

(``mu``, ``r``: each row's mean and inverse standard deviation). Every product of these keys with a
weight matrix ``W`` (the later layers' key, value and query projections, the first upscaling step)
is then ``X0 W'``, computed once per image, plus ``P (V W')`` per prompt, and a row's mean and
variance follow from the row sums and Gram terms of the same factors. Per prompt the image side costs
products of N x (H*T) x (H*T) or T x N x (H*T) instead of N x (H*T) x C, and no N x C tensor is
built for the transformer (:func:`decode_tokens_lowrank`, about half the multiply-adds of
:func:`alps.sam.decoder.decode_tokens`); the final keys are formed only for the prompts whose masks
are upscaled, and then directly as the first upscaling step's product (:func:`first_upscaling_step`).

It evaluates the same function as the decoder; only float32 rounding differs (the variances come from
the Gram terms, ``E[x^2] - mu^2``, which loses little here: SAM's encoder ends in a layer norm, so a
cell's mean is small against its spread, |mean| / std <= 0.14 for LiteMedSAM on NEON tiles), which is
why fast mode uses it and exact mode does not (in exact mode it left 754 instead of 762 of 768 masks
RLE-identical to the official ones in the equivalence test's loose case). Measured
(``benchmarks/amg_speed.py --fast-plain``, 2 threads): ViT-B's fast mode on a 512-px crop at 32x32,
29.9 -> 23.8 s with every candidate upscaled and 18.5 -> 15.9 s at the default thresholds; LiteMedSAM
with box prompts 1.26-1.29x, the same masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from segment_anything.modeling import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock
from torch import Tensor

from alps.sam.decoder import (
    DecoderOutput,
    FirstStep,
    ImageContext,
    _conv_t_as_matrix,
    _gemm_upscaling,
    _heads,
    _token_to_image_shared,
)


def _split(x: Tensor, heads: int) -> Tensor:
    """(N, heads * d) -> (heads, N, d), contiguous."""
    return x.reshape(x.shape[0], heads, -1).transpose(0, 1).contiguous()


def _out_blocks(attn: Attention) -> Tensor:
    """The output projection's weight as per-head blocks (H, d, C): ``values = vt_h @ blocks[h] + b / H``."""
    heads, d = _heads(attn)
    c = attn.out_proj.weight.shape[0]
    return attn.out_proj.weight.reshape(c, heads, d).permute(1, 2, 0).contiguous()


@dataclass
class LowRankContext:
    """Per-image tensors of :func:`decode_tokens_lowrank` (float32). Shapes: N image cells, C channels,
    H heads of d channels; ``_t`` marks a (H, d, N) layout, the others are (H, N, d)."""

    ctx: ImageContext
    decoder: MaskDecoder
    heads: int
    d: int
    # X0 (g_a) W^T of layer 1's token->image keys / values and image->token queries, and
    # X0 (g_a g_b) W^T of the final attention's keys / values
    a1k_t: Tensor
    a1v: Tensor
    a1q_t: Tensor
    afk_t: Tensor
    afv: Tensor
    q0_t: Tensor  # layer 0's image->token queries
    pe_q1_t: Tensor  # layer 1's image->token queries of the positional encoding
    # X0 times the image->token output blocks, for the variances: [X0 Wo0 | X0 (g_a^2) Wo0] (H, d, 2N)
    # and X0 (g_a) Wo1 (H, d, N)
    z0_t: Tensor
    z1_t: Tensor
    # per image row (N,): sum X0, sum X0^2, X0.g_a, X0^2.g_a^2, X0.g_a^2, X0.(g_a b_a), X0.bo0,
    # X0.(g_a^2 bo0), X0.(g_a bo1)
    rows: dict[str, Tensor]
    # the image->token output projections as per-head blocks (H, d, C) and their bias / H
    blocks0: Tensor
    bias0: Tensor
    blocks1: Tensor
    bias1: Tensor
    vecs0: Tensor  # (C, 4): 1, g_a, g_a^2, g_a b_a
    vecs1: Tensor  # (C, 3): 1, g_a, b_a
    # per-head maps from a layer's token values vt (d) to a projection's (H d) columns:
    # Wo_h^T diag(g) W^T (H, d, H d), and the bias row (bo / H) diag(g) W^T (H d,)
    maps: dict[str, tuple[Tensor, Tensor]]
    neg_g: dict[str, Tensor]  # -W g_a (H d,) of layer 1's projections: the column of the row mean
    const: dict[str, Tensor]  # the projections' constant parts
    final_fixed: dict[str, Tensor]  # (3, H d): -W (g_a g_b), W (b_a g_b), -W g_b of the final attention
    gab: Tensor  # g_a g_b
    gb: Tensor
    bb: Tensor
    basis_fixed: Tensor  # (3, C): -g_a g_b, b_a g_b, -g_b
    x0_gab: Tensor  # X0 diag(g_a g_b) (N, C)
    # X0 (g_a g_b) W1 of the first upscaling step (N, 4 C1), or None for another upscaling layout
    up_shared: Tensor | None

    @classmethod
    @torch.no_grad()
    def build(cls, decoder: MaskDecoder, ctx: ImageContext) -> LowRankContext:
        transformer = decoder.transformer
        l0, l1 = _two_layers(decoder)
        t2i, i2t1 = l1.cross_attn_token_to_image, l1.cross_attn_image_to_token
        final = transformer.final_attn_token_to_image
        i2t0 = l0.cross_attn_image_to_token
        heads, d = _heads(t2i)
        x0 = ctx.keys[0]  # (N, C)
        ga, ba = l0.norm4.weight, l0.norm4.bias
        gb, bb = l1.norm4.weight, l1.norm4.bias
        gab = ga * gb
        wo0, wo1 = i2t0.out_proj.weight, i2t1.out_proj.weight  # (C, H d)
        bo0, bo1 = i2t0.out_proj.bias, i2t1.out_proj.bias

        def proj(g: Tensor, w: Tensor) -> Tensor:  # (H, N, d)
            return _split((x0 * g) @ w.T, heads)

        def t_(x: Tensor) -> Tensor:
            return x.transpose(1, 2).contiguous()

        blocks0, blocks1 = _out_blocks(i2t0), _out_blocks(i2t1)

        def vmap(blocks: Tensor, bias: Tensor, g: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
            return (blocks * g) @ w.T, ((bias / heads) * g) @ w.T

        ones = torch.ones_like(ga)
        wkf, wvf = final.k_proj.weight, final.v_proj.weight
        parts = _gemm_upscaling(decoder)
        up_shared = None
        if parts is not None:
            up_shared = (x0 * gab) @ _conv_t_as_matrix(parts[0])[0]
        return cls(
            ctx=ctx,
            decoder=decoder,
            heads=heads,
            d=d,
            a1k_t=t_(proj(ga, t2i.k_proj.weight)),
            a1v=proj(ga, t2i.v_proj.weight),
            a1q_t=t_(proj(ga, i2t1.q_proj.weight)),
            afk_t=t_(proj(gab, wkf)),
            afv=proj(gab, wvf),
            q0_t=t_(ctx.layer0_q),
            pe_q1_t=t_(ctx.pe_queries[id(i2t1)]),
            z0_t=t_(torch.cat([_split(x0 @ wo0, heads), _split((x0 * ga * ga) @ wo0, heads)], dim=1)),
            z1_t=t_(_split((x0 * ga) @ wo1, heads)),
            rows={
                "sum": x0.sum(1),
                "sq": (x0 * x0).sum(1),
                "g": x0 @ ga,
                "g2sq": (x0 * x0) @ (ga * ga),
                "gg": x0 @ (ga * ga),
                "gb": x0 @ (ga * ba),
                "bo0": x0 @ bo0,
                "bo0g2": x0 @ (ga * ga * bo0),
                "bo1g": x0 @ (ga * bo1),
            },
            blocks0=blocks0,
            bias0=bo0 / heads,
            blocks1=blocks1,
            bias1=bo1 / heads,
            vecs0=torch.stack([ones, ga, ga * ga, ga * ba], 1),
            vecs1=torch.stack([ones, ga, ba], 1),
            maps={
                "k1": vmap(blocks0, bo0, ga, t2i.k_proj.weight),
                "v1": vmap(blocks0, bo0, ga, t2i.v_proj.weight),
                "q1": vmap(blocks0, bo0, ga, i2t1.q_proj.weight),
                "fk0": vmap(blocks0, bo0, gab, wkf),
                "fv0": vmap(blocks0, bo0, gab, wvf),
                "fk1": vmap(blocks1, bo1, gb, wkf),
                "fv1": vmap(blocks1, bo1, gb, wvf),
            },
            neg_g={
                "k1": -(t2i.k_proj.weight @ ga),
                "v1": -(t2i.v_proj.weight @ ga),
                "q1": -(i2t1.q_proj.weight @ ga),
            },
            const={
                "v1": (t2i.v_proj.weight @ ba + t2i.v_proj.bias).view(1, heads, 1, d),
                "q1": i2t1.q_proj.weight @ ba + i2t1.q_proj.bias,
                "fv": (wvf @ bb + final.v_proj.bias).view(1, heads, 1, d),
            },
            final_fixed={
                kind: torch.stack([-(w @ gab), w @ (ba * gb), -(w @ gb)])
                for kind, w in (("fk", wkf), ("fv", wvf))
            },
            gab=gab,
            gb=gb,
            bb=bb,
            basis_fixed=torch.stack([-gab, ba * gb, -gb]),
            x0_gab=x0 * gab,
            up_shared=up_shared,
        )


def supports_lowrank(decoder: MaskDecoder) -> bool:
    """Whether :func:`decode_tokens_lowrank` applies: SAM's two-layer two-way transformer whose
    cross attentions share one head layout, and SAM's output upscaling."""
    layers = list(decoder.transformer.layers)
    if len(layers) != 2 or not all(isinstance(layer, TwoWayAttentionBlock) for layer in layers):
        return False
    if _gemm_upscaling(decoder) is None:
        return False
    if any(layer.norm4.weight is None or layer.norm4.bias is None for layer in layers):
        return False
    attns = [
        layers[1].cross_attn_token_to_image,
        layers[0].cross_attn_image_to_token,
        layers[1].cross_attn_image_to_token,
        decoder.transformer.final_attn_token_to_image,
    ]
    return len({_heads(a) for a in attns}) == 1


def _two_layers(decoder: MaskDecoder) -> tuple[TwoWayAttentionBlock, TwoWayAttentionBlock]:
    l0, l1 = decoder.transformer.layers
    assert isinstance(l0, TwoWayAttentionBlock) and isinstance(l1, TwoWayAttentionBlock)
    return l0, l1


@dataclass
class LowRankOutput(DecoderOutput):
    """:class:`DecoderOutput` whose final keys stay factored: ``keys`` is empty, and
    ``X2 = scale * X0 diag(g_a g_b) + factors^T @ basis + b_b`` per prompt (F = 2 H T + 3 factors:
    ``[P0 r1 r2; mu1 r1 r2; r2; P1 r2; mu2 r2]``)."""

    scale: Tensor  # (B, N): r1 r2
    factors: Tensor  # (B, F, N)
    basis: Tensor  # (B, F, C)


def _values(vt: Tensor, maps: tuple[Tensor, Tensor]) -> Tensor:
    """A layer's token values (B, H, T, d) through one per-head map -> (B, H*T, H*d)."""
    m, bias = maps
    b, h, t, _ = vt.shape
    return (torch.einsum("bhtd,hdm->bhtm", vt, m) + bias).reshape(b, h * t, -1)


def _head_dot(q: Tensor, cols: Tensor) -> Tensor:
    """Each head-token's query (B, H, T, d) against per-head columns (B, F, H*d) -> (B, H*T, F)."""
    b, h, t, d = q.shape
    return torch.einsum("bhte,bfhe->bhtf", q, cols.view(b, cols.shape[1], h, d)).reshape(b, h * t, -1)


def _vec_dot(q: Tensor, vec: Tensor) -> Tensor:
    """(B, H, T, d) against one (H*d,) vector split by heads -> (B, H*T, 1)."""
    b, h, t, d = q.shape
    return (q * vec.view(1, h, 1, d)).sum(-1).reshape(b, h * t, 1)


def _scores(
    q: Tensor, shared: Tensor, scale: Tensor, cols: Tensor, factors: Tensor, extra: Tensor | None = None
) -> Tensor:
    """Per prompt ``i``: ``scale_i * (q_i . shared) + cols_i @ factors_i (+ q_i . extra)`` -> (B, H, T, N).

    ``q`` (B, H, T, d); ``shared``, ``extra`` (H, d, N) per image; ``scale`` (B, N); ``cols`` (B, H*T, F);
    ``factors`` (B, F, N). One prompt at a time, in place: each prompt's (H, T, N) block is written
    where it lies, without the transposing copy a product batched over heads would need."""
    b, h, t, _ = q.shape
    n = shared.shape[-1]
    out = q.new_empty(b, h, t, n)
    for i in range(b):
        o = torch.bmm(q[i], shared, out=out[i])
        o.mul_(scale[i])
        o.view(h * t, n).addmm_(cols[i], factors[i])
        if extra is not None:
            o.baddbmm_(q[i], extra)
    return out


def _mixed(probs: Tensor, scale: Tensor, shared: Tensor, factors: Tensor, cols: Tensor) -> Tensor:
    """Attention-weighted values of factored keys, per prompt ``i`` and head:
    ``(probs_i * scale_i) . shared + (probs_i @ factors_i^T) . cols_i`` -> (B, H, T, d).

    ``probs`` (B, H, T, N) softmax rows; ``shared`` (H, N, d); ``factors`` (B, F, N); ``cols`` (B, F, H*d)."""
    b, h, t, n = probs.shape
    d = shared.shape[-1]
    out = probs.new_empty(b, h, t, d)
    for i in range(b):
        torch.bmm(probs[i] * scale[i], shared, out=out[i])
        weights = probs[i].view(h * t, n) @ factors[i].T  # (H*T, F)
        out[i] += torch.einsum("htf,fhe->hte", weights.view(h, t, -1), cols[i].view(-1, h, d))
    return out


@torch.no_grad()
def decode_tokens_lowrank(decoder: MaskDecoder, lr: LowRankContext, sparse: Tensor) -> LowRankOutput:
    """:func:`alps.sam.decoder.decode_tokens` with the image side factored (module docstring)."""
    ctx = lr.ctx
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    t = tokens.shape[1]
    heads, d = lr.heads, lr.d
    ht = heads * t
    scale = 1.0 / math.sqrt(d)
    l0, l1 = _two_layers(decoder)
    rows = lr.rows
    c = ctx.keys.shape[-1]
    n = ctx.keys.shape[1]

    def split_q(x: Tensor) -> Tensor:  # (B, T, H d) -> (B, H, T, d), contiguous
        return x.reshape(b, t, heads, d).transpose(1, 2).contiguous()

    # ---- layer 0: token side as the decoder; the image side only through its softmax P0
    queries = tokens
    if l0.skip_first_layer_pe:
        queries = l0.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + tokens
        queries = queries + l0.self_attn(q=q, k=q, v=queries)
    queries = l0.norm1(queries)
    t2i0 = l0.cross_attn_token_to_image
    attn_out = _token_to_image_shared(t2i0, queries + tokens, ctx.layer0_k, ctx.layer0_v)
    queries = l0.norm2(queries + attn_out)
    queries = l0.norm3(queries + l0.mlp(queries))
    i2t0 = l0.cross_attn_image_to_token
    kt = split_q(i2t0.k_proj(queries + tokens)) * scale
    vt0 = split_q(i2t0.v_proj(queries))  # (B, H, T, d)
    # the factors of the final keys, filled as they are computed (module docstring; LowRankOutput)
    factors = tokens.new_empty(b, 2 * ht + 3, n)
    big_p0, big_p1 = factors[:, :ht], factors[:, ht + 2 : 2 * ht + 2]
    x_u0 = tokens.new_empty(b, 2, n)  # per row: X0 . U0 and X0 (g_a^2) . U0 without the bias terms
    for i in range(b):
        p0 = torch.softmax(torch.bmm(kt[i], lr.q0_t), dim=1, out=big_p0[i].view(heads, t, n))
        x_u0[i] = torch.bmm(vt0[i], lr.z0_t).view(heads, t, 2, n).mul_(p0.unsqueeze(2)).sum((0, 1))
    values0 = (torch.einsum("bhtd,hdc->bhtc", vt0, lr.blocks0) + lr.bias0).reshape(b, ht, c)
    ga, ba = l0.norm4.weight, l0.norm4.bias
    # P0^T (V0 v) for v = 1, g_a, g_a^2, g_a b_a: (B, 4, N)
    dots0 = torch.bmm((values0 @ lr.vecs0).transpose(1, 2), big_p0)
    # |U0|^2 and |U0 g_a|^2 per row: P0^T G P0 for the Gram matrices of V0 and V0 diag(g_a^2)
    grams = torch.cat([values0 @ values0.transpose(1, 2), (values0 * (ga * ga)) @ values0.transpose(1, 2)], 1)
    gp = torch.bmm(grams, big_p0).view(b, 2, ht, n).mul_(big_p0.unsqueeze(1)).sum(2)  # (B, 2, N)

    # mean and inverse std of X0 + P0 V0 per row
    mu1 = (rows["sum"] + dots0[:, 0]) / c
    r1 = torch.rsqrt((rows["sq"] + 2 * (rows["bo0"] + x_u0[:, 0]) + gp[:, 0]) / c - mu1 * mu1 + l0.norm4.eps)
    # the factors of layer 1's keys X1 = r1 (X0 g_a + [P0; mu1]^T [V0 g_a; -g_a]) + b_a
    factors[:, ht] = mu1
    factors[:, ht + 1] = 1.0
    p0r = factors[:, : ht + 1].mul_(r1.unsqueeze(1))  # (B, HT + 1, N)

    # ---- layer 1, token -> image (+ constants per row, which cancel in the softmax)
    q = queries + tokens
    queries = l1.norm1(queries + l1.self_attn(q=q, k=q, v=queries))
    t2i = l1.cross_attn_token_to_image
    qh = split_q(t2i.q_proj(queries + tokens)) * scale
    k_cols = torch.cat([_values(vt0, lr.maps["k1"]), lr.neg_g["k1"].expand(b, 1, -1)], dim=1)
    scores = _scores(qh, lr.a1k_t, r1, _head_dot(qh, k_cols), p0r, ctx.pe_keys[id(t2i)])
    probs = torch.softmax(scores, dim=-1)
    v_cols = torch.cat([_values(vt0, lr.maps["v1"]), lr.neg_g["v1"].expand(b, 1, -1)], dim=1)
    mixed = _mixed(probs, r1, lr.a1v, p0r, v_cols)
    mixed += lr.const["v1"]  # softmax rows sum to one
    attn_out = t2i.out_proj(mixed.transpose(1, 2).reshape(b, t, heads * d))
    queries = l1.norm2(queries + attn_out)
    queries = l1.norm3(queries + l1.mlp(queries))

    # ---- layer 1, image -> token: P1 over the tokens of each head
    i2t1 = l1.cross_attn_image_to_token
    kt = split_q(i2t1.k_proj(queries + tokens)) * scale
    q_cols = torch.cat([_values(vt0, lr.maps["q1"]), lr.neg_g["q1"].expand(b, 1, -1)], dim=1)
    cols = torch.cat([_head_dot(kt, q_cols), _vec_dot(kt, lr.const["q1"])], 2)  # its constant does not cancel
    s1 = _scores(kt, lr.a1q_t, r1, cols, factors[:, : ht + 2], lr.pe_q1_t)
    for i in range(b):
        torch.softmax(s1[i], dim=1, out=big_p1[i].view(heads, t, n))
    p1 = big_p1.view(b, heads, t, n)
    vt1 = split_q(i2t1.v_proj(queries))
    values1 = (torch.einsum("bhtd,hdc->bhtc", vt1, lr.blocks1) + lr.bias1).reshape(b, ht, c)
    x_g_u1 = tokens.new_empty(b, n)  # (X0 g_a) . U1 per row, without the bias term
    for i in range(b):
        x_g_u1[i] = torch.bmm(vt1[i], lr.z1_t).mul_(p1[i]).sum((0, 1))
    # P1^T (V1 v) for v = 1, g_a, b_a
    dots1 = torch.bmm((values1 @ lr.vecs1).transpose(1, 2), big_p1)
    # 2 r1 (U0 g_a) . U1 + |U1|^2 per row in one product:
    # [2 V1 g_a V0^T | 0 | 0 | V1 V1^T] [r1 P0; r1 mu1; 1; P1]
    mixed_gram = torch.cat(
        [
            2 * (values1 * ga) @ values0.transpose(1, 2),
            values1.new_zeros(b, ht, 2),
            values1 @ values1.transpose(1, 2),
        ],
        2,
    )
    u_terms = torch.bmm(mixed_gram, factors[:, : 2 * ht + 2]).mul_(big_p1).sum(1)

    # mean and inverse std of X1 + P1 V1 per row (Y = X0 + P0 V0, X1 = r1 (Y - mu1) g_a + b_a)
    y_g = rows["g"] + dots0[:, 1]
    y_gg = rows["gg"] + dots0[:, 2]
    y_sq = rows["g2sq"] + 2 * (rows["bo0g2"] + x_u0[:, 1]) + gp[:, 1]  # |Y g_a|^2
    centred_sq = y_sq - 2 * mu1 * y_gg + mu1 * mu1 * (ga * ga).sum()  # |(Y - mu1) g_a|^2
    # ((Y - mu1) g_a) . (b_a + U1), less the (U0 g_a) . U1 term (in u_terms)
    cross = (rows["gb"] + dots0[:, 3]) - mu1 * (ga * ba).sum() + rows["bo1g"] + x_g_u1 - mu1 * dots1[:, 1]
    s_1 = r1 * (y_g - mu1 * ga.sum()) + ba.sum() + dots1[:, 0]
    s_2 = r1 * r1 * centred_sq + (ba * ba).sum() + 2 * dots1[:, 2] + 2 * r1 * cross + u_terms
    mu2 = s_1 / c
    r2 = torch.rsqrt(s_2 / c - mu2 * mu2 + l1.norm4.eps)
    # factors of X2 = r1 r2 X0 (g_a g_b) + F^T B + b_b: F = [P0 r1 r2; mu1 r1 r2; r2; P1 r2; mu2 r2]
    factors[:, 2 * ht + 2] = mu2
    factors.mul_(r2.unsqueeze(1))
    fixed = lr.basis_fixed
    basis = torch.cat(
        [values0 * lr.gab, fixed[:2].expand(b, 2, -1), values1 * lr.gb, fixed[2:].expand(b, 1, -1)], dim=1
    )
    rr = r1 * r2

    # ---- final token -> image attention
    final = decoder.transformer.final_attn_token_to_image
    qh = split_q(final.q_proj(queries + tokens)) * scale

    def final_cols(kind: str) -> Tensor:
        fixed = lr.final_fixed[kind]  # the columns of the rows mu1 r1 r2, r2 and mu2 r2 of the factors
        return torch.cat(
            [
                _values(vt0, lr.maps[kind + "0"]),
                fixed[:2].expand(b, 2, -1),
                _values(vt1, lr.maps[kind + "1"]),
                fixed[2:].expand(b, 1, -1),
            ],
            dim=1,
        )

    scores = _scores(qh, lr.afk_t, rr, _head_dot(qh, final_cols("fk")), factors, ctx.pe_keys[id(final)])
    probs = torch.softmax(scores, dim=-1)
    mixed = _mixed(probs, rr, lr.afv, factors, final_cols("fv"))
    mixed += lr.const["fv"]
    attn_out = final.out_proj(mixed.transpose(1, 2).reshape(b, t, heads * d))
    queries = decoder.transformer.norm_final_attn(queries + attn_out)
    iou_pred = decoder.iou_prediction_head(queries[:, 0, :])
    return LowRankOutput(
        iou_pred,
        queries[:, 1 : 1 + decoder.num_mask_tokens, :],
        ctx.keys.new_empty(b, 0, c),
        rr,
        factors,
        basis,
    )


def final_keys(lr: LowRankContext, out: LowRankOutput, prompt: int) -> Tensor:
    """The final image keys (N, C) of one prompt, as the decoder's ``keys``."""
    keys = torch.addmm(lr.bb, out.factors[prompt].T, out.basis[prompt])
    return keys.addcmul_(lr.x0_gab, out.scale[prompt].unsqueeze(1))


def first_upscaling_step(lr: LowRankContext, out: LowRankOutput) -> FirstStep:
    """The first upscaling step of :func:`alps.sam.decoder.upscale_masks_gemm` from the factors:
    ``final_keys @ W1 + b1`` = ``scale * (X0 diag(g_a g_b) W1)`` (once per image) ``+ F^T (B W1)`` per
    prompt, a (cells x F) @ (F x 4 C1) product instead of (cells x C) @ (C x 4 C1) after forming the keys."""
    parts = _gemm_upscaling(lr.decoder)
    assert parts is not None and lr.up_shared is not None
    w1, b1 = _conv_t_as_matrix(parts[0])
    const = lr.bb @ w1 + b1
    shared = lr.up_shared
    cache: dict[int, Tensor] = {}

    def step(prompt: int, cell0: int, cell1: int) -> Tensor:
        if prompt not in cache:
            cache.clear()  # the upscaling takes the prompts one after another
            cache[prompt] = out.basis[prompt] @ w1
        x = torch.addmm(const, out.factors[prompt, :, cell0:cell1].T, cache[prompt])
        return x.addcmul_(shared[cell0:cell1], out.scale[prompt, cell0:cell1].unsqueeze(1))

    return step
