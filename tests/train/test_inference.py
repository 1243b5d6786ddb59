"""Sliding-window inference."""

from __future__ import annotations

import torch
from torch import nn

from alps.train.inference import _starts, predict, sliding_window_logits


def test_window_starts_cover_the_image() -> None:
    assert _starts(64, 64, 42) == [0]
    assert _starts(50, 64, 42) == [0]
    assert _starts(100, 64, 42) == [0, 36]
    assert _starts(200, 64, 32) == [0, 32, 64, 96, 128, 136]


def test_pointwise_model_gives_the_same_result_as_whole_image() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, kernel_size=1)
    for h, w in ((150, 97), (40, 50), (64, 64)):
        image = torch.randn(2, 3, h, w)
        probs = sliding_window_logits(model, image, num_classes=5, window=64, stride=40, batch_size=3)
        assert probs.shape == (2, 5, h, w)
        torch.testing.assert_close(probs, model(image).softmax(1), atol=1e-5, rtol=1e-5)
        assert predict(model, image, 5, 64).shape == (2, h, w)


def test_tiles_have_the_window_size() -> None:
    seen: list[tuple[int, int]] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[-2:]))  # type: ignore[arg-type]
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    sliding_window_logits(Spy(), torch.zeros(1, 3, 33, 130), num_classes=2, window=64)
    assert seen and all(s == (64, 64) for s in seen)
