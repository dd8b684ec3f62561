"""Host memory policy for repeated CPU work."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import threading

import torch

# glibc mallopt parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
GLIBC_TRIM_THRESHOLD, GLIBC_MMAP_THRESHOLD, GLIBC_MMAP_MAX = 128 * 1024, 128 * 1024, 65536
_heap_lock = threading.Lock()
_heap_depth = 0


@functools.lru_cache(maxsize=None)
def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True):
    """Within the block, glibc malloc serves large blocks from its heap and keeps freed ones.

    glibc maps every block above its mmap threshold (at most 32 MB) with a fresh mmap and
    unmaps it on free, so each large map of a CPU pass arrives as new pages that the kernel
    faults in and zeroes one by one, a sizeable share of a pass (docs/benchmarks.md). With
    mmap disabled (M_MMAP_MAX 0) and no trimming inside the block, a freed map's pages serve
    the next map, and the next pass of the same shapes finds its pages already there.

    So the project's repeated CPU work runs inside one block for its whole length: a
    training run, the images and tiles of an inference run, the batches of
    `fcnseg.patchwise`, every method of the benchmark, and a single inference forward pass
    of a DenseClassifier. The resident size inside the block stays at the largest pass's
    working set (that is the point); on leaving the outermost block glibc's default limits
    are set back and malloc_trim(0) returns the free pages to the OS. Nested and concurrent
    blocks share one process-wide setting (a depth count). A no-op elsewhere (other C
    libraries, or enabled=False); tensors on a GPU never go through malloc.
    """
    global _heap_depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    with _heap_lock:
        _heap_depth += 1
        if _heap_depth == 1:
            libc.mallopt(M_MMAP_MAX, 0)
            libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def reuse_host_memory(device: torch.device | str, enabled: bool = True):
    """`reuse_freed_memory` where the work's tensors live in host memory (a CPU device)."""
    return reuse_freed_memory(enabled and torch.device(device).type == "cpu")
