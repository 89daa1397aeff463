"""trainer/allocator.py: with glibc's thresholds pinned, memory a batch frees is reused by the
next batch instead of going back to the kernel and faulting in again.

Each case runs in a fresh interpreter (the thresholds are process-wide and only ever rise), with
the history a Serve replica had: it once freed a 1 MiB block, so glibc's dynamic rule set the
mmap threshold to 1 MiB and the trim threshold to 2 MiB. A "batch" then allocates 18 MB in
blocks below the mmap threshold, touches them, and frees them all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vlae.allocator import glibc_mallopt

_BATCHES = textwrap.dedent(
    """
    import ctypes, resource, sys
    from vlae.allocator import keep_batch_memory

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "pinned":
        assert keep_batch_memory()
    libc.free(libc.malloc(1 << 20))  # the replica's history: one 1 MiB block freed

    def batch():
        blocks = [libc.malloc(900_000) for _ in range(20)]
        for b in blocks:
            ctypes.memset(b, 1, 900_000)
        for b in blocks:
            libc.free(b)

    batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        batch()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
    """
)


def _faults_per_batch(mode: str) -> float:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _BATCHES, mode], cwd=root, check=True,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return float(out.stdout.strip())


@pytest.mark.skipif(glibc_mallopt() is None, reason="needs glibc on Linux")
def test_pinned_thresholds_keep_a_batchs_memory_for_the_next() -> None:
    # 18 MB of pages is ~4,400 faults: the dynamic thresholds fault them all in every batch.
    assert _faults_per_batch("dynamic") > 2000
    assert _faults_per_batch("pinned") < 50
