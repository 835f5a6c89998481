#!/usr/bin/env python3
"""A null pyfuse3 file system: the ceiling of any Python FUSE daemon on this machine.

``null_fuse.py MOUNTPOINT SIZE`` serves one file, ``/null.bin`` of SIZE bytes, from one
preallocated 1 MiB buffer (no network, no disk, no copy in the daemon: each reply is a view of
it), through the same kernel settings as a basemount_py mount (the page cache with
``keep_cache``, and as root a 4 MiB readahead set once the kernel applied FUSE_INIT). A cold
``cp`` of it measures what the kernel, pyfuse3 and trio cost per byte here, without any work of
ours: ``scripts/bench`` puts it beside the second-mount re-read. SIGTERM or SIGINT unmounts.

``null_fuse.py MOUNTPOINT SIZE FILE`` serves the first SIZE bytes of FILE instead, each read one
``os.pread`` of FILE on the trio thread: the least a daemon that serves bytes from a local file
does (one copy out of the file's page cache; no checksum, no worker threads, no read-ahead of its
own beyond the kernel's on FILE; the C library's allocator tuned as in the daemon). Beside the
re-read it is the ceiling of a pyfuse3 daemon that must read a disk, where the null one is that
of any daemon at all.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys

import pyfuse3
import trio

from basemount_py.malloc import tune_malloc

NAME = b"null.bin"
BUFFER = os.urandom(1 << 20)
USAGE = "usage: null_fuse.py MOUNTPOINT SIZE [FILE]"


class NullOperations(pyfuse3.Operations):
    def __init__(self, size: int, source: int | None = None):
        super().__init__()
        self.size = size
        self.source = source  # a file descriptor to serve the bytes of, or None: from memory
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    async def getattr(self, inode: int, ctx=None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_size = stat.S_IFDIR | 0o755, 0
        else:
            a.st_mode, a.st_size = stat.S_IFREG | 0o444, self.size
        a.st_blksize = 128 * 1024
        a.attr_timeout = a.entry_timeout = 300
        return a

    async def lookup(self, parent_inode: int, name: bytes, ctx=None) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(pyfuse3.ROOT_INODE + 1)

    async def open(self, inode: int, flags: int, ctx) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        size = max(0, min(size, self.size - off))
        if self.source is not None:
            return os.pread(self.source, size, off)  # blocks the loop: on purpose, the least work
        return memoryview(BUFFER)[: min(size, len(BUFFER))]


async def _tune_after_init(ops: NullOperations, mountpoint: str) -> None:
    await ops.initialized.wait()
    if os.geteuid() == 0:
        await trio.to_thread.run_sync(_set_readahead, mountpoint)


def _set_readahead(mountpoint: str) -> None:
    with open("/proc/self/mountinfo") as f:
        device = next(line.split()[2] for line in f if line.split()[4] == mountpoint)
    with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
        f.write("4096")


async def _main(mountpoint: str, size: int, source: int | None) -> None:
    ops = NullOperations(size, source)
    pyfuse3.init(ops, mountpoint, set(pyfuse3.default_options) | {"fsname=null_fuse"})
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_tune_after_init, ops, mountpoint)

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        pyfuse3.terminate()
                        return

            nursery.start_soon(stop_on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(USAGE)
    # The C library's allocator as our daemon has it (basemount_py/malloc.py): left to glibc's
    # defaults, each 1 MiB pread got fresh pages from mmap(), and their first touch cost the
    # file-serving mode about a third of its speed (median 931 against 1,371 MB/s, 10 rounds;
    # docs/performance.md "Ninth round"), which made that ceiling too low.
    tune_malloc()
    source = os.open(sys.argv[3], os.O_RDONLY) if len(sys.argv) == 4 else None
    trio.run(_main, os.path.abspath(sys.argv[1]), int(sys.argv[2]), source)
