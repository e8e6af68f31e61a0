"""Keeping freed CPU memory in the process for the next training step.

torch's CPU allocator hands every freed tensor back to the C library. glibc returns the top of its heap to the
operating system once more than its trim threshold (64 MB at most, by its own adjustment) lies free there, and a
training step frees the gigabytes of activations it saved for backward at once, so every next step faults the same
pages back in, zero-filled by the kernel: on the 2-core reference CPU that was about a fifth of a full MuSE step in the
README's CPU configuration (``bench/epoch_cost.py``, README "Benchmarks"). ``keep_freed_memory_in_process`` sets glibc's thresholds so that freed memory stays with the
process (its resident size then stays at its peak, which a training process reaches every step anyway): heap
allocations up to 32 MB (the most glibc's own adjustment would allow) and no trimming.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["glibc", "keep_freed_memory_in_process"]

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_ALLOCATIONS_UP_TO = 32 * 1024 * 1024
_NEVER_TRIM = -1  # "M_TRIM_THRESHOLD ... The value -1 disables trimming completely" (mallopt(3))


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (whose mallopt parameters the callers set), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # Other C libraries (musl) have no gnu_get_libc_version.
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory_in_process() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (see the module docstring).

    Returns whether it did: False on systems without glibc (macOS, Windows, musl), where nothing changes.
    """
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_ALLOCATIONS_UP_TO)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    )
