"""Keeps a long run's heap from growing with the run on glibc: fixed malloc thresholds.

glibc's malloc starts with a 128 KiB threshold above which a block gets its own ``mmap`` (given
back to the system when freed), but the first time such a block is freed it raises that threshold
to the block's size, and the threshold at which free memory at the top of the heap is returned to
2x that. A run allocates and frees large transient buffers all the time (HTTP bodies, JSON lines,
SQLite pages, template renders), so after the first one they come from the heap instead, the
space they leave is kept, and a small long-lived block allocated above them pins it: measured on
``rlaif generate prefs`` against a local server, resident memory grew ~0.9 KB per prompt with
Python's own allocations flat (``sys.getallocatedblocks``), all of it free space in malloc's main
arena. Setting the two thresholds explicitly turns the adjustment off (``mallopt(3)``), and the
same run stays flat.

Only the command line calls this (a library should not change its host's allocator), only on
glibc, and not where the user has set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 128 * 1024  # glibc's own starting value for both
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def steady_heap() -> bool:
    """Fixes glibc's mmap and trim thresholds at 128 KiB; True where they were set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
