"""Files alps writes: atomic replacement, readable modes, hashing, linking inputs into a dataset.

Every output goes through :func:`atomic_path`: written to a temporary sibling, then moved onto the
target with :func:`os.replace`, so a crash never leaves a half-written file and a resumed run can
trust every file it finds. Outputs get the mode an ordinary ``open()`` would give them (``0o666``
less the process umask), so a dataset shared on a cluster or served over HTTP is readable by others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "file_mode",
    "link_or_copy",
    "remove_stale_files",
    "same_file",
    "sha256_file",
    "write_json",
    "write_text",
]


def file_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` gives under the current umask (e.g. ``0o644``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _suffix(name: str) -> str:
    """The suffix writers pick a format by (``.nii.gz`` counts as one)."""
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` atomically.

    The temporary name keeps the suffix so writers that pick a format by extension still work.
    On error the temporary file is removed and ``path`` is left untouched. The file ends with the
    usual umask-derived mode (``mkstemp`` alone would leave it ``0o600``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{_suffix(target.name)}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any, *, indent: int | None = 2) -> None:
    """Write ``data`` as UTF-8 JSON (keys in the given order; ``indent=None``: compact), atomically."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` are the same file (hard link), or have equal size and mtime (an earlier copy)."""
    try:
        if os.path.samefile(a, b):
            return True
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return sa.st_size == sb.st_size and sa.st_mtime_ns == sb.st_mtime_ns


def link_or_copy(source: Path, dest: Path) -> Path:
    """Put ``source`` at ``dest``: hard link, else an atomic copy (keeping mtime); kept if already there."""
    if dest.exists():
        if same_file(dest, source):
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:  # other filesystem, or links not allowed
        with atomic_path(dest) as tmp:
            shutil.copy2(source, tmp)
    return dest


def remove_stale_files(folder: Path, keep: set[Path]) -> None:
    """Delete the files under ``folder`` (a folder alps owns) that are not in ``keep``, then empty folders."""
    if not folder.exists():
        return
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
