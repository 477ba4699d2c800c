"""Memory given back: the C allocator (glibc) returns large blocks to the system at once.

By default glibc raises its mmap threshold each time a large block is freed, so later large
blocks come from heaps that are seldom returned: after one 15 MB request a worker kept
hundreds of MB. Fixing the threshold keeps every block of LARGE_BLOCK or more in its own
mapping, unmapped when freed; `trim` returns the free pages of the heaps themselves
(app/edge/limits.py calls it when the last large request is done). Both do nothing where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

LARGE_BLOCK = 256 * 1024
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold at LARGE_BLOCK (idempotent); False if not glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK))


def trimmer() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), which gives the free pages of every heap back; None if absent."""
    trim = getattr(_libc(), "malloc_trim", None)
    return None if trim is None else lambda: trim(0)
