"""The command line's allocator policy, set once when the ``codeformer`` process starts.

A 512x512 CodeFormer forward on CPU allocates and frees dozens of 32-256 MiB activations.
glibc serves blocks above its mmap threshold (adaptive, but never above 32 MiB) with fresh
pages from the kernel and unmaps them when freed, so every activation is page-faulted and
zeroed again, forward after forward. With the mmap and trim thresholds raised, freed blocks
stay in the heap and the next activation reuses them.

This is a process-wide setting (every thread's allocator), so the library never makes it: a
host such as ComfyUI keeps its own policy. The command line is a short-lived process of its
own and sets it once, before any work. Other programs get the same effect, without code, by
starting Python with the environment variable
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30    # blocks up to 1 GiB come from the heap and are kept there when freed


def keep_freed_memory_for_reuse() -> bool:
    """Raise glibc's mmap and trim thresholds for the rest of this process. Call once, at the start
    of a process you own. Returns False (and changes nothing) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return False  # musl and others: no such tuning
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
