"""Sliding-window inference for images larger than (or different from) the training crop."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(n)})


@torch.no_grad()
def sliding_window_logits(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    window: int,
    stride: int | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Average class probabilities of overlapping ``window × window`` tiles.

    Images smaller than the window are zero-padded up to it (so fixed-size encoders always see their
    size); padding is cropped off the result.

    Args:
        model: ``(N, 3, window, window)`` → ``(N, K, window, window)`` logits.
        image: ``(B, 3, H, W)`` normalised float tensor.
        num_classes: K.
        window: tile side in pixels (the training crop size; a multiple of 32).
        stride: step between tiles; default ``window * 2 // 3`` (one third overlap).
        batch_size: tiles per forward pass.

    Returns:
        ``(B, K, H, W)`` float32 mean softmax probabilities on ``image``'s device.
    """
    stride = stride or max(1, window * 2 // 3)
    b, _, h, w = image.shape
    ph, pw = max(0, window - h), max(0, window - w)
    padded = F.pad(image, (0, pw, 0, ph)) if ph or pw else image
    hh, ww = padded.shape[-2:]
    probs = torch.zeros(b, num_classes, hh, ww, device=image.device)
    counts = torch.zeros(1, 1, hh, ww, device=image.device)
    boxes = [(y, x) for y in _starts(hh, window, stride) for x in _starts(ww, window, stride)]
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        tiles = torch.cat([padded[:, :, y : y + window, x : x + window] for y, x in chunk])
        out = model(tiles).float().softmax(dim=1)
        for j, (y, x) in enumerate(chunk):
            probs[:, :, y : y + window, x : x + window] += out[j * b : (j + 1) * b]
            counts[:, :, y : y + window, x : x + window] += 1
    return (probs / counts)[:, :, :h, :w]


@torch.no_grad()
def predict(
    model: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    window: int,
    stride: int | None = None,
    batch_size: int = 4,
) -> torch.Tensor:
    """Class index per pixel, ``(B, H, W)`` int64, by :func:`sliding_window_logits`."""
    return sliding_window_logits(model, image, num_classes, window, stride, batch_size).argmax(dim=1)
