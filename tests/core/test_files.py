"""core/files: atomic writes with umask-derived modes, linking inputs, stale files; modes of a real run."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from alps.core.files import atomic_path, link_or_copy, remove_stale_files, write_json, write_text


@pytest.fixture
def umask() -> Iterator[None]:
    """Run the test under umask 0o022, restoring the process umask after it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_path_gives_umask_derived_mode(tmp_path: Path, mask: int, mode: int) -> None:
    old = os.umask(mask)
    try:
        with atomic_path(tmp_path / "sub" / "a.json") as tmp:
            assert tmp.parent == tmp_path / "sub" and tmp.name.endswith(".json")  # suffix kept
            tmp.write_text("{}")
        write_text(tmp_path / "b.txt", "hello")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "sub" / "a.json") == mode and _mode(tmp_path / "b.txt") == mode
    assert (tmp_path / "b.txt").read_text() == "hello"


def test_atomic_path_on_error_leaves_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    write_json(target, {"old": 1})
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # no temporary left
    # a writer that removes its temporary (GDAL-style) still leaves no file and no error on the move
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "u.gpkg") as tmp:
        tmp.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_atomic_path_replaces_existing_target(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    target.chmod(0o600)
    write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o644


def test_link_or_copy_links_keeps_and_replaces(tmp_path: Path) -> None:
    source = tmp_path / "src.png"
    source.write_bytes(b"image")
    dest = tmp_path / "data" / "images" / "a.png"
    assert link_or_copy(source, dest) == dest
    assert os.path.samefile(source, dest)  # hard link on the same filesystem
    inode = dest.stat().st_ino
    assert link_or_copy(source, dest) == dest and dest.stat().st_ino == inode  # already there: kept
    dest.unlink()
    dest.write_bytes(b"other file")
    link_or_copy(source, dest)  # a different file at dest is replaced
    assert os.path.samefile(source, dest) and dest.read_bytes() == b"image"


def test_link_or_copy_copies_when_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "src.png"
    source.write_bytes(b"image")
    os.utime(source, ns=(1_000_000_000, 1_000_000_000))

    def no_links(src: object, dst: object) -> None:
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    dest = tmp_path / "d" / "a.png"
    link_or_copy(source, dest)
    assert dest.read_bytes() == b"image" and not os.path.samefile(source, dest)
    assert dest.stat().st_mtime_ns == source.stat().st_mtime_ns  # an earlier copy is recognised ...
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.png"]
    monkeypatch.setattr(shutil, "copy2", lambda *a: pytest.fail("copied again"))
    link_or_copy(source, dest)  # ... and kept


def test_remove_stale_files_keeps_listed_and_drops_empty_folders(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    keep = {folder / "train" / "a.png", folder / "val" / "b.png"}
    stale = [folder / "train" / "old.png", folder / "gone" / "deep" / "x.png"]
    for path in [*keep, *stale]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    remove_stale_files(folder, keep)
    assert {p for p in folder.rglob("*") if p.is_file()} == keep
    assert not (folder / "gone").exists() and (folder / "train").is_dir()
    remove_stale_files(tmp_path / "missing", set())  # a folder that does not exist is fine


def test_every_output_of_a_real_run_is_umask_readable(tmp_path: Path, umask: None) -> None:
    """A small real ``alps label`` run (NEON tiles, SLIC masks, tiny SAM): every file gets 0o644."""
    from alps.labeling.run import label
    from alps.samples.neon import SMALL_IMAGES, sample_images
    from tests.conftest import require_asset
    from tests.labeling.test_run import tiny_sam

    tiles = require_asset("the deepforest sample images", lambda: sample_images(names=SMALL_IMAGES))
    inp = tmp_path / "in"
    inp.mkdir()
    for tile in tiles:
        shutil.copyfile(tile, inp / tile.name)  # created under the umask: the linked images are 0o644 too
    out = tmp_path / "out"
    run = label(inp, out, model=tiny_sam(), masks="slic", points_per_side=4, clusters=3, progress=False)
    assert run.ok and not run.failed
    files = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.relative_to(out).as_posix() for p in files}
    for pattern in (
        "tables/*.parquet",
        "overlays/*.jpg",
        "labels/train/*.png",
        "state/*.json",
        "params.json",
        "manifest.json",
        "coco/instances.json",
        "log.txt",
    ):
        assert list(out.glob(pattern)), f"the run wrote no {pattern}: {sorted(names)}"
    wrong = {p.relative_to(out).as_posix(): oct(_mode(p)) for p in files if _mode(p) != 0o644}
    assert not wrong, wrong
