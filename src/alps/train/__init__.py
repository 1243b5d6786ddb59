"""Pre-training, fine-tuning and evaluation of segmentation networks on (pseudo-)labelled datasets.

Front doors: :func:`pretrain`, :func:`finetune`, :func:`evaluate` (``alps.train.run``), configured by
:class:`TrainConfig`. Lightning and smp load lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainConfig": "alps.train.config",
    "RunResult": "alps.train.run",
    "pretrain": "alps.train.run",
    "finetune": "alps.train.run",
    "evaluate": "alps.train.run",
    "resolve_checkpoint": "alps.train.run",
    "SegmentationScores": "alps.train.metrics",
    "confusion_matrix": "alps.train.metrics",
    "scores_from_confusion": "alps.train.metrics",
    "load_segmentation_data": "alps.train.data",
    "build_model": "alps.train.models",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alps.train' has no attribute {name!r}")
    return getattr(import_module(module), name)
