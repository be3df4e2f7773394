"""Process-wide memory allocator setting that keeps freed memory for reuse (glibc only).

By default glibc's malloc serves every block above a (dynamic) threshold of 128 KB to 32 MB
with its own ``mmap`` and hands it back with ``munmap`` when it is freed, and returns the free
top of the heap to the OS beyond 128 KB. SAM's decoder allocates and frees tensors of a few MB
to tens of MB for every batch of prompts, so the kernel maps, zero-fills and unmaps the same
memory again and again: on a 2-core VM measured at ~170,000 page faults and ~0.7 s of system
time per ``predict_torch`` call with 64 prompts (~25% of its wall time). With the thresholds
raised, freed blocks stay in the heap and the next batch reuses them.

This changes the whole process (like ``torch.set_num_threads``), so the library never does it
on its own: the ``samkit`` command line (all subcommands, the web app and ``samkit bench``,
where the official code runs in the same process under the same setting) calls
:func:`keep_freed_memory` at start-up, and API users may call it once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: glibc's largest accepted mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory(
    mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 256 * 1024 * 1024
) -> bool:
    """Let glibc malloc keep freed memory for reuse instead of returning it to the OS.

    Blocks up to ``mmap_threshold`` bytes come from the heap (larger ones are still mapped
    and unmapped one by one), and up to ``trim_threshold`` bytes of free memory at the top of
    the heap are kept. The cost is resident memory that stays at its high-water mark (at most
    ``trim_threshold`` above what is in use) instead of shrinking after each batch.

    Args:
        mmap_threshold: bytes; at most :data:`MAX_MMAP_THRESHOLD`.
        trim_threshold: bytes.

    Returns:
        True when both settings were applied; False on a C library without ``mallopt`` (macOS,
        Windows, musl), where nothing changes.
    """
    if not 0 < mmap_threshold <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold: expected 1..{MAX_MMAP_THRESHOLD} bytes, got {mmap_threshold}")
    if trim_threshold <= 0:
        raise ValueError(f"trim_threshold: expected a positive number of bytes, got {trim_threshold}")
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("no mallopt in the C library: allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    logger.debug("malloc mmap threshold %d, trim threshold %d: %s", mmap_threshold, trim_threshold, applied)
    return applied
