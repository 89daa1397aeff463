"""glibc malloc settings for processes that run a model over large batches.

glibc serves a large allocation (a batch's activations: a 256-image forward of the conv VLAE
allocates tensors of several MB) with a fresh ``mmap`` below its *mmap threshold*'s reach and
returns freed memory to the kernel above its *trim threshold*. Both thresholds start low (128
KiB) and rise only when the process happens to free a large block, so they depend on its
history: a process that loaded a data set first runs its forward passes from reused memory,
while a Serve replica, which never freed anything that large, mapped, touched and unmapped its
activations on every forward. That was 8,000 to 12,000 page faults per 256-image forward and a
third more CPU than the same forward in the benchmark's own process (bench/README.md, "Where
the time goes"). Pinning both thresholds where glibc's own rule ends up makes every process
run its forward passes the same way, from memory it keeps.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

# glibc's mallopt parameters (malloc.h) and the values its dynamic rule tops out at on 64-bit
# Linux: the mmap threshold stops at 32 MiB, and the trim threshold follows at twice it.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def glibc_mallopt() -> Any:
    """glibc's ``mallopt``, or None where there is no glibc (another C library, another OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no libc.so.6, or no mallopt
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def keep_batch_memory() -> bool:
    """Pin glibc's mmap and trim thresholds for this process (both process-wide). False where
    there is no glibc: nothing changes there."""
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
