"""Process-wide settings that make CPU inference faster.

SAM's decoder allocates and frees many short-lived tensors of 1-32 MB per prompt. With glibc's default
settings large freed blocks go back to the operating system (``munmap`` or heap trimming), so every new
tensor of that size starts on fresh pages and pays one page fault per 4 KiB on first touch: on the
2-core reference machine that made an element-wise op on a 16 MB tensor 4x slower in the decoder loop
than in isolation, and the whole mask generation ~20 % slower. :func:`keep_freed_memory` asks glibc to
keep freed blocks for reuse instead (the effect of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
set in the environment, applied at run time). The price is that the resident size does not shrink back
after a peak; the peak itself does not grow.

Two ways to apply it: :func:`tuned_malloc`, a context manager that applies the tuning for the
duration of a call (``label()`` uses it) and afterwards restores glibc's default thresholds and
returns the kept memory (``malloc_trim``); and :func:`keep_freed_memory`, the process-wide opt-in for
command-line entry points and benchmarks, which keeps it until the process ends. Importing this
module changes nothing. Set ``ALPS_MALLOC_TUNING=0`` to opt out of both. Other platforms and C
libraries are left alone. glibc cannot switch its dynamic mmap threshold back on once a threshold
was set, so after :func:`tuned_malloc` the threshold stays at its default 128 KiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # blocks above this still get their own mapping (glibc's dynamic maximum)
TRIM_THRESHOLD = 1 << 30  # free memory at the heap top kept before it is returned to the system
DEFAULT_MMAP_THRESHOLD = 128 << 10  # glibc's defaults (malloc.h, DEFAULT_MMAP_THRESHOLD_MIN)
DEFAULT_TRIM_THRESHOLD = 128 << 10

_applied: bool | None = None  # keep_freed_memory(): None = not asked yet
_scoped = 0  # tuned_malloc() blocks currently open
_scope_tuned = False  # the outermost open tuned_malloc() block applied the tuning
_lock = threading.Lock()


def _opted_out() -> bool:
    return os.environ.get("ALPS_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off")


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _set_thresholds(mmap: int, trim: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1)


@contextmanager
def tuned_malloc() -> Iterator[bool]:
    """Apply the tuning inside the block (yields whether it is in effect); restore glibc's defaults
    and return kept memory to the system when the outermost block ends.

    Nested blocks share one tuning; inside a process where :func:`keep_freed_memory` applied it,
    the block changes nothing. Yields False, changing nothing, when opted out or unsupported.
    """
    global _scoped, _scope_tuned
    with _lock:
        if _scoped == 0 and not _applied and not _opted_out():
            _scope_tuned = _set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD)
        _scoped += 1
        active = bool(_applied) or _scope_tuned
    try:
        yield active
    finally:
        with _lock:
            _scoped -= 1
            if _scoped == 0 and _scope_tuned:
                _scope_tuned = False
                if not _applied:  # keep_freed_memory() inside the block keeps it for the process
                    _set_thresholds(DEFAULT_MMAP_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                    libc = _libc()
                    if libc is not None and hasattr(libc, "malloc_trim"):
                        libc.malloc_trim(0)


def keep_freed_memory() -> bool:
    """Process-wide opt-in (CLI, benchmarks): apply the tuning until the process ends; True if
    applied (idempotent).

    Returns False, changing nothing, when ``ALPS_MALLOC_TUNING=0`` is set, on non-Linux platforms,
    or when the C library has no working ``mallopt`` (musl).
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = not _opted_out() and _set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD)
        return _applied


def allocator_tuned() -> bool:
    """Whether the tuning is in effect now (:func:`keep_freed_memory`, or inside :func:`tuned_malloc`)."""
    return bool(_applied) or _scope_tuned
