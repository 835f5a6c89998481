"""Per-open-file readers over one shared block cache and one shared set of in-flight fetches.

Data flow of ``FileReader.read(offset, size)``:

1. :class:`~.prefetch.AccessPattern` classifies the read and returns a :class:`~.prefetch.Plan`.
2. Prefetch parts beyond the read are *registered and started first*, so they are already on the
   wire while the read itself waits.
3. The blocks the read needs are taken from the cache, or awaited from a fetch already in flight
   (any reader's, demand or prefetch: one GET per block however many readers want it), or fetched
   now as contiguous runs of missing blocks (one ranged request per run; a random read is one run).
4. The bytes are cut out of the blocks: a read inside one fetch's buffer is a view of it (the
   blocks are views of that buffer, :class:`~.block_cache.Part`), a read that spans two fetches is
   joined once.

Fetches are block aligned (``PrefetchConfig.block_size``, 64 KiB by default: a random 64 KiB pread
costs at most two blocks, i.e. amplification ≤ 2). Every fetch reserves its size in the cache before
it starts (see :mod:`.block_cache`); a demand fetch that cannot reserve is served uncached, a
prefetch that cannot reserve is skipped. Each handle's window is additionally capped at
``3/4 × cache_bytes / streaming handles`` so that eight parallel ``cp`` runs share the budget
instead of evicting each other's unread data.

A failed fetch leaves nothing behind: its reservation is released and its blocks are simply absent,
so the next read fetches them again. A reader waiting on someone else's *prefetch* that failed or was
cancelled fetches the blocks itself; one waiting on a failed *demand* fetch gets that error (the
source already retried, so retrying again would double the wait).

Where tasks live: demand fetches run in the caller's task (the FUSE request), so a cancelled
request cancels its fetch. Prefetches run in the ReadManager's own nursery, opened by
``async with ReadManager(...) as manager:`` — each in a cancel scope owned by its handle, so
``FileReader.close()`` cancels that handle's prefetches and ``ReadManager.aclose()`` (or leaving the
``async with``) cancels and waits for all of them. A manager that was never entered still reads
correctly, just without prefetch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Awaitable, Callable

import trio

from ..api.errors import ProtocolError
from ..options import MountOptions
from ..tasks import gather, never_fatal
from .block_cache import BlockCache, Part
from .disk_cache import ContentKey, DiskCache
from .disk_stream import DiskStream
from .prefetch import AccessPattern, Plan, PrefetchConfig, part_size, round_up, split_parts
from .verify import VerifiedReader, plain_md5

log = logging.getLogger(__name__)

Fetch = Callable[[str, int, int], Awaitable[bytes | bytearray]]
# (file_id, start, end, block_size) -> the bytes as block-sized buffers (the last may be shorter)
FetchBlocks = Callable[[str, int, int, int], Awaitable[list]]

# How often a read re-examines its blocks after fetches it waited on did not deliver (each round
# either obtains blocks or raises, so this only bounds pathological races).
_MAX_ROUNDS = 4
# The share of the block cache the streaming handles' prefetch windows may hold together (window_cap).
STREAM_SHARE_NUM, STREAM_SHARE_DEN = 3, 4
DISK_READ_THREADS = 4
DISK_WRITE_THREADS = 2
# Whole-file fetch (ReadManager.fetch_whole; off unless the mount sets whole_file_max): the number
# of parallel parts a file is cut into (chosen when there were 16 connections, docs/performance.md
# "Whole-file fetch"; with 24 the rest serve the reads that wait), and the index files fetched
# whole as soon as they are opened.
WHOLE_FILE_PARTS = 16
INDEX_SUFFIXES = (".bai", ".csi", ".tbi", ".crai", ".fai", ".gzi")
# Indexes also named after their data file's stem (x.bai for x.bam, x.crai for x.cram).
_STEM_INDEX = {".bam": ".bai", ".cram": ".crai"}


def index_names(data_name: str) -> list[str]:
    """The names an index of the file ``data_name`` may have in the same folder: ``x.bam.bai``,
    ``x.bam.csi``, ... and ``x.bai`` for ``x.bam``; [] for an index itself."""
    lower = data_name.lower()
    if lower.endswith(INDEX_SUFFIXES):
        return []
    names = [data_name + suffix for suffix in INDEX_SUFFIXES]
    for data_suffix, index_suffix in _STEM_INDEX.items():
        if lower.endswith(data_suffix) and len(data_name) > len(data_suffix):
            names.append(data_name[: -len(data_suffix)] + index_suffix)
    return names


_NOT_STARTED = RuntimeError("prefetch cancelled before it started")


class _InFlight:
    """One ranged fetch of blocks ``[first, last)``; waiters block on ``done``."""

    __slots__ = ("file_id", "first", "last", "prefetch", "done", "blocks", "error")

    def __init__(self, file_id: str, first: int, last: int, prefetch: bool):
        self.file_id = file_id
        self.first = first
        self.last = last
        self.prefetch = prefetch
        self.done = trio.Event()
        # On success, one entry per block: the very objects put in the cache (no second copy).
        self.blocks: list[bytes | memoryview] | None = None
        self.error: BaseException | None = None

    def block(self, index: int) -> bytes | memoryview:
        assert self.blocks is not None
        return self.blocks[index - self.first]


class ReadManager:
    """One per mount: the block cache, the in-flight table and the prefetch task nursery."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        cache_bytes: int = MountOptions.cache_size,
        prefetch_max: int = MountOptions.prefetch_max,
        max_parallel: int = MountOptions.max_connections,
        config: PrefetchConfig | None = None,
        fetch_blocks: FetchBlocks | None = None,
        whole_file_max: int = 0,
        disk: DiskCache | None = None,
        verify: bool = False,
    ):
        base = config or PrefetchConfig()
        self.config = PrefetchConfig(**{**base.__dict__, "max_window": prefetch_max})
        # Files up to this size are fetched whole (parallel parts, in the background) when read
        # at random or when they are an index; 0 turns that off. More than half the cache could
        # not be held while it is read, so the cap is at most half of it.
        self.whole_file_max = max(0, min(whole_file_max, cache_bytes // 2))
        self._fetch = fetch
        # When the source can deliver block-sized buffers (ContentSource.fetch_blocks), they are
        # cached as they come instead of being cut out of one response buffer with a copy.
        self._fetch_blocks = fetch_blocks
        self.verify = verify  # --verify: whole-file sequential reads are checked against the ETag
        self.cache = BlockCache(cache_bytes)
        # The persistent cache (disk_cache.py), consulted before the network and filled after it.
        # Its blocking calls run in worker threads; writes are bounded in bytes and never waited for.
        self.disk = disk
        # Worker threads reading the content cache, shared by every read of the mount (disk_stream too).
        self.disk_readers = trio.CapacityLimiter(DISK_READ_THREADS)
        self._disk_writer = trio.CapacityLimiter(DISK_WRITE_THREADS)
        self._disk_backlog = 0
        self._inflight: dict[tuple[str, int], _InFlight] = {}
        self._limiter = trio.CapacityLimiter(max(1, max_parallel))
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._scopes: set[trio.CancelScope] = set()  # one per running prefetch, for aclose()
        self._streaming: set[FileReader] = set()
        self._prefetch_tasks = 0
        self._idle = trio.Event()
        self._idle.set()
        self._closed = False
        self._counters = {
            "requests": 0,
            "bytes_fetched": 0,
            "prefetch_requests": 0,
            "prefetch_bytes": 0,
            "uncached_fetches": 0,
            "fetch_errors": 0,
            "inflight_joins": 0,
            "whole_file_fetches": 0,
            "disk_blocks_read": 0,
            "disk_direct_reads": 0,
            "disk_writes_skipped": 0,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> "ReadManager":
        self._stack = contextlib.AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        await self.aclose()
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            return await stack.__aexit__(*exc)
        except BaseExceptionGroup as group:
            # The nursery wraps the body's own exception in a group; hand the caller the original
            # (prefetch tasks never raise, so the group holds nothing else).
            if exc[1] is not None and group.exceptions == (exc[1],):
                return False
            raise

    async def aclose(self) -> None:
        """Cancel every prefetch and wait until none is left running (idempotent)."""
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
        await self._idle.wait()
        self._nursery = None

    def open(self, file_id: str, size: int, name: str = "", version: str | None = None, etag: object = None) -> "FileReader | VerifiedReader":
        """A reader for one open handle; ``name`` lets an index file be fetched whole at once;
        ``version`` (ETag or date) pins its content, and without one the disk cache is not used;
        under --verify, a plain-MD5 ``etag`` makes it a VerifiedReader."""
        if size < 0:
            raise ValueError(f"file {file_id}: negative size {size}")
        reader = FileReader(self, file_id, size, version)
        if name.lower().endswith(INDEX_SUFFIXES):
            # An index is read whole, and soon: htslib reads it right after opening it.
            self.fetch_whole(reader)
        expected = plain_md5(etag) if self.verify and size > 0 else None
        if expected is None:
            return reader
        return VerifiedReader(reader, file_id, size, expected, on_mismatch=self.forget_content)

    def fetch_indexed(self, file_id: str, size: int, version: str | None = None) -> bool:
        """Fetch whole, in the background, a file that has an index beside it, as it is opened.

        An indexed file is read by region (htslib opens it, reads its header, opens the index,
        then seeks), so the parts start at once, while the header and the index are read, rather
        than at the first random read. The same bound as any whole-file fetch (``whole_file_max``)
        applies, and what is in memory already is not fetched again. Not with a disk cache: what it holds of the file is unknown here (the
        file's first random read still starts a whole-file fetch that skips it)."""
        if self.disk is not None:
            return False
        return self.fetch_whole(FileReader(self, file_id, size, version))

    def fetch_whole(self, reader: "FileReader", skip: tuple[int, int] = (0, 0)) -> bool:
        """Fetch a small file entirely in the background; False if it is too big or out of memory.

        The missing blocks are fetched as parallel parts, except ``skip`` (block indices), which
        the caller's read is fetching itself, so the read that is waiting is not queued behind
        the others. The fetch belongs to the mount, not the handle: a process that opens the file,
        reads one region and closes it (samtools, one process per region) leaves it running for the
        next one."""
        size = reader.size
        if not 0 < size <= self.whole_file_max:
            return False
        self._counters["whole_file_fetches"] += 1
        bs = self.config.block_size
        part = max(bs, min(self.config.part_max, round_up(-(-size // WHOLE_FILE_PARTS), bs)))
        blocks = -(-size // bs)
        first_skip, last_skip = skip
        # After the waiting read first (what comes next is the likelier next read), then before it.
        for lo, hi in ((last_skip, blocks), (0, first_skip)):
            for first, last in self._missing_runs(reader.file_id, lo, hi, reader._on_disk):
                for a, b in split_parts(first * bs, min(size, last * bs), part, bs):
                    if not self._start_fetch(reader, a, b, owned=False):
                        return False
        return True

    async def forget_content(self, reader: "FileReader") -> None:
        """Drop a file's cached blocks (memory and disk), so its next read fetches them again."""
        self.cache.discard(lambda key: key[0] == reader.file_id)
        key = reader.disk_key
        if self.disk is not None and key is not None:
            await trio.to_thread.run_sync(self.disk.forget, key)

    @property
    def stats(self) -> dict:
        return {
            **self._counters,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "cache_bytes": self.cache.cached_bytes,
            "reserved_bytes": self.cache.reserved_bytes,
            "peak_cache_bytes": self.cache.peak_bytes,
            "cache_bound": self.cache.capacity,
            "evictions": self.cache.evictions,
            "prefetch_tasks": self._prefetch_tasks,
        }

    # -- window sizing -----------------------------------------------------------------------

    def window_cap(self) -> int:
        # Three quarters of the cache are shared among the handles that stream (one stream: the
        # whole 96 MiB default window in the 128 MiB default cache); the rest keeps re-read data.
        return STREAM_SHARE_NUM * self.cache.capacity // (STREAM_SHARE_DEN * max(1, len(self._streaming)))

    # -- fetching ----------------------------------------------------------------------------

    def _register(self, file_id: str, size: int, first: int, last: int, prefetch: bool) -> tuple[_InFlight, int] | None:
        """Reserve memory for blocks ``[first, last)`` and mark them in flight.

        Returns the fetch and the bytes reserved (0: a demand fetch served uncached), or None for a
        prefetch that does not fit in the cache bound (it is skipped)."""
        bs = self.config.block_size
        nbytes = min(size, last * bs) - first * bs
        reserved = nbytes if self.cache.reserve(nbytes) else 0
        if prefetch and not reserved:
            return None
        flight = _InFlight(file_id, first, last, prefetch)
        for index in range(first, last):
            self._inflight[(file_id, index)] = flight
        return flight, reserved

    async def _run(self, flight: _InFlight, reader: "FileReader", reserved: int) -> None:
        """Perform a registered fetch; always leaves the in-flight table and reservation clean."""
        bs = self.config.block_size
        start, end = flight.first * bs, min(reader.size, flight.last * bs)
        try:
            self._counters["requests"] += 1
            if flight.prefetch:
                self._counters["prefetch_requests"] += 1
            if not reserved:
                self._counters["uncached_fetches"] += 1
            blocks = await self._fetch_as_blocks(reader, start, end)
            self._counters["bytes_fetched"] += end - start
            if flight.prefetch:
                self._counters["prefetch_bytes"] += end - start
            flight.blocks = blocks
            if reserved:
                self._cache_blocks(flight, blocks)
                reserved = 0
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._counters["fetch_errors"] += 1
            flight.error = exc
            raise
        finally:
            self._finish(flight, reserved)

    def _cache_blocks(self, flight: _InFlight, blocks: list) -> None:
        """Put a reserved fetch's blocks in the cache, none copied: each run of consecutive views
        that covers one whole buffer (a GET's body) as a part, any other block on its own (a block
        read from the disk cache)."""
        bs, cache, count = self.config.block_size, self.cache, len(blocks)
        i = 0
        while i < count:
            block = blocks[i]
            j = i + 1
            if type(block) is memoryview:
                buffer = block.obj
                while j < count and type(blocks[j]) is memoryview and blocks[j].obj is buffer:
                    j += 1
                if memoryview(buffer).nbytes == sum(len(b) for b in blocks[i:j]):
                    keys = [(flight.file_id, flight.first + k) for k in range(i, j)]
                    cache.put_part(keys, blocks[i:j], Part(buffer, (flight.first + i) * bs))
                    i = j
                    continue
                j = i + 1
            cache.put_reserved((flight.file_id, flight.first + i), block)
            i = j

    async def _fetch_as_blocks(self, reader: "FileReader", start: int, end: int) -> list:
        """Bytes ``[start, end)`` as block-sized pieces: from the disk cache, else the network."""
        key = reader.disk_key
        if self.disk is None or key is None:
            return await self._network_blocks(reader.file_id, start, end)
        bs = self.config.block_size
        first = start // bs
        blocks = await trio.to_thread.run_sync(self.disk.read, key, first, -(-end // bs), limiter=self.disk_readers)
        self._counters["disk_blocks_read"] += sum(block is not None for block in blocks)
        missing = [i for i, block in enumerate(blocks) if block is None]
        runs: list[list[int]] = []
        for i in missing:
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])

        async def fill(a: int, b: int) -> None:
            got = await self._network_blocks(reader.file_id, start + a * bs, min(end, start + b * bs))
            blocks[a:b] = got
            self._store(key, first + a, got)

        await gather([functools.partial(fill, a, b) for a, b in runs])
        return blocks

    async def blocks_on_disk(self, reader: "FileReader") -> bytearray | None:
        """Which blocks of the reader's file the disk cache holds (a snapshot); None without one."""
        key = reader.disk_key
        if self.disk is None or key is None:
            return None
        return await trio.to_thread.run_sync(self.disk.blocks_present, key, limiter=self.disk_readers)

    async def read_disk_run(self, reader: "FileReader", first: int, last: int) -> bytes | None:
        """Blocks ``[first, last)`` straight from the disk cache as one verified buffer (or None)."""
        key = reader.disk_key
        assert self.disk is not None and key is not None
        data = await trio.to_thread.run_sync(self.disk.read_run, key, first, last, limiter=self.disk_readers)
        if data is not None:
            self.count_disk_run(last - first)
        return data

    def count_disk_run(self, blocks: int) -> None:
        """Count one verified run of ``blocks`` blocks read from the disk cache."""
        self._counters["disk_direct_reads"] += 1
        self._counters["disk_blocks_read"] += blocks

    def in_memory(self, file_id: str, first: int, last: int) -> bool:
        return all((file_id, index) in self.cache for index in range(first, last))

    def _store(self, key: ContentKey, first: int, blocks: list) -> None:
        """Write fetched blocks to the disk cache in the background (skipped when it lags behind)."""
        disk = self.disk
        if disk is None:
            return
        nbytes = sum(len(block) for block in blocks)
        # At most a block cache's worth waits (the blocks waiting are mostly ones the cache still
        # holds: a stream's window is 3/4 of it). A fixed 64 MiB left 3-6 % of a 600 MB/s wan
        # first read unwritten once one stream had 24 parts in flight (docs/performance.md).
        if self._nursery is None or self._closed or self._disk_backlog + nbytes > self.cache.capacity:
            self._counters["disk_writes_skipped"] += 1
            return
        self._disk_backlog += nbytes

        async def write() -> None:
            try:
                with never_fatal(log, "content cache write failed"):  # the cache logs its own failures: this is a bug
                    await trio.to_thread.run_sync(disk.write, key, first, blocks, limiter=self._disk_writer)
            finally:
                self._disk_backlog -= nbytes

        self._nursery.start_soon(write)

    async def _network_blocks(self, file_id: str, start: int, end: int) -> list:
        """Bytes ``[start, end)`` from the source as block-sized pieces, their lengths checked.

        The pieces are views of the one buffer the bytes were received in (no copy); the cache
        keeps that buffer as a part, counted whole until its last block goes (block_cache.py)."""
        bs = self.config.block_size
        expected = [min(bs, end - o) for o in range(start, end, bs)]
        if self._fetch_blocks is not None:
            blocks = await self._fetch_blocks(file_id, start, end, bs)
        else:
            data = await self._fetch(file_id, start, end)
            if len(data) != end - start:
                raise ProtocolError(f"file {file_id}: asked for {end - start} bytes at {start}, got {len(data)}")
            view = memoryview(data)
            blocks = [view[o : o + bs] for o in range(0, len(data), bs)]
        if [len(block) for block in blocks] != expected:
            # The source contract is exact bytes; never hand a wrong length to a reader.
            raise ProtocolError(f"file {file_id}: the {end - start} bytes at {start} came back cut wrong")
        return blocks

    def _finish(self, flight: _InFlight, reserved: int) -> None:
        """Release what a fetch still holds and wake its waiters (success, failure or cancel)."""
        self.cache.release(reserved)
        for index in range(flight.first, flight.last):
            if self._inflight.get((flight.file_id, index)) is flight:
                del self._inflight[(flight.file_id, index)]
        flight.done.set()

    def _missing_runs(self, file_id: str, first: int, last: int, on_disk: bytearray | None = None) -> list[tuple[int, int]]:
        """Maximal runs of blocks in ``[first, last)`` neither cached nor in flight (nor, given
        ``on_disk``, on the disk cache, from which the reads take them themselves)."""
        runs: list[tuple[int, int]] = []
        run_start = None
        for index in range(first, last):
            key = (file_id, index)
            absent = key not in self.cache and key not in self._inflight and not (on_disk and index < len(on_disk) and on_disk[index])
            if absent and run_start is None:
                run_start = index
            elif not absent and run_start is not None:
                runs.append((run_start, index))
                run_start = None
        if run_start is not None:
            runs.append((run_start, last))
        return runs

    def _start_fetch(self, reader: "FileReader", start: int, end: int, *, owned: bool = True) -> bool:
        """Start background fetches for the missing blocks of ``[start, end)``; False if out of memory.

        ``owned``: the handle's close() cancels them (a stream's prefetch); otherwise only the
        mount's shutdown does (a whole-file fetch)."""
        if self._nursery is None or self._closed:
            return False
        bs = self.config.block_size
        for first, last in self._missing_runs(reader.file_id, start // bs, -(-end // bs), reader._on_disk):
            registered = self._register(reader.file_id, reader.size, first, last, prefetch=True)
            if registered is None:
                return False  # no room: the reader's demand reads will fetch what it needs
            flight, nbytes = registered
            self.background(reader, functools.partial(self._prefetch, reader, flight, nbytes), owned=owned)
        return True

    def background(self, reader: "FileReader", job: Callable[[], Awaitable[None]], *, owned: bool = True) -> bool:
        """Run ``job`` in the mount's nursery, cancelled by the handle's close() if ``owned`` and by
        the mount's shutdown in any case; False (not started) when there is no nursery, or when
        the handle is closed already and the job is its own (nothing would ever cancel it)."""
        if self._nursery is None or self._closed or (owned and reader._closed):
            return False
        scope = trio.CancelScope()
        if owned:
            reader._scopes.add(scope)
        self._scopes.add(scope)
        self._prefetch_tasks += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._nursery.start_soon(self._background_task, reader, job, scope)
        return True

    async def _background_task(self, reader: "FileReader", job: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        try:
            # background work is never fatal: the reads do it themselves
            with never_fatal(log, "background read of %s failed", reader.file_id, level=logging.DEBUG), scope:
                await job()
        finally:
            reader._scopes.discard(scope)
            self._scopes.discard(scope)
            self._prefetch_tasks -= 1
            if self._prefetch_tasks == 0:
                self._idle.set()

    async def _prefetch(self, reader: "FileReader", flight: _InFlight, reserved: int) -> None:
        try:
            async with self._limiter:
                await self._run(flight, reader, reserved)
        except Exception as exc:  # a background task: never fatal (and told to the reader)
            # The blocks stay absent and the next read fetches them itself.
            log.debug("prefetch of %s blocks %d-%d failed: %s", flight.file_id, flight.first, flight.last, exc)
            reader._prefetch_failed(flight.first * self.config.block_size)
        finally:
            if not flight.done.is_set():  # cancelled before _run started: undo its registration
                flight.error = _NOT_STARTED
                self._finish(flight, reserved)

    async def get_blocks(self, reader: "FileReader", first: int, need: int, want: int) -> dict[int, memoryview | bytes]:
        """Blocks ``[first, need)`` (all required) plus any of ``[need, want)`` that come along.

        ``[need, want)`` is the random-mode widening: those blocks are fetched only as an extension
        of a run that is fetched anyway, so widening never costs an extra request."""
        got: dict[int, memoryview | bytes] = {}
        file_id = reader.file_id
        for round_ in range(_MAX_ROUNDS):
            force = round_ == _MAX_ROUNDS - 1  # pathological churn: stop joining, fetch directly
            waits: list[_InFlight] = []
            runs: list[list[int]] = []
            for index in range(first, want):
                if index in got:
                    continue
                key = (file_id, index)
                block = self.cache.get(key, count=round_ == 0)
                if block is not None:
                    got[index] = block
                    continue
                flight = None if force else self._inflight.get(key)
                if flight is not None:
                    if index < need and flight not in waits:
                        waits.append(flight)
                    continue
                if runs and runs[-1][1] == index:
                    runs[-1][1] = index + 1  # extend the current run of absent blocks
                elif index < need:
                    runs.append([index, index + 1])
                if index >= need and (not runs or runs[-1][1] != index + 1):
                    break
            if not runs and not waits:
                break
            self._counters["inflight_joins"] += len(waits)
            jobs = [self._own_fetch_job(reader, a, b, got, force) for a, b in runs]
            jobs += [self._wait_job(flight, got) for flight in waits]
            await gather(jobs)
        missing = [i for i in range(first, need) if i not in got]
        if missing:
            raise ProtocolError(f"file {file_id}: block {missing[0]} could not be obtained")
        return got

    def _own_fetch_job(self, reader: "FileReader", first: int, last: int, got: dict, force: bool) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if not force and any((reader.file_id, i) in self._inflight for i in range(first, last)):
                # Someone registered these blocks meanwhile (tasks start after a checkpoint):
                # leave them to the next round, which joins that fetch instead of duplicating it.
                return
            registered = self._register(reader.file_id, reader.size, first, last, prefetch=False)
            assert registered is not None  # demand fetches always register, cached or not
            flight, reserved = registered
            await self._run(flight, reader, reserved)
            for index in range(first, last):
                got[index] = flight.block(index)

        return job

    def _wait_job(self, flight: _InFlight, got: dict) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            await flight.done.wait()
            if flight.blocks is not None:
                for index in range(flight.first, flight.last):
                    got.setdefault(index, flight.block(index))
            elif not flight.prefetch and isinstance(flight.error, Exception):
                raise flight.error
            # A failed or cancelled prefetch: the next round fetches these blocks ourselves.

        return job


class FileReader:
    """One open handle: its access pattern, its prefetch frontier and its prefetch cancel scopes."""

    def __init__(self, manager: ReadManager, file_id: str, size: int, version: str | None = None):
        self.manager = manager
        self.file_id = file_id
        self.size = size
        self.version = version
        self.pattern = AccessPattern(size, manager.config)
        self._prefetched_upto = 0  # prefetch has been issued for [.., _prefetched_upto) of the stream
        self._scopes: set[trio.CancelScope] = set()
        self._closed = False
        self._whole_requested = False  # a whole-file fetch was asked for by this handle
        # Blocks the disk cache held when this handle first read (1 per block); None: not loaded
        # yet, or no disk cache. Reads whose blocks are all there skip the memory cache and the
        # prefetch: one preadv of the cache file per read, handed to the kernel as is.
        self._on_disk: bytearray | None = None
        self._on_disk_loaded = False
        self._disk_stream: DiskStream | None = None

    @property
    def disk_key(self) -> ContentKey | None:
        """The file's key in the persistent content cache; None without a version to key it by
        (content that might change under the same id is never cached)."""
        return None if self.version is None else ContentKey(self.file_id, self.version, self.size)

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        if offset < 0 or size < 0:
            raise ValueError("read offset and size must be >= 0")
        if self._closed:
            raise ValueError(f"file {self.file_id}: read after close")
        if size == 0 or offset >= self.size:
            return b""
        end = min(self.size, offset + size)
        manager = self.manager
        bs = manager.config.block_size
        if not self._on_disk_loaded:
            self._on_disk_loaded = True
            self._on_disk = await manager.blocks_on_disk(self)
        # Closed while that first look at the disk cache waited (a concurrent read of a
        # concatenation closes the readers of its earlier parts): this read is answered alone,
        # and nothing is started that only close() would have stopped (a stream's place in the
        # prefetch budget, its prefetch, a DiskStream's chunks and their reserved memory).
        live = not self._closed
        plan = self.pattern.observe(offset, size, window_cap=manager.window_cap())
        if live and self.pattern.window > 0:
            manager._streaming.add(self)
        else:
            manager._streaming.discard(self)
        first, need = offset // bs, -(-end // bs)
        # All of this read on the disk cache (and not already in memory): disk_stream.py.
        direct = live and self.all_on_disk(first, need) and not manager.in_memory(self.file_id, first, need)
        ahead = (plan.demand_end // bs, -(-plan.prefetch_end // bs))
        if live and plan.prefetch_end > plan.demand_end and not (direct and self.all_on_disk(*ahead)):
            self._schedule_prefetch(offset, plan)
        if direct:
            if self._disk_stream is None:
                self._disk_stream = DiskStream(manager, self)
            data = await self._disk_stream.read(offset, end, plan.sequential)
            if data is not None:
                return data
            self.not_on_disk(first, need)  # not (or no longer) usable: the ordinary path
        want = max(need, -(-plan.demand_end // bs))
        if live and not plan.sequential and not self._whole_requested:
            # A random read of a small file: the rest of it is likely to follow (a BAM's regions,
            # a FASTA's records), so fetch it all now in parallel instead of one round trip a read.
            self._whole_requested = True
            manager.fetch_whole(self, skip=(first, want))
        blocks = await manager.get_blocks(self, first, need, want)
        data = self._assemble(blocks, offset, end, first, need)
        if len(data) != end - offset:  # a short block would mean a bug upstream; never return it
            raise ProtocolError(f"file {self.file_id}: assembled {len(data)} bytes, expected {end - offset}")
        if plan.sequential:
            # Consumed stream data goes to the cold end: unread prefetched data must outlive it.
            for index in range(first, end // bs):
                manager.cache.demote((self.file_id, index))
        return data

    def _assemble(self, blocks: dict, offset: int, end: int, first: int, need: int) -> bytes | memoryview:
        """The bytes ``[offset, end)`` from ``blocks`` ``[first, need)``, copied only if they must be.

        Within one block (small reads: htslib's, random preads), or within one part's buffer
        (a 1 MiB kernel read of a stream: 16 blocks of one 4 MiB fetch), the answer is a view and
        the kernel copies it straight from the buffer it was received in. The bytes of a cached
        block are never written again. Across parts, one join."""
        bs = self.manager.config.block_size
        if need - first > 1:
            cache = self.manager.cache
            part = cache.part_of((self.file_id, first))
            if part is not None and part is cache.part_of((self.file_id, need - 1)):
                # A part is one contiguous fetch, so the blocks between are in its buffer too.
                return memoryview(part.data)[offset - part.start : end - part.start]
        pieces = []
        for index in range(first, need):
            block = blocks[index]
            # A view: slicing a bytearray block would copy it before the join copies it again.
            pieces.append(memoryview(block)[max(offset - index * bs, 0) : min(end - index * bs, len(block))])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def all_on_disk(self, first: int, last: int) -> bool:
        """Whether blocks ``[first, last)`` are all in the content cache, by this handle's snapshot
        of its records (taken at the first read)."""
        return self._on_disk is not None and first < last and self._on_disk.find(0, first, last) == -1

    def not_on_disk(self, first: int, last: int) -> None:
        """Mark blocks ``[first, last)`` absent from the snapshot (found missing or corrupt), so
        their reads take the ordinary path."""
        if self._on_disk is not None:
            self._on_disk[first:last] = bytes(len(self._on_disk[first:last]))

    def _schedule_prefetch(self, offset: int, plan: Plan) -> None:
        manager = self.manager
        bs = manager.config.block_size
        start = round_up(plan.demand_end, bs)
        # Continue the stream's frontier unless the reader has left it (seek or overtaking).
        if start <= self._prefetched_upto <= plan.prefetch_end + manager.config.part_max:
            start = self._prefetched_upto
        if start >= plan.prefetch_end or start >= self.size:
            return
        part = part_size(self.pattern.window, manager.config)
        stop = plan.prefetch_end
        if stop < self.size:
            # Issue whole parts only: a dribble of one block per read would be many tiny GETs.
            stop = start + (stop - start) // part * part
        for a, b in split_parts(start, stop, part, bs):
            if not manager._start_fetch(self, a, b):
                break
            self._prefetched_upto = b

    def stream_window(self) -> int:
        """The prefetch window of this handle's live sequential stream (0: not streaming)."""
        return self.pattern.window

    def continue_stream(self, nbytes: int, window: int) -> None:
        """This file continues another handle's sequential stream (the next part of a
        concatenation, read/concat.py): prefetch its first ``nbytes`` now and start its window at
        ``window``, so the stream neither stalls at the boundary nor ramps up again."""
        if self._closed or nbytes <= 0 or self.pattern.last_end is not None:
            return  # already being read: its own access pattern drives its prefetch
        manager = self.manager
        self.pattern.window = min(max(self.pattern.window, window), manager.config.max_window, manager.window_cap())
        end = min(self.size, nbytes)
        self._schedule_prefetch(0, Plan(True, 0, end))

    def _prefetch_failed(self, start: int) -> None:
        # Pull the frontier back so the next sequential read re-issues the failed part.
        self._prefetched_upto = min(self._prefetched_upto, start)

    async def close(self) -> None:
        """Cancel this handle's outstanding prefetches (their blocks are released, not cached)."""
        self._closed = True
        self.manager._streaming.discard(self)
        if self._disk_stream is not None:
            self._disk_stream.close()
        for scope in list(self._scopes):
            scope.cancel()
        await trio.lowlevel.checkpoint()
