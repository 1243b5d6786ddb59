"""Reading weight files and loading them into modules whose tensor names may differ.

Used by the segmentation networks (:mod:`alps.train.models`) and by the CNN feature source
(:mod:`alps.labeling.features`); it depends on torch only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class LoadReport:
    """What a weight load did: tensors loaded, target tensors left as they were, source tensors unused."""

    loaded: int
    missing: list[str]
    unused: list[str]
    remapped_by_position: bool = False

    def __str__(self) -> str:
        how = " (re-mapped by position)" if self.remapped_by_position else ""
        return f"loaded {self.loaded} tensors{how}, {len(self.missing)} missing, {len(self.unused)} unused"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.ckpt``/``.safetensors`` file (unwrapping ``state_dict``/``model``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: no state dict inside")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` without ``prefix`` on its keys when every key has it, else ``state`` itself."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_matching(
    module: nn.Module, source: Mapping[str, torch.Tensor], allow_positional: bool = True
) -> LoadReport:
    """Copy the tensors of ``source`` into ``module``.

    Keys are matched by name (ignoring a common ``module.``/``model.``/``encoder.`` prefix). If names do
    not match for at least half the target but the source lists tensors of the target's shapes in the
    same order (a different naming of the same network, possibly with extra trailing head tensors),
    they are matched by position.
    """
    target = module.state_dict()
    src = dict(source)
    stripped = None
    while stripped is not src:
        stripped = src
        for prefix in ("module.", "model.", "encoder."):
            src = strip_prefix(src, prefix)
    by_name = {k: v for k, v in src.items() if k in target and v.shape == target[k].shape}
    if len(by_name) >= len(target) / 2 or not allow_positional:
        chosen, positional = by_name, False
    else:
        chosen, positional = _match_by_position(target, src), True
        if not chosen:
            raise ValueError(
                f"weights do not fit: {len(by_name)} of {len(target)} tensors match by name and the "
                "shapes do not line up by position"
            )
    module.load_state_dict({**target, **chosen})
    used = set(chosen) if not positional else set()
    return LoadReport(
        loaded=len(chosen),
        missing=[k for k in target if k not in chosen],
        unused=[] if positional else [k for k in src if k not in used],
        remapped_by_position=positional,
    )


def _match_by_position(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    def aligned(
        tgt: list[tuple[str, torch.Tensor]], src: list[tuple[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        if len(src) < len(tgt) or any(t.shape != s.shape for (_, t), (_, s) in zip(tgt, src, strict=False)):
            return {}
        return {k: s for (k, _), (_, s) in zip(tgt, src, strict=False)}

    # try with BatchNorm's num_batches_tracked counters, then without (one side may lack them)
    found = aligned(list(target.items()), list(source.items()))
    if not found:

        def weights(state: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
            return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]

        found = aligned(weights(target), weights(source))
    return found
