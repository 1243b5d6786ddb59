"""TinyViT image encoder used by MobileSAM (``vit_t``) and LiteMedSAM (``litemedsam``).

The encoder maps a normalised, padded image ``B x 3 x S x S`` (``S = img_size``) to the SAM image
embedding ``B x 256 x 64 x 64``, like segment-anything's ``ImageEncoderViT``, so it drops into
:class:`segment_anything.modeling.Sam` unchanged. It is built from a :class:`TinyViTConfig`:

* a patch embedding of two conv+BN layers (``patch_kernel``/``patch_stride`` per conv);
* stage 0: MBConv blocks (inverted residual, depthwise 3x3);
* stages 1..n-1: windowed self-attention blocks with a learned bias per head for every
  (|dy|, |dx|) offset inside a window, followed by a depthwise "local" conv and an MLP;
* a patch-merging conv between stages that halves the grid, except into the last stage, which
  keeps it (so the output grid is ``S / patch_stride**2 / 4``);
* SAM's neck: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d to ``out_chans`` channels.

Module and parameter names follow the published checkpoints so their state dicts load with
``strict=True``. Stochastic depth is not implemented: both published models use a rate of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


@dataclass(frozen=True)
class TinyViTConfig:
    """Hyper-parameters of a TinyViT SAM encoder; the defaults are the 5M variant used by MobileSAM.

    Attributes:
        img_size: side of the square encoder input in pixels (1024 for MobileSAM, 256 for LiteMedSAM).
        patch_kernel, patch_stride: kernel size and stride of each of the two patch-embedding convs
            (3, 2 for MobileSAM: the grid is img_size / 4; 1, 1 for LiteMedSAM: the grid is img_size).
        num_classes: > 0 adds the (unused) ImageNet classifier ``norm_head``/``head`` that the
            MobileSAM checkpoint still carries, so it loads strictly; 0 for no head.
    """

    img_size: int = 1024
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    patch_kernel: int = 3
    patch_stride: int = 2
    num_classes: int = 0
    out_chans: int = 256

    def __post_init__(self) -> None:
        n = len(self.embed_dims)
        if n < 2 or not (len(self.depths) == len(self.num_heads) == len(self.window_sizes) == n):
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (>= 2)")
        for dim, heads in zip(self.embed_dims[1:], self.num_heads[1:], strict=True):
            if dim % heads:
                raise ValueError(f"embed dim {dim} is not divisible by {heads} heads")

    @property
    def merge_strides(self) -> tuple[int, ...]:
        """Stride of the patch merging after each stage but the last: 2, except into the last stage."""
        n = len(self.embed_dims)
        return tuple(1 if i == n - 2 else 2 for i in range(n - 1))

    @property
    def embed_size(self) -> int:
        """Side of the output embedding grid (64 for both published models)."""
        size = self.img_size // self.patch_stride**2
        for stride in self.merge_strides:
            size = (size + stride - 1) // stride
        return size


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm (children ``c`` and ``bn``, as in the checkpoints)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


class PatchEmbed(nn.Module):
    """``B x in_chans x S x S`` -> ``B x dim x S/stride**2 x S/stride**2`` (two conv+BN, GELU between)."""

    def __init__(self, in_chans: int, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, dim // 2, kernel_size, stride),
            nn.GELU(),
            ConvBN(dim // 2, dim, kernel_size, stride),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.seq(x)
        return out


class MBConv(nn.Module):
    """Inverted residual block on ``B x C x H x W`` maps: expand 1x1, depthwise 3x3, project 1x1."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        # zero-initialised last BN: a fresh block starts as the identity (before the final GELU)
        self.conv3 = ConvBN(hidden, dim, 1, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """``B x dim x H x W`` -> ``B x out_dim x H/stride x W/stride`` (1x1, depthwise 3x3 strided, 1x1)."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        out: torch.Tensor = self.conv3(x)
        return out


def window_offset_index(window: int) -> torch.Tensor:
    """``N x N`` (``N = window**2``) index of the bias for each query/key pair of a window.

    Tokens are in row-major order; the pair (i, j) gets ``|dy| * window + |dx|``, one id per
    distinct absolute offset, which is the order in which the published biases are stored.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window + dx


class Attention(nn.Module):
    """Multi-head self-attention over the ``N = window**2`` tokens of one window: ``B x N x dim``.

    Each head adds a learned bias that depends only on the absolute offset between query and key.
    """

    attention_bias_idxs: torch.Tensor

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        # per head, q, k and v are consecutive slices of the qkv output (checkpoint layout)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # derived from the window size, so it is not part of the state dict
        self.register_buffer("attention_bias_idxs", window_offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # heads x N x N
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale = head_dim ** -0.5
        out = out.transpose(1, 2).reshape(b, n, c)
        result: torch.Tensor = self.proj(out)
        return result


class Mlp(nn.Module):
    """Pre-norm two-layer MLP on ``B x L x dim`` tokens."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(self.norm(x))))
        return out


class TinyViTBlock(nn.Module):
    """Windowed attention + depthwise local conv + MLP on ``B x C x H x W`` maps (any H, W).

    The map is zero-padded at the bottom/right to whole windows for the attention (the padded
    tokens take part as keys, as in the published models) and cropped back afterwards.
    """

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window
        pad_b, pad_r = (-h) % ws, (-w) % ws
        t = F.pad(x, (0, pad_r, 0, pad_b)).permute(0, 2, 3, 1)  # B x pH x pW x C
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        t = t.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        t = self.attn(t)
        t = t.reshape(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        return t[:, :h, :w].permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed_attention(x)
        x = self.local_conv(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # B x HW x C
        tokens = tokens + self.mlp(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class TinyViTStage(nn.Module):
    """A run of blocks at one resolution, then an optional patch merging to the next stage."""

    def __init__(self, blocks: list[nn.Module], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class TinyViT(nn.Module):
    """TinyViT SAM image encoder: ``B x 3 x S x S`` -> ``B x out_chans x E x E`` (E = ``embed_size``).

    The input must already be normalised and padded to ``img_size`` (``Sam.preprocess`` does both).
    """

    def __init__(self, config: TinyViTConfig | None = None) -> None:
        super().__init__()
        cfg = config or TinyViTConfig()
        self.config = cfg
        self.img_size = cfg.img_size  # read by SamPredictor / Sam.preprocess, like ImageEncoderViT
        dims = cfg.embed_dims
        self.patch_embed = PatchEmbed(cfg.in_chans, dims[0], cfg.patch_kernel, cfg.patch_stride)
        self.layers = nn.ModuleList()
        strides = cfg.merge_strides
        for i, dim in enumerate(dims):
            blocks: list[nn.Module]
            if i == 0:
                blocks = [MBConv(dim, cfg.mbconv_expand_ratio) for _ in range(cfg.depths[i])]
            else:
                heads, window = cfg.num_heads[i], cfg.window_sizes[i]
                blocks = [
                    TinyViTBlock(dim, heads, window, cfg.mlp_ratio, cfg.local_conv_size)
                    for _ in range(cfg.depths[i])
                ]
            downsample = PatchMerging(dim, dims[i + 1], strides[i]) if i < len(dims) - 1 else None
            self.layers.append(TinyViTStage(blocks, downsample))
        if cfg.num_classes > 0:
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], cfg.num_classes)
        self.apply(_init_weights)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    @property
    def embed_size(self) -> int:
        return self.config.embed_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``B x in_chans x img_size x img_size`` float -> ``B x out_chans x E x E``."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.neck(x)
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
