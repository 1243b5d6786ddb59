"""The one input rule (alps.core.rgb): joint stretch, one flat fallback, shared by every reader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from alps.core import images
from alps.core.rgb import apply_stretch, stretch_limits, stretch_to_uint8, to_rgb_uint8
from alps.train import data as train_data


def test_uint8_is_kept_byte_for_byte(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(to_rgb_uint8(rgb), rgb)
    assert np.array_equal(images.read_image(tmp_path / "a.png"), rgb)
    assert np.array_equal(train_data.read_image(tmp_path / "a.png"), rgb)


def test_stretch_is_joint_so_colour_balance_is_kept() -> None:
    rng = np.random.default_rng(1)
    grey = rng.uniform(1000, 3000, (64, 64))
    sixteen = np.stack([grey, grey / 2, grey / 4], axis=-1).astype(np.uint16)  # a reddish scene
    out = to_rgb_uint8(sixteen).astype(int)
    lo, hi = np.percentile(sixteen, (2, 98))
    assert stretch_limits(sixteen) == (lo, hi)
    assert np.array_equal(out, apply_stretch(sixteen, (lo, hi)))
    assert (out[..., 0] >= out[..., 1]).all() and (out[..., 1] >= out[..., 2]).all()  # still red
    assert out[..., 2].mean() < 40 < 200 < out[..., 0].max()  # a per-band stretch would make all equal


def test_one_fallback_for_flat_images() -> None:
    peaked = np.zeros((50, 50), np.uint16)
    peaked[:5, :5] = 1000  # 1 %: both percentiles are 0, so the full range is used
    assert stretch_limits(peaked) == (0.0, 1000.0)
    assert to_rgb_uint8(peaked)[0, 0].tolist() == [255, 255, 255]
    assert stretch_limits(np.full((8, 8), 7.0)) is None
    assert not to_rgb_uint8(np.full((40, 40, 3), 1234, np.uint16)).any()
    assert not stretch_to_uint8(np.full((4, 4), np.nan)).any()
    with_nan = np.arange(100, dtype=np.float32).reshape(10, 10)
    with_nan[0, 0] = np.nan
    with_nan[0, 1] = np.inf
    out = stretch_to_uint8(with_nan)
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[9, 9] == 255


def test_scene_limits_are_used_as_given() -> None:
    tile = np.array([[0, 500], [1000, 2000]], np.uint16)
    assert to_rgb_uint8(tile, limits=(0.0, 1000.0))[..., 0].tolist() == [[0, 128], [255, 255]]
    assert not to_rgb_uint8(tile, limits=None).any()
    with pytest.raises(ValueError, match="limits must be"):
        to_rgb_uint8(tile, limits="scene")  # type: ignore[arg-type]


def test_grey_limits_come_from_the_band_not_its_copies() -> None:
    grey = np.array([[0, 1]] * 20, np.uint16)
    assert np.array_equal(to_rgb_uint8(grey), np.repeat(stretch_to_uint8(grey)[..., None], 3, axis=2))


def test_training_reads_through_the_labelling_rule(tmp_path: Path) -> None:
    rgb16 = np.random.default_rng(2).integers(0, 4096, (48, 40, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "b.png"), rgb16[..., ::-1])
    expected = to_rgb_uint8(rgb16)
    assert np.array_equal(images.read_image(tmp_path / "b.png"), expected)
    assert np.array_equal(train_data.read_image(tmp_path / "b.png"), expected)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "tiny.png")  # too small for SAM
    assert train_data.read_image(tmp_path / "tiny.png").shape == (8, 8, 3)
    with pytest.raises(images.ImageReadError, match="at least 32 px"):
        images.read_image(tmp_path / "tiny.png")
