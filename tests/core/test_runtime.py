"""alps.core.runtime: glibc malloc tuning, applied once, opt-out by environment (fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, ctypes.util, torch
from alps.core.runtime import allocator_tuned, keep_freed_memory
before = allocator_tuned()
first, second = keep_freed_memory(), keep_freed_memory()
print(before, first, second, allocator_tuned())
"""


def _probe(**env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_applies_once() -> None:
    assert _probe(ALPS_MALLOC_TUNING="1") == ["False", "True", "True", "True"]


@pytest.mark.parametrize("value", ["0", "off"])
def test_keep_freed_memory_opt_out(value: str) -> None:
    assert _probe(ALPS_MALLOC_TUNING=value) == ["False", "False", "False", "False"]
