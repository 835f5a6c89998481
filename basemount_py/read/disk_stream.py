"""Reads of a file the persistent content cache holds: large verified chunks, replies as views.

A read whose blocks are all on the disk cache (by the handle's snapshot of the cache's records,
``DiskCache.blocks_present``) does not go through the memory block cache, the prefetch or the
network at all:

* **bytes already in the page cache** are read and checked on the trio thread at once
  (``DiskCache.read_run_in_memory``: ``RWF_NOWAIT`` reads, which fail rather than wait on the
  disk). On a re-read the kernel's own readahead on the cache file has read most of them in by the
  time the kernel asks for them: one copy and no hand-off between threads. Each hand-off (waking
  the worker, and getting the GIL back from the FUSE thread, which holds it while it copies each
  1 MiB reply) took up to 9 ms. A re-read served by chunks alone reached
  a median 0.72× the minimal daemon that serves a local file, with these reads 0.91×, at 0.77×
  the daemon CPU (docs/performance.md, "Eighth round").
* **when the disk is behind** (a read would wait), sequential reads are served from chunks of
  ``CHUNK_BLOCKS`` blocks (4 MiB), each read with
  one ``pread`` into one buffer and checked block by block (``DiskCache.read_run``) in a worker
  thread, ``CHUNKS_AHEAD`` chunks ahead of the reader. Most FUSE reads then find their chunk
  already read and are answered on the trio thread at once, with a ``memoryview`` of the chunk: no
  thread hop and no copy in the daemon between the cache file and the kernel. The kernel's own
  readahead keeps only a few requests in flight, so without reading ahead each request waited for
  a disk read and a trip through a worker thread.
* **one worker thread reads a stream's chunks in order** (the *pump*): the trio thread queues the
  chunks it wants, and one ``trio.to_thread`` call reads them one after the other and hands each
  over with ``run_sync_soon`` as soon as it is checked, without waiting for the trio thread to
  start the next one. Each chunk in its own ``trio.to_thread`` call, in up to 4 threads at once,
  was slower twice over (docs/performance.md, "Fifth round"): the cold cache file, read by several
  threads at once, came off the disk at 570-1,000 MB/s against 1,500-1,800 for one sequential
  reader here, and each chunk waited 1-17 ms for a worker to be woken and to get the GIL while the
  trio thread answered the kernel.
* **other reads** are one ``read_run`` of exactly their blocks.

Chunks hold memory reserved in the mount's block cache bound (so ``--cache-size`` still bounds
the daemon's memory); a chunk that cannot be reserved is not read ahead. A chunk that comes back
None (a block absent or failing its checksum: the cache drops it) makes the reads of that chunk
take the ordinary path, which fetches what is missing from the network.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .reader import FileReader, ReadManager

CHUNK_BLOCKS = 64  # blocks per chunk: 4 MiB with 64 KiB blocks
CHUNKS_AHEAD = 6  # chunks read ahead of a sequential reader (beyond the one it is in)
# Chunks kept behind the one a sequential read is in, until they are read to the end. The
# kernel's readahead requests reach the daemon out of order: in a 512 MiB re-read, 1 read in 6
# came 4 to 15 MiB behind the furthest one so far. Keeping one chunk behind (as before) dropped
# theirs, which were read from disk again, queued behind the chunks ahead (131 chunk reads
# instead of 153 for the file's 128, docs/performance.md "Eighth round").
CHUNKS_KEPT_BEHIND = 4
PUMP_BATCH = CHUNKS_AHEAD + 1  # chunks one worker-thread call reads before it lets other streams' reads in


class _Chunk:
    __slots__ = ("done", "data", "reserved", "dropped", "served")

    def __init__(self, reserved: int):
        self.done = trio.Event()
        self.data: bytes | None = None
        self.reserved = reserved  # bytes of the block cache's bound it holds
        self.dropped = False  # forgotten while being read: the read releases the reservation
        self.served = 0  # bytes of it answered so far: all of them, and it is forgotten


class DiskStream:
    """The chunks of one handle (see module docstring)."""

    def __init__(self, manager: "ReadManager", reader: "FileReader"):
        self.manager = manager
        self.reader = reader
        self._chunks: dict[int, _Chunk] = {}
        self._read_through: set[int] = set()  # chunks whose every byte was answered
        self._queue: deque[tuple[int, _Chunk, int, int]] = deque()  # started, not yet taken by a thread
        self._pumping = False  # a _pump task is running
        bs = manager.config.block_size
        self._blocks = -(-reader.size // bs)

    def _chunk_blocks(self, index: int) -> tuple[int, int]:
        first = index * CHUNK_BLOCKS
        return first, min(self._blocks, first + CHUNK_BLOCKS)

    def _start(self, index: int) -> _Chunk | None:
        """Start reading chunk ``index`` in the background (if it is on disk and fits in memory)."""
        chunk = self._chunks.get(index)
        if chunk is not None:
            return chunk
        first, last = self._chunk_blocks(index)
        if first >= last or not self.reader.all_on_disk(first, last):
            return None
        manager = self.manager
        nbytes = min(self.reader.size, last * manager.config.block_size) - first * manager.config.block_size
        if not manager.cache.reserve(nbytes):
            return None
        if not self._pumping:
            if not manager.background(self.reader, self._pump):
                manager.cache.release(nbytes)
                return None
            self._pumping = True
        self._read_through.discard(index)
        chunk = self._chunks[index] = _Chunk(nbytes)
        self._queue.append((index, chunk, first, last))
        return chunk

    async def _pump(self) -> None:
        """Read the queued chunks in worker threads, one thread call after another, until none is left."""
        token = trio.lowlevel.current_trio_token()
        try:
            while self._queue:
                await trio.to_thread.run_sync(self._read_queued, token, limiter=self.manager.disk_readers)
        finally:
            self._pumping = False
            self._unqueue()  # cancelled (the handle's close, the mount's shutdown): never read

    def _unqueue(self) -> None:
        """Forget the chunks no thread has taken yet (their reads, if any, read their own blocks)."""
        while True:
            try:
                index, chunk, _, _ = self._queue.popleft()  # a worker thread may take one meanwhile
            except IndexError:
                return
            if self._chunks.get(index) is chunk:
                del self._chunks[index]
            chunk.dropped = True
            self._deliver(chunk, 0, None)

    def _read_queued(self, token: trio.lowlevel.TrioToken) -> None:
        """In a worker thread: read up to ``PUMP_BATCH`` queued chunks in order, handing each to the
        trio thread as soon as it is read (``deque.popleft`` is atomic; the trio thread only appends
        or clears)."""
        disk, key = self.manager.disk, self.reader.disk_key
        assert disk is not None and key is not None
        for _ in range(PUMP_BATCH):
            try:
                _, chunk, first, last = self._queue.popleft()
            except IndexError:
                return
            data = None
            try:
                if not chunk.dropped:  # a stale answer only costs a read: _deliver releases it
                    data = disk.read_run(key, first, last)
            finally:
                token.run_sync_soon(self._deliver, chunk, last - first, data)

    def _deliver(self, chunk: _Chunk, blocks: int, data: bytes | None) -> None:
        """On the trio thread: a chunk's read is over (``data`` None: absent, corrupt or not read)."""
        if data is not None:
            self.manager.count_disk_run(blocks)
        if chunk.dropped:
            self.manager.cache.release(chunk.reserved)  # forgotten while queued or being read
        else:
            chunk.data = data
        chunk.done.set()

    async def read(self, offset: int, end: int, sequential: bool) -> bytes | memoryview | None:
        """Bytes ``[offset, end)`` from the disk cache, or None: take the ordinary path."""
        manager = self.manager
        bs = manager.config.block_size
        first, need = offset // bs, -(-end // bs)
        span = CHUNK_BLOCKS * bs
        c0, c1 = first // CHUNK_BLOCKS, (need - 1) // CHUNK_BLOCKS
        if sequential:
            self._forget_before(c0 - CHUNKS_KEPT_BEHIND)
        if not all(index in self._chunks for index in range(c0, c1 + 1)):
            # Not read ahead here: the bytes are likely in the page cache already (the kernel's
            # readahead on the cache file), and then they are read and checked on the spot.
            key = self.reader.disk_key
            assert manager.disk is not None and key is not None
            run: bytes | bytearray | None = manager.disk.read_run_in_memory(key, first, need)
            if run is not None:
                manager.count_disk_run(need - first)
                return memoryview(run)[offset - first * bs : end - first * bs]
            if sequential:  # the disk is behind the reader: read ahead of it in a worker thread
                for index in range(c0, c1 + 1 + CHUNKS_AHEAD):
                    if index > c1 and index in self._read_through:
                        continue  # read to the end already: not again ahead of a straggler
                    self._start(index)
        chunks = [self._chunks.get(index) for index in range(c0, c1 + 1)]
        pieces = []
        for index, chunk in zip(range(c0, c1 + 1), chunks, strict=True):
            if chunk is None:
                break
            await chunk.done.wait()
            if chunk.data is None:
                if chunk.dropped:
                    break  # forgotten meanwhile (the reader moved on): read this one exactly
                self._drop(index)
                first_block, last_block = self._chunk_blocks(index)
                self.reader.not_on_disk(first_block, last_block)  # its other reads too
                return None  # absent or corrupt on disk
            lo = max(offset - index * span, 0)
            hi = min(end - index * span, len(chunk.data))
            pieces.append(memoryview(chunk.data)[lo:hi])
            chunk.served += hi - lo
            if chunk.served >= len(chunk.data) and self._chunks.get(index) is chunk:
                self._drop(index)  # read to the end: its memory goes back now (the view keeps the bytes)
                self._read_through.add(index)
        else:
            # One chunk (the usual case for the kernel's 1 MiB reads): a view of it, no copy.
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        # Not read ahead (a random read, or no room in memory): exactly this read's blocks, once.
        run = await manager.read_disk_run(self.reader, first, need)
        return None if run is None else memoryview(run)[offset - first * bs : end - first * bs]

    def _forget_before(self, index: int) -> None:
        for old in [i for i in self._chunks if i < index]:
            self._drop(old)
        self._read_through = {i for i in self._read_through if i >= index}  # bounded by the window

    def _drop(self, index: int) -> None:
        chunk = self._chunks.pop(index, None)
        if chunk is None:
            return
        if chunk.done.is_set():
            chunk.data = None
            self.manager.cache.release(chunk.reserved)
        else:
            chunk.dropped = True  # queued or being read: _deliver releases the reservation

    def close(self) -> None:
        self._unqueue()
        for index in list(self._chunks):
            self._drop(index)
