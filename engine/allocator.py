"""Keep glibc from handing large freed blocks back to the kernel between batches (CPU runs).

A forward pass on the CPU allocates and frees activation buffers of 5-30 MiB per op (a batch of
8,192 tokens × 576 float32 values is 19 MiB). glibc serves blocks above its mmap threshold with a
fresh ``mmap`` and returns them with ``munmap``, so every such buffer is page-faulted in again,
4 KiB at a time, by the op that first writes it: RMSNorm's float32 casts and the element-wise
multiplies then run 1.7-2.2× slower than on warm memory. Raising the mmap threshold to glibc's
maximum (32 MiB) and the trim threshold to 1 GiB keeps freed blocks in the heap for the next
batch. On SmolLM2-135M (bf16, two threads) the engine's pairs/s rose by 1-5% alone and 2-11%
with the chunked attention, of the size of the machine's noise
(``python bench/profile_encode.py --profile-batches 0`` with and without ``--untuned-allocator``). The cost: the kept heap fragments over the first shards'
batch shapes, so the peak is higher by a bounded amount (28.5 MiB on the tiny model from 1,000
to 10,000 pairs, then flat; bench/RESULTS.md).

The setting is process-wide and lasts until the process ends; :class:`headwater.engine.Engine`
applies it once when it runs a model on the CPU (``Engine(..., tune_allocator=False)`` opts
out). Other C libraries (musl, macOS) are left alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

LOG = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; whether they are now raised.

    Returns False (and changes nothing) on other C libraries or when ``mallopt`` refuses.
    """
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
        LOG.debug("glibc malloc thresholds raised: %s", _applied)
    return _applied


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
