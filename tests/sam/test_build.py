"""Model builders and ``load_sam``: strict loading, clear errors, LiteMedSAM preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from alps.sam import BUILDERS, MODEL_TYPES, LiteMedSam, load_sam, model_input_size
from alps.sam.build import detect_architecture, read_checkpoint


class _Marker:
    """Unpickling this object creates a directory: proof that arbitrary code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.path),))


@pytest.fixture(scope="module")
def litemedsam_random() -> Sam:
    return load_sam("litemedsam")


def test_model_types() -> None:
    assert MODEL_TYPES == ("vit_b", "vit_l", "vit_h", "vit_t", "litemedsam")
    assert set(BUILDERS) == set(MODEL_TYPES)
    with pytest.raises(ValueError, match="unknown model_type 'vit_x'"):
        load_sam("vit_x")


def test_vit_t_random_init_round_trips_and_embeds(tmp_path: Path) -> None:
    model = load_sam("vit_t", seed=0)
    assert isinstance(model, Sam) and not model.training
    assert model_input_size(model) == 1024
    assert model.prompt_encoder.input_image_size == (1024, 1024)
    assert model.prompt_encoder.image_embedding_size == (64, 64)
    state = model.state_dict()
    assert state["image_encoder.head.weight"].shape == (1000, 320)  # MobileSAM's unused classifier

    path = tmp_path / "vit_t.pth"
    torch.save(state, path)
    other_seed = load_sam("vit_t", seed=1)
    assert not torch.equal(
        other_seed.state_dict()["image_encoder.head.weight"], state["image_encoder.head.weight"]
    )
    loaded = load_sam("vit_t", checkpoint=path, seed=1)  # strict load must override the seed-1 init
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key

    with torch.no_grad():
        embedding = loaded.image_encoder(torch.randn(1, 3, 1024, 1024))
    assert embedding.shape == (1, 256, 64, 64)
    assert torch.isfinite(embedding).all()


def test_litemedsam_real_weights_load_strictly(litemedsam_checkpoint: Path) -> None:
    model = load_sam("litemedsam", checkpoint=litemedsam_checkpoint)
    assert isinstance(model, LiteMedSam)
    assert model_input_size(model) == 256
    assert model.prompt_encoder.input_image_size == (256, 256)
    raw = torch.load(litemedsam_checkpoint, map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert set(state) == set(raw)
    assert torch.equal(state["image_encoder.neck.2.weight"], raw["image_encoder.neck.2.weight"])
    # the registry name means "the fetched file"
    by_name = load_sam("litemedsam", checkpoint="litemedsam")
    assert torch.equal(
        by_name.state_dict()["mask_decoder.iou_token.weight"], raw["mask_decoder.iou_token.weight"]
    )


def test_litemedsam_preprocess_is_per_image_min_max_then_zero_pad(litemedsam_random: Sam) -> None:
    x = torch.zeros(2, 3, 200, 256)
    x[0] = torch.linspace(10, 50, 256)  # range 10..50
    x[1, 1] = 255.0  # range 0..255
    out = litemedsam_random.preprocess(x)
    assert out.shape == (2, 3, 256, 256)
    for i in range(2):
        valid = out[i, :, :200, :]
        assert valid.min().item() == 0.0 and valid.max().item() == pytest.approx(1.0)
    assert torch.equal(out[:, :, 200:, :], torch.zeros(2, 3, 56, 256))
    assert torch.allclose(out[0, 0, 0, :], (torch.linspace(10, 50, 256) - 10) / 40)
    # a single unbatched image, and a constant one (no division by zero)
    assert litemedsam_random.preprocess(torch.full((3, 10, 20), 7.0)).abs().sum().item() == 0.0


def test_official_predictor_feeds_litemedsam_its_own_preprocessing(litemedsam_random: Sam) -> None:
    seen: list[torch.Tensor] = []

    def fake_encoder(x: torch.Tensor) -> torch.Tensor:  # skip the heavy encoder; record its input
        seen.append(x)
        return torch.zeros(x.shape[0], 256, 64, 64)

    rng = np.random.default_rng(0)
    image = rng.integers(30, 200, size=(300, 150, 3), dtype=np.uint8)
    encoder = litemedsam_random.image_encoder
    original_forward = encoder.forward
    encoder.forward = fake_encoder
    try:
        predictor = SamPredictor(litemedsam_random)
        predictor.set_image(image)
    finally:
        encoder.forward = original_forward

    resized = ResizeLongestSide(256).apply_image(image)  # 256 x 128
    assert predictor.input_size == resized.shape[:2]
    expected = torch.zeros(1, 3, 256, 256)
    pixels = torch.from_numpy(resized).permute(2, 0, 1).float()
    expected[0, :, :256, :128] = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    torch.testing.assert_close(seen[0], expected)


def test_wrong_architecture_names_both_types(tmp_path: Path, litemedsam_random: Sam) -> None:
    path = tmp_path / "lite.pth"
    torch.save({"model": litemedsam_random.state_dict()}, path)  # wrapped, as training scripts save it
    with pytest.raises(ValueError, match=r"looks like a 'litemedsam'.*model_type 'vit_t' was requested"):
        load_sam("vit_t", checkpoint=path)

    vit = tmp_path / "vit.pth"
    torch.save({"state_dict": {"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16)}}, vit)
    with pytest.raises(ValueError, match=r"looks like a 'vit_h'.*ViT-H.*'litemedsam' was requested"):
        load_sam("litemedsam", checkpoint=vit)

    unknown = tmp_path / "unknown.pth"
    torch.save({"image_encoder.neck.0.weight": torch.zeros(256, 320, 1, 1)}, unknown)
    with pytest.raises(ValueError, match=r"does not fit model_type 'litemedsam'.*no SAM image encoder"):
        load_sam("litemedsam", checkpoint=unknown)


@pytest.mark.parametrize(
    ("key", "shape", "expected"),
    [
        ("image_encoder.patch_embed.proj.weight", (768, 3, 16, 16), "vit_b"),
        ("image_encoder.patch_embed.proj.weight", (1024, 3, 16, 16), "vit_l"),
        ("module.image_encoder.patch_embed.proj.weight", (1280, 3, 16, 16), "vit_h"),
        ("image_encoder.patch_embed.seq.0.c.weight", (32, 3, 3, 3), "vit_t"),
        ("image_encoder.patch_embed.seq.0.c.weight", (32, 3, 1, 1), "litemedsam"),
        ("image_encoder.patch_embed.proj.weight", (384, 3, 16, 16), None),
    ],
)
def test_detect_architecture(key: str, shape: tuple[int, ...], expected: str | None) -> None:
    detected, description = detect_architecture({key: torch.zeros(shape)})
    assert detected == expected
    assert description


def test_checkpoints_are_loaded_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Marker(marker)}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_sam("litemedsam", checkpoint=path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: a plain unpickle does run the payload
    assert marker.is_dir()


def test_registry_name_never_downloads_official_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALPS_HOME", str(tmp_path))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_sam must not download official weights")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(FileNotFoundError, match="alps weights fetch vit_t"):
        load_sam("vit_t", checkpoint="vit_t")
    with pytest.raises(ValueError, match="for model_type 'vit_b', not 'vit_t'"):
        load_sam("vit_t", checkpoint="vit_b")
    with pytest.raises(FileNotFoundError, match="neither a file nor a registered"):
        load_sam("vit_t", checkpoint=tmp_path / "missing.pth")


def test_litemedsam_segments_a_boxed_disc_through_the_official_predictor(litemedsam_checkpoint: Path) -> None:
    model = load_sam("litemedsam", checkpoint=litemedsam_checkpoint)
    yy, xx = np.mgrid[0:300, 0:400]
    disc = (yy - 150) ** 2 + (xx - 220) ** 2 < 60**2
    image = np.full((300, 400, 3), 40, np.uint8)
    image[disc] = 200
    image += np.random.default_rng(0).integers(0, 20, image.shape, dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=np.array([150, 80, 290, 220]), multimask_output=False)
    iou = (masks[0] & disc).sum() / (masks[0] | disc).sum()
    assert iou > 0.9


@pytest.mark.parametrize("name", ["litemedsam", "vit_t", "vit_b"])
def test_box_prompt_models_are_the_box_trained_ones(name: str) -> None:
    from alps.sam.build import BOX_PROMPT_MODELS
    from alps.sam.generator import default_prompt

    assert (default_prompt(load_sam(name)) == "boxes") == (name in BOX_PROMPT_MODELS)
    assert BOX_PROMPT_MODELS == {"litemedsam"}


def _not_a_checkpoint(kind: str, tmp_path: Path, litemedsam_checkpoint: Path | None) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("model weights go here\nsecond line\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes/readme.txt", "not a checkpoint")
    else:
        assert litemedsam_checkpoint is not None
        path.write_bytes(litemedsam_checkpoint.read_bytes()[: 1 << 20])  # an interrupted download
    return path


@pytest.mark.parametrize("kind", ["text", "empty", "zip", "truncated"])
def test_unreadable_checkpoint_is_one_line_error_naming_the_file(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    real = request.getfixturevalue("litemedsam_checkpoint") if kind == "truncated" else None
    path = _not_a_checkpoint(kind, tmp_path, real)
    for load in (lambda: read_checkpoint(path), lambda: load_sam("litemedsam", checkpoint=path)):
        with pytest.raises(ValueError, match="not a readable PyTorch checkpoint") as info:
            load()
        message = str(info.value)
        assert message.startswith(str(path)) and "\n" not in message
        assert "state dict saved with torch.save" in message
