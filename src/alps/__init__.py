"""alps-seg: SAM pseudo-labels for segmentation pre-training (ALPS, arXiv 2406.10855).

The front doors of each stage are importable from here; heavy modules load lazily so that
``import alps`` stays cheap for the CLI.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_sam": "alps.sam",
    "MaskGenerator": "alps.sam",
    "label": "alps.labeling.run",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alps' has no attribute {name!r}")
    return getattr(import_module(module), name)
