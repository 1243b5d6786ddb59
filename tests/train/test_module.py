"""The training loss: cross-entropy over labelled pixels, optionally plus soft Dice."""

from __future__ import annotations

import math

import pytest
import torch

from alps.train.module import SegmentationModule


def _module(loss: str) -> SegmentationModule:
    return SegmentationModule("unet", "resnet18", 2, 64, [0.5] * 3, [0.25] * 3, loss=loss)


def test_cross_entropy_ignores_unlabelled_pixels() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))  # pixel 0 only
    assert _module("ce").loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_dice_term_rewards_finding_a_small_structure() -> None:
    """A 4-pixel 'lesion' among 256 pixels: missing it costs little cross-entropy, a lot of Dice."""
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 7:9, 7:9] = 1
    target[0, 0, :] = 255  # unlabelled row, ignored by both terms
    miss = torch.zeros(1, 2, 16, 16)
    miss[:, 0] = 3.0  # confident background everywhere
    hit = miss.clone()
    hit[0, :, 7:9, 7:9] = torch.tensor([0.0, 3.0])[:, None, None]
    ce, both = _module("ce"), _module("ce+dice")
    ce_gap = ce.loss(miss, target) - ce.loss(hit, target)
    dice_gap = both.loss(miss, target) - both.loss(hit, target)
    assert ce_gap > 0
    assert dice_gap - ce_gap > 0.1  # soft Dice of the lesion class: ~0.98 when missed, ~0.6 when found
    assert torch.isfinite(both.loss(miss, target))


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="ce\\+dice"):
        _module("focal")
