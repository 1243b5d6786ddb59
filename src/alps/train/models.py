"""Segmentation networks from segmentation-models-pytorch with timm encoders, and local weight loading.

Networks are always built with ``encoder_weights=None``: nothing is downloaded at run time. ImageNet
(or any other) encoder weights come from a local file through :func:`load_encoder_weights`, which also
re-maps state dicts whose key names differ from timm's (e.g. the EfficientNet-Lite0 ``.pth``) by
position when every tensor shape lines up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from alps.core.state_dict import LoadReport, load_matching, read_state_dict, strip_prefix

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
    state = strip_prefix(state, "net.")
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
