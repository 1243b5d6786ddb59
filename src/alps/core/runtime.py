"""Process-wide settings that make CPU inference faster.

SAM's decoder allocates and frees many short-lived tensors of 1-32 MB per prompt. With glibc's default
settings large freed blocks go back to the operating system (``munmap`` or heap trimming), so every new
tensor of that size starts on fresh pages and pays one page fault per 4 KiB on first touch: on the
2-core reference machine that made an element-wise op on a 16 MB tensor 4x slower in the decoder loop
than in isolation, and the whole mask generation ~20 % slower. :func:`keep_freed_memory` asks glibc to
keep freed blocks for reuse instead (the effect of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
set in the environment, applied at run time). The price is that the resident size does not shrink back
after a peak; the peak itself does not grow.

``alps label`` applies it; set ``ALPS_MALLOC_TUNING=0`` to opt out. Other platforms and C libraries are
left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # blocks above this still get their own mapping (glibc's dynamic maximum)
TRIM_THRESHOLD = 1 << 30  # free memory at the heap top kept before it is returned to the system

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Configure glibc malloc to reuse freed large blocks; True if applied (idempotent).

    Returns False, changing nothing, when ``ALPS_MALLOC_TUNING=0`` is set, on non-Linux platforms,
    or when the C library has no working ``mallopt`` (musl).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ALPS_MALLOC_TUNING", "1").strip() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    _applied = mmap_ok and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied


def allocator_tuned() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process."""
    return bool(_applied)
