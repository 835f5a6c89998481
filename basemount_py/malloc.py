"""glibc malloc settings for the processes that move file bytes: the mount daemon and the emulator.

Serve every buffer up to 32 MiB from the heap and keep up to 64 MiB of freed heap instead of
handing it back to the kernel at once. Both processes allocate and free buffers of 64 KiB to
1 MiB all the time (the daemon's blocks and replies, the emulator's body pieces); left to glibc's
defaults, buffers from 128 KiB up went to fresh mmap()s and freed heap was trimmed, so every reuse
page-faulted, which is costly on a VM (first touch of memory at ~0.7 GB/s). Measured on a 2 GiB
cp with --direct-io: 3.9 s of daemon CPU without this, 3.4 s with it; in the emulator, answering
a GiB as 1 MiB ranges took 2.8-3.0 s of CPU without it and 1.4-1.6 s with it (docs/performance.md).

One arena: worker threads (the daemon's content fetcher and disk cache, the emulator's file
reads) would each get an arena of their own, each keeping up to the trim threshold of freed heap
(the daemon's peak RSS was 446 MiB instead of 196 on a 2 GiB cp).
"""

from __future__ import annotations

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_malloc() -> None:
    """Apply the settings above to this process (nothing where the C library is not glibc)."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): keep the allocator's defaults
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
    mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)
    mallopt(_M_ARENA_MAX, 1)
