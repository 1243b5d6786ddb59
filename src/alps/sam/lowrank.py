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
from torch import Tensor, nn

from alps.sam.decoder import (
    DecoderOutput,
    FirstStep,
    ImageContext,
    _conv_t_as_matrix,
    _gemm_upscaling,
    _heads,
    _token_to_image_shared,
    split_heads,
    token_side,
)


def _split_tokens(x: Tensor, heads: int) -> Tensor:
    """Token projections (B, T, heads * d) -> (B, heads, T, d), contiguous."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2).contiguous()


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
    # the first upscaling step as a matrix W1 (C, 4 C1), its constant b_b W1 + b1, and X0 (g_a g_b) W1;
    # the last two in the upscaling's compute dtype
    up_w1: Tensor
    up_const: Tensor
    up_shared: Tensor

    @classmethod
    @torch.no_grad()
    def build(
        cls, decoder: MaskDecoder, ctx: ImageContext, upscale_dtype: torch.dtype = torch.float32
    ) -> LowRankContext:
        """The per-image tensors; ``upscale_dtype``: the dtype :func:`first_upscaling_step` computes in."""
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
            return split_heads((x0 * g) @ w.T, heads)

        def t_(x: Tensor) -> Tensor:
            return x.transpose(1, 2).contiguous()

        blocks0, blocks1 = _out_blocks(i2t0), _out_blocks(i2t1)

        def vmap(blocks: Tensor, bias: Tensor, g: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
            return (blocks * g) @ w.T, ((bias / heads) * g) @ w.T

        ones = torch.ones_like(ga)
        wkf, wvf = final.k_proj.weight, final.v_proj.weight
        parts = _gemm_upscaling(decoder)
        if parts is None:
            raise ValueError("the factored decoder needs SAM's output upscaling (see supports_lowrank)")
        w1, b1 = _conv_t_as_matrix(parts[0])
        return cls(
            ctx=ctx,
            heads=heads,
            d=d,
            a1k_t=t_(proj(ga, t2i.k_proj.weight)),
            a1v=proj(ga, t2i.v_proj.weight),
            a1q_t=t_(proj(ga, i2t1.q_proj.weight)),
            afk_t=t_(proj(gab, wkf)),
            afv=proj(gab, wvf),
            q0_t=t_(ctx.layer0_q),
            pe_q1_t=t_(ctx.pe_queries[id(i2t1)]),
            z0_t=t_(
                torch.cat([split_heads(x0 @ wo0, heads), split_heads((x0 * ga * ga) @ wo0, heads)], dim=1)
            ),
            z1_t=t_(split_heads((x0 * ga) @ wo1, heads)),
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
            up_w1=w1,
            up_const=(bb @ w1 + b1).to(upscale_dtype),
            up_shared=((x0 * gab) @ w1).to(upscale_dtype),
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


@dataclass
class _Batch:
    """The tensors of one prompt batch that :func:`decode_tokens_lowrank`'s steps hand on."""

    tokens: Tensor  # (B, T, C) prompt and output tokens: the queries' positional part
    heads: int
    d: int
    # the factors of the final keys, filled and scaled step by step (see LowRankOutput):
    # rows [P0 (H T); mu1; 1; P1 (H T); mu2]
    factors: Tensor
    vt0: Tensor  # (B, H, T, d) layer 0's image->token values per head, before the output projection
    values0: Tensor  # (B, H T, C) the same after it
    vt1: Tensor | None = None  # layer 1's
    values1: Tensor | None = None

    @property
    def b(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def t(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def ht(self) -> int:
        return self.heads * self.t

    @property
    def p0(self) -> Tensor:  # (B, H T, N)
        return self.factors[:, : self.ht]

    @property
    def p1(self) -> Tensor:
        return self.factors[:, self.ht + 2 : 2 * self.ht + 2]

    def split(self, x: Tensor) -> Tensor:
        return _split_tokens(x, self.heads)


@dataclass
class _NormA:
    """Layer 0's key norm per row of X0 + P0 V0, and the terms of it that layer 1's norm reuses."""

    mu: Tensor  # (B, N) mean
    r: Tensor  # (B, N) inverse standard deviation
    dots0: Tensor  # (B, 4, N): P0^T (V0 v) for v = 1, g_a, g_a^2, g_a b_a
    gram: Tensor  # (B, 2, N): |U0|^2 and |U0 g_a|^2
    x_u0: Tensor  # (B, 2, N): X0 . U0 and X0 (g_a^2) . U0 without their bias terms


def _layer0(decoder: MaskDecoder, lr: LowRankContext, tokens: Tensor) -> tuple[Tensor, _Batch, Tensor]:
    """Layer 0: the token side as the decoder (shared image keys), the image side only through its
    softmax P0 over the head-tokens. Returns the queries, the batch and ``x_u0`` (see :class:`_NormA`)."""
    ctx, heads, d = lr.ctx, lr.heads, lr.d
    l0, _ = _two_layers(decoder)
    t2i = l0.cross_attn_token_to_image
    queries = token_side(
        l0, tokens, tokens, lambda q: _token_to_image_shared(t2i, q, ctx.layer0_k, ctx.layer0_v)
    )
    b, t, c = tokens.shape
    n = ctx.keys.shape[1]
    i2t = l0.cross_attn_image_to_token
    kt = _split_tokens(i2t.k_proj(queries + tokens), heads) / math.sqrt(d)
    vt0 = _split_tokens(i2t.v_proj(queries), heads)
    factors = tokens.new_empty(b, 2 * heads * t + 3, n)
    x_u0 = tokens.new_empty(b, 2, n)
    for i in range(b):
        p0 = torch.softmax(torch.bmm(kt[i], lr.q0_t), dim=1, out=factors[i, : heads * t].view(heads, t, n))
        x_u0[i] = torch.bmm(vt0[i], lr.z0_t).view(heads, t, 2, n).mul_(p0.unsqueeze(2)).sum((0, 1))
    values0 = (torch.einsum("bhtd,hdc->bhtc", vt0, lr.blocks0) + lr.bias0).reshape(b, heads * t, c)
    bt = _Batch(tokens, heads, d, factors, vt0, values0)
    return queries, bt, x_u0


def _norm_a(lr: LowRankContext, norm: nn.LayerNorm, bt: _Batch, x_u0: Tensor) -> _NormA:
    """Mean and inverse std of X0 + P0 V0 per row from the factors; then the factor rows of X1 =
    r1 (X0 g_a + [P0; mu1]^T [V0 g_a; -g_a]) + b_a are set: [r1 P0; r1 mu1; 1]."""
    values0, p0 = bt.values0, bt.p0
    c = values0.shape[-1]
    ga2 = norm.weight * norm.weight
    dots0 = torch.bmm((values0 @ lr.vecs0).transpose(1, 2), p0)
    grams = torch.cat([values0 @ values0.transpose(1, 2), (values0 * ga2) @ values0.transpose(1, 2)], 1)
    gram = torch.bmm(grams, p0).view(bt.b, 2, bt.ht, -1).mul_(p0.unsqueeze(1)).sum(2)
    rows = lr.rows
    mu = (rows["sum"] + dots0[:, 0]) / c
    r = torch.rsqrt((rows["sq"] + 2 * (rows["bo0"] + x_u0[:, 0]) + gram[:, 0]) / c - mu * mu + norm.eps)
    bt.factors[:, bt.ht] = mu
    bt.factors[:, bt.ht + 1] = 1.0
    bt.factors[:, : bt.ht + 1].mul_(r.unsqueeze(1))
    return _NormA(mu, r, dots0, gram, x_u0)


def _layer1(
    decoder: MaskDecoder, lr: LowRankContext, bt: _Batch, queries: Tensor, na: _NormA
) -> tuple[Tensor, Tensor]:
    """Layer 1 on the factored keys X1: the tokens attend to them, then the image's softmax P1 over the
    head-tokens fills its factor rows. Returns the queries and (X0 g_a) . U1 per row less its bias term."""
    _, l1 = _two_layers(decoder)
    b, t, heads, d = bt.b, bt.t, bt.heads, bt.d
    n = bt.factors.shape[-1]
    p0r = bt.factors[:, : bt.ht + 1]  # [r1 P0; r1 mu1]
    t2i = l1.cross_attn_token_to_image

    def attend(q: Tensor) -> Tensor:  # + constants per row, which cancel in the softmax
        qh = bt.split(t2i.q_proj(q)) / math.sqrt(d)
        k_cols = torch.cat([_values(bt.vt0, lr.maps["k1"]), lr.neg_g["k1"].expand(b, 1, -1)], dim=1)
        probs = torch.softmax(
            _scores(qh, lr.a1k_t, na.r, _head_dot(qh, k_cols), p0r, lr.ctx.pe_keys[id(t2i)]), -1
        )
        v_cols = torch.cat([_values(bt.vt0, lr.maps["v1"]), lr.neg_g["v1"].expand(b, 1, -1)], dim=1)
        mixed = _mixed(probs, na.r, lr.a1v, p0r, v_cols) + lr.const["v1"]  # softmax rows sum to one
        return t2i.out_proj(mixed.transpose(1, 2).reshape(b, t, heads * d))

    queries = token_side(l1, queries, bt.tokens, attend)
    i2t = l1.cross_attn_image_to_token
    kt = bt.split(i2t.k_proj(queries + bt.tokens)) / math.sqrt(d)
    q_cols = torch.cat([_values(bt.vt0, lr.maps["q1"]), lr.neg_g["q1"].expand(b, 1, -1)], dim=1)
    cols = torch.cat([_head_dot(kt, q_cols), _vec_dot(kt, lr.const["q1"])], 2)  # its constant does not cancel
    s1 = _scores(kt, lr.a1q_t, na.r, cols, bt.factors[:, : bt.ht + 2], lr.pe_q1_t)
    p1 = bt.p1
    for i in range(b):
        torch.softmax(s1[i], dim=1, out=p1[i].view(heads, t, n))
    bt.vt1 = bt.split(i2t.v_proj(queries))
    bt.values1 = (torch.einsum("bhtd,hdc->bhtc", bt.vt1, lr.blocks1) + lr.bias1).reshape(b, bt.ht, -1)
    x_g_u1 = queries.new_empty(b, n)
    for i in range(b):
        x_g_u1[i] = torch.bmm(bt.vt1[i], lr.z1_t).mul_(p1[i].view(heads, t, n)).sum((0, 1))
    return queries, x_g_u1


def _norm_b(lr: LowRankContext, decoder: MaskDecoder, bt: _Batch, na: _NormA, x_g_u1: Tensor) -> Tensor:
    """Mean and inverse std of X1 + P1 V1 per row (Y = X0 + P0 V0, X1 = r1 (Y - mu1) g_a + b_a) from the
    factors; then the factors of X2 are completed: [r1 r2 P0; r1 r2 mu1; r2; r2 P1; r2 mu2]. Returns r2."""
    l0, l1 = _two_layers(decoder)
    ga, ba = l0.norm4.weight, l0.norm4.bias
    values0, values1, p1 = bt.values0, bt.values1, bt.p1
    assert values1 is not None
    c = values0.shape[-1]
    rows, mu1, r1 = lr.rows, na.mu, na.r
    dots1 = torch.bmm((values1 @ lr.vecs1).transpose(1, 2), p1)  # P1^T (V1 v) for v = 1, g_a, b_a
    # 2 r1 (U0 g_a) . U1 + |U1|^2 per row in one product:
    # [2 V1 g_a V0^T | 0 | 0 | V1 V1^T] [r1 P0; r1 mu1; 1; P1]
    mixed_gram = torch.cat(
        [
            2 * (values1 * ga) @ values0.transpose(1, 2),
            values1.new_zeros(bt.b, bt.ht, 2),
            values1 @ values1.transpose(1, 2),
        ],
        2,
    )
    u_terms = torch.bmm(mixed_gram, bt.factors[:, : 2 * bt.ht + 2]).mul_(p1).sum(1)
    y_g = rows["g"] + na.dots0[:, 1]
    y_gg = rows["gg"] + na.dots0[:, 2]
    y_sq = rows["g2sq"] + 2 * (rows["bo0g2"] + na.x_u0[:, 1]) + na.gram[:, 1]  # |Y g_a|^2
    centred_sq = y_sq - 2 * mu1 * y_gg + mu1 * mu1 * (ga * ga).sum()  # |(Y - mu1) g_a|^2
    # ((Y - mu1) g_a) . (b_a + U1), less the (U0 g_a) . U1 term (in u_terms)
    cross = (rows["gb"] + na.dots0[:, 3]) - mu1 * (ga * ba).sum() + rows["bo1g"] + x_g_u1 - mu1 * dots1[:, 1]
    s_1 = r1 * (y_g - mu1 * ga.sum()) + ba.sum() + dots1[:, 0]
    s_2 = r1 * r1 * centred_sq + (ba * ba).sum() + 2 * dots1[:, 2] + 2 * r1 * cross + u_terms
    mu2 = s_1 / c
    r2 = torch.rsqrt(s_2 / c - mu2 * mu2 + l1.norm4.eps)
    bt.factors[:, 2 * bt.ht + 2] = mu2
    bt.factors.mul_(r2.unsqueeze(1))
    return r2


def _final_attention(
    decoder: MaskDecoder, lr: LowRankContext, bt: _Batch, queries: Tensor, rr: Tensor
) -> Tensor:
    """The final token -> image attention on the factored keys X2 (``rr`` = r1 r2); returns the queries."""
    vt1 = bt.vt1
    assert vt1 is not None
    b, t, heads, d = bt.b, bt.t, bt.heads, bt.d
    final = decoder.transformer.final_attn_token_to_image
    qh = bt.split(final.q_proj(queries + bt.tokens)) / math.sqrt(d)

    def cols(kind: str) -> Tensor:
        fixed = lr.final_fixed[kind]  # the columns of the rows r1 r2 mu1, r2 and r2 mu2 of the factors
        return torch.cat(
            [
                _values(bt.vt0, lr.maps[kind + "0"]),
                fixed[:2].expand(b, 2, -1),
                _values(vt1, lr.maps[kind + "1"]),
                fixed[2:].expand(b, 1, -1),
            ],
            dim=1,
        )

    scores = _scores(qh, lr.afk_t, rr, _head_dot(qh, cols("fk")), bt.factors, lr.ctx.pe_keys[id(final)])
    probs = torch.softmax(scores, dim=-1)
    mixed = _mixed(probs, rr, lr.afv, bt.factors, cols("fv")) + lr.const["fv"]
    attn_out = final.out_proj(mixed.transpose(1, 2).reshape(b, t, heads * d))
    return decoder.transformer.norm_final_attn(queries + attn_out)


@torch.no_grad()
def decode_tokens_lowrank(decoder: MaskDecoder, lr: LowRankContext, sparse: Tensor) -> LowRankOutput:
    """:func:`alps.sam.decoder.decode_tokens` with the image side factored (module docstring)."""
    b = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    l0, _ = _two_layers(decoder)
    queries, bt, x_u0 = _layer0(decoder, lr, tokens)
    na = _norm_a(lr, l0.norm4, bt, x_u0)
    queries, x_g_u1 = _layer1(decoder, lr, bt, queries, na)
    r2 = _norm_b(lr, decoder, bt, na, x_g_u1)
    rr = na.r * r2
    queries = _final_attention(decoder, lr, bt, queries, rr)
    assert bt.values1 is not None
    fixed = lr.basis_fixed
    basis = torch.cat(
        [bt.values0 * lr.gab, fixed[:2].expand(b, 2, -1), bt.values1 * lr.gb, fixed[2:].expand(b, 1, -1)],
        dim=1,
    )
    return LowRankOutput(
        decoder.iou_prediction_head(queries[:, 0, :]),
        queries[:, 1 : 1 + decoder.num_mask_tokens, :],
        tokens.new_empty(b, 0, tokens.shape[-1]),
        rr,
        bt.factors,
        basis,
    )


def final_keys(lr: LowRankContext, out: LowRankOutput, prompt: int) -> Tensor:
    """The final image keys (N, C) of one prompt, as the decoder's ``keys``."""
    keys = torch.addmm(lr.bb, out.factors[prompt].T, out.basis[prompt])
    return keys.addcmul_(lr.ctx.keys[0] * lr.gab, out.scale[prompt].unsqueeze(1))


def first_upscaling_step(lr: LowRankContext, out: LowRankOutput) -> FirstStep:
    """The first upscaling step of :func:`alps.sam.decoder.upscale_masks_gemm` from the factors:
    ``final_keys @ W1 + b1`` = ``scale * (X0 diag(g_a g_b) W1)`` (once per image) ``+ F^T (B W1)`` per
    prompt, a (cells x F) @ (F x 4 C1) product instead of (cells x C) @ (C x 4 C1) after forming the keys.
    Computes in the dtype the context was built for (``LowRankContext.build(upscale_dtype=...)``): the
    factors and ``B W1`` are rounded to it per prompt, after the float32 transformer."""
    cache: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
    dtype = lr.up_shared.dtype

    def step(prompt: int, cell0: int, cell1: int) -> Tensor:
        if prompt not in cache:
            cache.clear()  # the upscaling takes the prompts one after another
            cache[prompt] = (
                (out.basis[prompt] @ lr.up_w1).to(dtype),
                out.factors[prompt].T.to(dtype),
                out.scale[prompt].to(dtype).unsqueeze(1),
            )
        basis_w1, factors_t, scale = cache[prompt]
        x = torch.addmm(lr.up_const, factors_t[cell0:cell1], basis_w1)
        return x.addcmul_(lr.up_shared[cell0:cell1], scale[cell0:cell1])

    return step
