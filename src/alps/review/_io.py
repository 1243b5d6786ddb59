"""Small file helpers of the review tools: atomic writes with normal (umask) permissions."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "file_mode", "link_or_copy", "write_json", "write_text"]


def file_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _suffixes(name: str) -> str:
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix); on success move it onto ``path``.

    Unlike :func:`tempfile.mkstemp` files, the result has the normal umask permissions, so a
    dataset written here is readable by the group/others exactly as files written with ``open``.
    On error the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffixes(target.name)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 text atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any, *, indent: int | None = 2) -> None:
    """Write strict JSON (plus a newline) atomically."""
    write_text(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a hard link of ``src`` (a copy across file systems); replaces ``dst`` atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp{_suffixes(dst.name)}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)  # a hard link keeps the source's own mode: never chmod it
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
