"""Faster forward passes for segment-anything's ViT image encoder, with the same weights and result.

The official attention materialises the full attention matrix, adds the decomposed relative
position terms in a second pass (two fresh copies of the matrix) and soft-maxes into a third.

:func:`vit_forward` (fast mode): the relative-position bias is built once per head in a reused
buffer and handed to PyTorch's fused ``scaled_dot_product_attention`` as an additive mask, one head
at a time for the 4096-token global blocks (so the bias fits in cache-sized memory) and for all
windows at once in windowed blocks. The arithmetic is the same; only floating-point rounding differs.

:func:`vit_forward_exact` (exact mode): the official operations in the official order, bit for bit,
but the bias added and the softmax taken in place, and on CPU head by head in one reused buffer
(ViT-B at 1024 px on 2 cores: 22.4 -> 15.3 s, ``benchmarks/encoder_speed.py``; ``torch.equal`` to the
module's forward, checked by the tests and the benchmark with PyTorch's x86 CPU kernels). On other
devices the heads stay batched (the same kernels as the official code), which still saves two
attention-sized copies per block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from torch import Tensor


def _relative_bias(attn: Attention, q: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Decomposed relative-position terms ``(B*heads, H, W, H)`` and ``(B*heads, H, W, W)``."""
    h, w = size
    r_q = q.reshape(-1, h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, attn.rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, attn.rel_pos_w))
    return rel_h, rel_w


def attention_forward(attn: Attention, x: Tensor) -> Tensor:
    """Same as ``Attention.forward``: ``x`` (B, H, W, C) -> (B, H, W, C)."""
    b, h, w, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).contiguous()
    q, k, v = qkv.unbind(0)  # (B, heads, N, d), each head contiguous for the fused kernel
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        rel_h, rel_w = _relative_bias(attn, q, (h, w))
        rel_h = rel_h.reshape(b, heads, h, w, h, 1)
        rel_w = rel_w.reshape(b, heads, h, w, 1, w)
        if b == 1:  # one (large) image: head by head, bias buffer reused
            out = torch.empty_like(q)
            bias = torch.empty(h, w, h, w, dtype=q.dtype, device=q.device)
            for i in range(heads):
                torch.add(rel_h[0, i], rel_w[0, i], out=bias)
                # 4-D operands: PyTorch's fused CPU kernel takes them; 2-D ones fall back to the
                # unfused path (~3x slower at 4096 tokens)
                out[:, i : i + 1] = F.scaled_dot_product_attention(
                    q[:, i : i + 1],
                    k[:, i : i + 1],
                    v[:, i : i + 1],
                    attn_mask=bias.view(1, 1, h * w, h * w),
                    scale=attn.scale,
                )
        else:  # many small windows: all at once
            bias = (rel_h + rel_w).reshape(b, heads, h * w, h * w)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
    out = out.transpose(1, 2).reshape(b, h, w, -1)
    return attn.proj(out)


Attend = Callable[[Attention, Tensor], Tensor]


def block_forward(block: Block, x: Tensor, attend: Attend = attention_forward) -> Tensor:
    """Same as ``Block.forward``, with ``attend`` for the block's attention."""
    shortcut = x
    x = block.norm1(x)
    if block.window_size > 0:
        h, w = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, block.window_size)
        x = attend(block.attn, x)
        x = window_unpartition(x, block.window_size, pad_hw, (h, w))
    else:
        x = attend(block.attn, x)
    x = shortcut + x
    return x + block.mlp(block.norm2(x))


@torch.no_grad()
def vit_forward(encoder: ImageEncoderViT, x: Tensor, attend: Attend = attention_forward) -> Tensor:
    """Same as ``ImageEncoderViT.forward``: (B, 3, S, S) normalised pixels -> (B, 256, S/16, S/16)."""
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for block in encoder.blocks:
        x = block_forward(block, x, attend)
    return encoder.neck(x.permute(0, 3, 1, 2))


def encode_image(encoder: torch.nn.Module, x: Tensor, *, exact: bool = False) -> Tensor:
    """Run an image encoder, with :func:`vit_forward` (or, ``exact``, :func:`vit_forward_exact`) for
    segment-anything's ViT and the module's own forward for any other encoder."""
    if isinstance(encoder, ImageEncoderViT):
        if not exact:
            return vit_forward(encoder, x)
        if type(encoder) is ImageEncoderViT and _standard_blocks(encoder):
            return vit_forward_exact(encoder, x)
    return encoder(x)


def _standard_blocks(encoder: ImageEncoderViT) -> bool:
    """Whether every block and attention is segment-anything's own class (not a subclass that may
    change the forward), so the exact re-implementation computes what the module computes."""
    return all(type(b) is Block and type(b.attn) is Attention for b in encoder.blocks)


def attention_forward_exact(attn: Attention, x: Tensor, *, per_head: bool | None = None) -> Tensor:
    """``Attention.forward`` bit for bit: ``x`` (B, H, W, C) -> (B, H, W, C).

    The same operations on the same operands as the official code; the relative-position terms are
    added into the attention matrix in place (``(a + rel_h) + rel_w``, the official order) and the
    softmax is written over it. ``per_head`` (default: on CPU) runs the heads one by one through one
    reused (N, N) buffer: each head's product is the same GEMM the batched product runs per batch
    entry, so the bits do not change (asserted by the tests against the module's forward).
    """
    b, h, w, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * heads, h * w, -1).unbind(0)
    scaled = q * attn.scale
    rel_h = rel_w = None
    if attn.use_rel_pos:
        rel_h, rel_w = _relative_bias(attn, q, (h, w))  # (B*heads, H, W, H), (B*heads, H, W, W)
    if per_head is None:
        per_head = x.device.type == "cpu"
    if per_head:
        out = torch.empty(b * heads, h * w, v.shape[-1], dtype=v.dtype, device=v.device)
        buf = torch.empty(h * w, h * w, dtype=q.dtype, device=q.device)
        for i in range(b * heads):
            torch.matmul(scaled[i], k[i].transpose(-2, -1), out=buf)
            if rel_h is not None and rel_w is not None:
                buf.view(h, w, h, w).add_(rel_h[i][:, :, :, None]).add_(rel_w[i][:, :, None, :])
            torch.ops.aten._softmax.out(buf, -1, False, out=buf)
            torch.matmul(buf, v[i], out=out[i])
    else:
        scores = scaled @ k.transpose(-2, -1)
        if rel_h is not None and rel_w is not None:
            scores.view(-1, h, w, h, w).add_(rel_h[:, :, :, :, None]).add_(rel_w[:, :, :, None, :])
        torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        out = scores @ v
    out = out.view(b, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)


def vit_forward_exact(encoder: ImageEncoderViT, x: Tensor, *, per_head: bool | None = None) -> Tensor:
    """``ImageEncoderViT.forward`` bit for bit, faster and with less memory (see the module docstring)."""
    return vit_forward(encoder, x, functools.partial(attention_forward_exact, per_head=per_head))
