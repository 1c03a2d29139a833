"""glibc's allocator set for processes that allocate the same large buffers job after job."""

from __future__ import annotations

import ctypes

MIB = 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
HEAP_UP_TO = 32 * MIB  # glibc's own ceiling for its dynamic mmap threshold on 64-bit
KEEP_FREE = 64 * MIB  # free heap kept for the next job; more goes back to the kernel


def reuse_freed_memory(*, one_arena: bool = False) -> bool:
    """Serve buffers up to 32 MiB from the heap and keep up to 64 MiB of it free between jobs.

    By default glibc maps a large buffer afresh and unmaps it when freed, so each job faults
    in (and the kernel zeroes) the same pages again: ~6,000 faults and 15 % of a small SKU's
    build (docs/imaging.md). `one_arena`: threads share the main arena, whose address space
    RLIMIT_AS counts once. False where the allocator is not glibc's.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its allocator has its own ways
        return False
    settings = [(_M_MMAP_THRESHOLD, HEAP_UP_TO), (_M_TRIM_THRESHOLD, KEEP_FREE)]
    if one_arena:
        settings.append((_M_ARENA_MAX, 1))
    return all(mallopt(option, value) == 1 for option, value in settings)
