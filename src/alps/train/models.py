"""Segmentation networks from segmentation-models-pytorch with timm encoders, and local weight loading.

Networks are always built with ``encoder_weights=None``: nothing is downloaded at run time. ImageNet
(or any other) encoder weights come from a local file through :func:`load_encoder_weights`, which also
re-maps state dicts whose key names differ from timm's (e.g. the EfficientNet-Lite0 ``.pth``) by
position when every tensor shape lines up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

log = logging.getLogger(__name__)

# architecture name -> smp class; every class takes (encoder_name, encoder_weights, classes, ...)
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "upernet": smp.UPerNet,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "fpn": smp.FPN,
    "unet": smp.Unet,
}

# encoders tested with every architecture above (smp's own names and ``tu-`` timm names both work)
KNOWN_ENCODERS = (
    "resnet18",
    "resnet50",
    "tu-resnet18",
    "tu-resnet50",
    "tu-efficientnet_lite0",
    "tu-convnext_atto",
    "tu-swin_tiny_patch4_window7_224",
)

# timm encoders whose position embeddings / windows need the input size at build time
_FIXED_SIZE_MARKERS = ("swin", "vit", "deit", "beit", "eva")


def needs_fixed_size(encoder: str) -> bool:
    """True for encoders (Swin, ViT, ...) that only accept the input size they were built for."""
    return any(marker in encoder for marker in _FIXED_SIZE_MARKERS)


def build_model(arch: str, encoder: str, num_classes: int, img_size: int | None = None) -> nn.Module:
    """Randomly initialised smp network: ``(B, 3, H, W)`` → logits ``(B, num_classes, H, W)``.

    ``H``/``W`` must be multiples of 32; fixed-size encoders (see :func:`needs_fixed_size`) need
    ``img_size`` and then accept only ``img_size × img_size`` inputs. DeepLabV3+ needs an encoder that
    supports ``output_stride`` (CNNs, not Swin).
    """
    key = arch.lower().replace("-", "").replace("_", "")
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    kwargs: dict[str, Any] = {}
    if needs_fixed_size(encoder):
        if img_size is None:
            raise ValueError(f"encoder {encoder} needs img_size (the training crop size)")
        kwargs["img_size"] = img_size
    return ARCHITECTURES[key](encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)


def segmentation_conv(model: nn.Module) -> nn.Conv2d:
    """The final classification convolution of an smp network."""
    head = model.segmentation_head
    conv = head[0] if isinstance(head, nn.Sequential) else head  # smp: Sequential(conv, upsample, act)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"unexpected segmentation head {type(head).__name__}")
    return conv


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the classification convolution for a freshly initialised one with ``num_classes`` outputs."""
    old = segmentation_conv(model)
    kh, kw = old.kernel_size[0], old.kernel_size[-1]
    ph, pw = (0, 0) if isinstance(old.padding, str) else (old.padding[0], old.padding[-1])
    new = nn.Conv2d(old.in_channels, num_classes, (kh, kw), padding=(ph, pw), bias=old.bias is not None)
    head = model.segmentation_head
    if isinstance(head, nn.Sequential):
        head[0] = new
    else:
        model.segmentation_head = new
    return model


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


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
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
            src = _strip_prefix(src, prefix)
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


def encoder_backbone(model: nn.Module) -> nn.Module:
    """The module holding the encoder's weights (the timm model inside smp's ``tu-`` wrapper)."""
    encoder = model.encoder
    if not isinstance(encoder, nn.Module):
        raise TypeError("not an smp network: no encoder module")
    inner = getattr(encoder, "model", None)
    return inner if isinstance(inner, nn.Module) else encoder


def load_encoder_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise the encoder of an smp network from a local weights file (e.g. ImageNet weights).

    Classifier tensors in the file (``fc``, ``classifier``, ``head``) are ignored.
    """
    report = load_matching(encoder_backbone(model), read_state_dict(path))
    log.info("encoder weights from %s: %s", path, report)
    return report


def load_pretrained_network(model: nn.Module, path: str | Path) -> LoadReport:
    """Load encoder **and** decoder weights of a pre-trained run into ``model``, leaving its head as is.

    ``path`` is an alps checkpoint (``.ckpt``) or a plain state dict of the same architecture.
    """
    state = read_state_dict(path)
    state = _strip_prefix(state, "net.")
    body = {k: v for k, v in state.items() if not k.startswith("segmentation_head.")}
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("segmentation_head.")}
    matched = {k: v for k, v in body.items() if k in target and v.shape == target[k].shape}
    if len(matched) < len(target) * 0.9:
        raise ValueError(
            f"{path}: only {len(matched)} of {len(target)} encoder/decoder tensors fit this "
            "network; was it pre-trained with the same --arch and --encoder?"
        )
    model.load_state_dict(matched, strict=False)
    return LoadReport(
        len(matched), [k for k in target if k not in matched], [k for k in body if k not in matched]
    )
