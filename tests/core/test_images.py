"""find_images ids and the read_image conversion rule, on small files written here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alps.core.images import ImageReadError, find_images, load_image, read_image, stretch_to_uint8

SAFE_ID = re.compile(r"^[\w.\-]+$")


def _rgb(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _touch_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(seed=seed)).save(path)
    return path


# ---------------------------------------------------------------------------------------- finding


def test_find_images_recursive_and_filtered(tmp_path: Path) -> None:
    _touch_png(tmp_path / "a.png")
    _touch_png(tmp_path / "sub" / "deeper" / "b.PNG")
    Image.fromarray(_rgb()).save(tmp_path / "sub" / "c.jpg")
    Image.fromarray(_rgb()).save(tmp_path / "d.tiff")
    Image.fromarray(_rgb()).save(tmp_path / "e.jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    _touch_png(tmp_path / ".hidden" / "x.png")
    _touch_png(tmp_path / ".dotfile.png")
    found = find_images(tmp_path)
    assert [f.relpath for f in found] == ["a.png", "d.tiff", "e.jpeg", "sub/c.jpg", "sub/deeper/b.PNG"]
    assert [f.id for f in found] == ["a", "d", "e", "sub__c", "sub__deeper__b"]


def test_equal_stems_in_different_folders_get_distinct_ids(tmp_path: Path) -> None:
    _touch_png(tmp_path / "site1" / "tile.png")
    _touch_png(tmp_path / "site2" / "tile.png")
    _touch_png(tmp_path / "x.png")
    Image.fromarray(_rgb()).save(tmp_path / "x.jpg")  # same stem, same folder
    _touch_png(tmp_path / "a" / "b.png")
    _touch_png(tmp_path / "a__b.png")  # would map to the same id as a/b.png
    found = find_images(tmp_path)
    ids = [f.id for f in found]
    assert len(set(ids)) == len(ids) == 6
    assert {"site1__tile", "site2__tile"} <= set(ids)
    x_ids = [f.id for f in found if f.relpath.startswith("x.")]
    assert all(i.startswith("x-") for i in x_ids)
    # stable: the same call gives the same ids
    assert [f.id for f in find_images(tmp_path)] == ids


def test_case_only_difference_is_disambiguated(tmp_path: Path) -> None:
    _touch_png(tmp_path / "one" / "Tile.png")
    _touch_png(tmp_path / "one" / "tile.png", seed=1)
    found = find_images(tmp_path)
    if len(found) < 2:
        pytest.skip("case-insensitive file system")
    assert len({f.id.casefold() for f in found}) == 2


def test_names_with_dots_spaces_and_unicode(tmp_path: Path) -> None:
    names = ["2019.06.01 flight.png", "forêt ñandú 森林.png", "a b/c d.e.f.png", "weird#name&(1).png"]
    for name in names:
        _touch_png(tmp_path / name)
    found = find_images(tmp_path)
    assert len(found) == len(names)
    ids = {f.relpath: f.id for f in found}
    assert ids["2019.06.01 flight.png"] == "2019.06.01_flight"
    assert ids["forêt ñandú 森林.png"] == "forêt_ñandú_森林"
    assert ids["a b/c d.e.f.png"] == "a_b__c_d.e.f"
    for image_id in ids.values():
        assert SAFE_ID.match(image_id), image_id
        assert "/" not in image_id and " " not in image_id
    for item in found:  # all readable through their odd paths
        assert read_image(item.path).shape == (40, 48, 3)


def test_several_inputs_and_single_files(tmp_path: Path) -> None:
    first = _touch_png(tmp_path / "in1" / "tile.png")
    _touch_png(tmp_path / "in2" / "tile.png")
    found = find_images([first, tmp_path / "in2"])
    assert len(found) == 2 and found[0].id != found[1].id
    assert found[0].path == first
    # the same file reached twice is listed once
    assert len(find_images([tmp_path / "in1", first])) == 1


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        find_images(tmp_path / "empty")


def test_long_names_are_shortened_with_hash(tmp_path: Path) -> None:
    _touch_png(tmp_path / ("x" * 200 + ".png"))
    (item,) = find_images(tmp_path)
    assert len(item.id) < 140 and SAFE_ID.match(item.id)


# ---------------------------------------------------------------------------------------- reading


def test_rgb_png_unchanged(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.pixels, rgb)
    assert loaded.pixels.dtype == np.uint8 and not loaded.converted


def test_grayscale_replicated(tmp_path: Path) -> None:
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (40, 48, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_alpha_dropped_and_recorded(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.zeros((40, 48, 1), np.uint8)], axis=2)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(loaded.pixels, rgba[:, :, :3])  # not composited onto black/white
    assert "alpha dropped" in loaded.notes


def test_palette_to_rgb(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb()).quantize(colors=16)
    img.save(tmp_path / "p.png")
    expected = np.asarray(img.convert("RGB"))
    loaded = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(loaded.pixels, expected)
    assert loaded.source_mode == "P"


def test_16bit_gray_png_percentile_stretch(tmp_path: Path) -> None:
    values = np.linspace(1000, 5000, 40 * 48).reshape(40, 48).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    lo, hi = np.percentile(values, [2, 98])
    expected = np.clip(np.rint((values - lo) * 255 / (hi - lo)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out[:, :, 0].min() == 0 and out[:, :, 0].max() == 255


def test_16bit_rgb_png_keeps_low_bits(tmp_path: Path) -> None:
    """Pillow would truncate 16-bit colour to the high byte; the stretch must see the full values."""
    import cv2

    rgb16 = (np.random.default_rng(1).integers(0, 256, (40, 48, 3)) + 30000).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])  # BGR on disk
    loaded = load_image(tmp_path / "c16.png")
    assert loaded.pixels.max() > loaded.pixels.min() + 200  # high byte alone would be ~constant
    np.testing.assert_array_equal(loaded.pixels, stretch_to_uint8(rgb16))


def test_tiff_uint16_multiband_and_float(tmp_path: Path) -> None:
    import tifffile

    bands = np.random.default_rng(2).integers(0, 4000, (40, 48, 5)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ms.tif", bands, photometric="minisblack", planarconfig="contig")
    loaded = load_image(tmp_path / "ms.tif")
    np.testing.assert_array_equal(loaded.pixels, stretch_to_uint8(bands[:, :, :3]))
    assert any("first 3 of 5" in n for n in loaded.notes)

    planar = np.moveaxis(bands[:, :, :3], -1, 0).copy()  # (3, H, W)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), stretch_to_uint8(bands[:, :, :3]))

    floats = np.random.default_rng(3).normal(size=(40, 48)).astype(np.float32)
    floats[0, 0] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", floats)
    out = read_image(tmp_path / "f.tif")
    assert out.dtype == np.uint8 and out.shape == (40, 48, 3) and out[0, 0, 0] == 0


def test_exif_orientation_applied(tmp_path: Path) -> None:
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :10] = 255  # white band on the left
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    loaded = load_image(tmp_path / "o.jpg")
    assert loaded.pixels.shape == (60, 40, 3)
    assert loaded.pixels[:10].mean() > 200  # the band is now on top
    assert any("EXIF" in n for n in loaded.notes) and loaded.converted


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.pixels.shape == (40, 48, 3) and loaded.source_mode == "CMYK"


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage", b"not an image at all" * 10])
def test_unreadable_files_raise(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=r"bad\.png"):
        read_image(path)


def test_truncated_png_raises(tmp_path: Path) -> None:
    _touch_png(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "t.png")


def test_too_small_and_missing(tmp_path: Path) -> None:
    Image.fromarray(_rgb(h=20, w=100)).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="at least 32"):
        read_image(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="cannot access"):
        read_image(tmp_path / "nope.png")


def test_stretch_constant_image() -> None:
    assert not stretch_to_uint8(np.full((4, 4), 7, np.uint16)).any()
    assert not stretch_to_uint8(np.full((4, 4), np.nan)).any()


def test_importing_leaves_pillows_bomb_guard_alone() -> None:
    import subprocess
    import sys

    probe = (
        "from PIL import Image; d = Image.MAX_IMAGE_PIXELS; import alps.core.images; "
        "print(Image.MAX_IMAGE_PIXELS == d)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True"]


@pytest.mark.parametrize("size", [(1200, 1000), (2000, 2000)])  # our check; Pillow's at twice the limit
def test_decompression_bomb_guard_is_bounded_and_scoped(
    tmp_path: Path, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", size).save(path)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError, match=r"big\.png: .*ALPS_MAX_IMAGE_PIXELS"):
        load_image(path, max_pixels=1_000_000)
    assert Image.MAX_IMAGE_PIXELS == before
    monkeypatch.setenv("ALPS_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(ImageReadError, match=r"more than the limit|decompression bomb"):
        load_image(path)
    monkeypatch.setenv("ALPS_MAX_IMAGE_PIXELS", str(size[0] * size[1]))
    assert load_image(path).pixels.shape == (size[1], size[0], 3)
    assert Image.MAX_IMAGE_PIXELS == before
