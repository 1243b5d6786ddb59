"""alps.core.runtime: glibc malloc tuning, scoped (tuned_malloc) or process-wide (keep_freed_memory),
opt-out by environment; each probe runs in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)

PROBE = """
from alps.core.runtime import allocator_tuned, keep_freed_memory
before = allocator_tuned()
first, second = keep_freed_memory(), keep_freed_memory()
print(before, first, second, allocator_tuned())
"""

# MiB given back to the system by free() of a touched 16 MiB block: with glibc's default thresholds
# the block is its own mapping and goes back at free(); tuned, it stays in the heap for reuse. (Left
# alone, glibc raises its mmap threshold after the first such free, so later blocks stay too.)
SCOPED = """
import ctypes, ctypes.util, os
from alps.core.runtime import allocator_tuned, tuned_malloc
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
def released():
    p = libc.malloc(16 << 20)
    libc.memset(p, 1, 16 << 20)
    touched = rss()
    libc.free(p)
    return touched - rss()
plain = released()
with tuned_malloc() as active:
    inside, tuned = released(), allocator_tuned()
    with tuned_malloc() as nested:
        pass
    still = allocator_tuned()
after = released()
print(active, tuned, nested, still, allocator_tuned(), plain > 12, inside < 4, after > 12)
"""


def _run(code: str, **env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


@linux_only
def test_keep_freed_memory_applies_once() -> None:
    assert _run(PROBE, ALPS_MALLOC_TUNING="1") == ["False", "True", "True", "True"]


@pytest.mark.parametrize("value", ["0", "off"])
def test_keep_freed_memory_opt_out(value: str) -> None:
    assert _run(PROBE, ALPS_MALLOC_TUNING=value) == ["False", "False", "False", "False"]


@linux_only
def test_tuned_malloc_keeps_freed_memory_only_inside_the_block() -> None:
    # active, tuned inside, nested shares it, still tuned after the nested block, restored after
    assert _run(SCOPED, ALPS_MALLOC_TUNING="1") == ["True"] * 4 + ["False"] + ["True"] * 3


@linux_only
def test_tuned_malloc_opt_out_changes_nothing() -> None:
    assert _run(SCOPED, ALPS_MALLOC_TUNING="0") == ["False"] * 5 + ["True", "True", "False"]


def test_importing_changes_no_allocator_setting() -> None:
    assert _run("import alps.core.runtime as r; print(r.allocator_tuned())") == ["False"]
