"""The persistent content cache (basemount_py/read/disk_cache.py).

In-process: blocks round-trip exactly, a corrupt block or record is never returned, a changed
ETag or size is another key, the bound evicts the least recently used files, a full disk falls back.
Through real mounts: a second mount re-reads from disk (no content request), a corrupt block is
refetched, an ETag change is never served stale, two mounts share one cache directory at once, and
an unwritable or full cache directory leaves reads exact (network only), with a log line that says so.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import random
import subprocess
import threading
import time

import pytest
import trio
import trio.testing

from basemount_py.emulator.control import EmulatorProcess
from basemount_py.read import ReadManager
from basemount_py.read.checksum import LAYOUT, block_checksum, first_mismatch
from basemount_py.read.disk_cache import ContentKey, DiskCache
from conftest import sha256_file, write_file

KiB, MiB = 1024, 1024 * 1024
BS = 64 * KiB


def blocks_of(data: bytes, first: int, last: int) -> list[bytes]:
    return [data[i * BS : (i + 1) * BS] for i in range(first, last)]


def test_blocks_round_trip_and_absent_blocks_are_none(tmp_path):
    data = random.Random(1).randbytes(10 * BS + 100)
    key = ContentKey("f1", "etag:a", len(data))
    cache = DiskCache.open(tmp_path, 1 << 30, BS)
    assert cache.read(key, 0, 11) == [None] * 11
    assert cache.write(key, 2, blocks_of(data, 2, 5))
    assert cache.write(key, 10, blocks_of(data, 10, 11))  # the short last block
    got = cache.read(key, 0, 11)
    assert [g is not None for g in got] == [False, False, True, True, True] + [False] * 5 + [True]
    assert b"".join(bytes(g) for g in got[2:5]) == data[2 * BS : 5 * BS]
    assert bytes(got[10]) == data[10 * BS :]
    cache.close()
    # Another instance (another mount) over the same directory sees the same blocks.
    again = DiskCache.open(tmp_path, 1 << 30, BS)
    assert bytes(again.read(key, 3, 4)[0]) == data[3 * BS : 4 * BS]
    # A changed ETag or size is a different key: nothing is served for it.
    assert again.read(ContentKey("f1", "etag:b", len(data)), 2, 5) == [None] * 3
    assert again.read(ContentKey("f1", "etag:a", len(data) + 1), 2, 5) == [None] * 3


def test_a_corrupt_block_or_record_is_dropped_never_returned(tmp_path):
    data = random.Random(2).randbytes(4 * BS)
    key = ContentKey("f2", "etag:x", len(data))
    cache = DiskCache.open(tmp_path, 1 << 30, BS)
    cache.write(key, 0, blocks_of(data, 0, 4))
    cache.close()
    (data_file,) = glob.glob(str(tmp_path / LAYOUT / "*" / "*.data"))
    (records,) = glob.glob(str(tmp_path / LAYOUT / "*" / "*.idx"))
    with open(data_file, "r+b") as f:  # flip one byte of block 1
        f.seek(BS + 777)
        byte = f.read(1)
        f.seek(BS + 777)
        f.write(bytes([byte[0] ^ 0xFF]))
    with open(records, "r+b") as f:  # a record claiming a wrong length for block 3
        f.seek(3 * 8)
        f.write(b"\x01\x00\x00\x00\x00\x00\x00\x00")
    cache = DiskCache.open(tmp_path, 1 << 30, BS)
    got = cache.read(key, 0, 4)
    assert got[1] is None and got[3] is None
    assert bytes(got[0]) == data[:BS] and bytes(got[2]) == data[2 * BS : 3 * BS]
    assert cache.stats["corrupt"] == 1
    # The dropped block stays dropped until it is written again, then reads back exactly.
    assert cache.read(key, 1, 2) == [None]
    cache.write(key, 1, blocks_of(data, 1, 2))
    assert bytes(cache.read(key, 1, 2)[0]) == data[BS : 2 * BS]


def test_the_bound_evicts_the_least_recently_used_files(tmp_path):
    cache = DiskCache.open(tmp_path, 1 * MiB, BS)
    files = {f"f{i}": random.Random(i).randbytes(4 * BS) for i in range(6)}  # 256 KiB each
    keys = {name: ContentKey(name, "etag:1", len(data)) for name, data in files.items()}
    for name in ("f0", "f1", "f2"):
        assert cache.write(keys[name], 0, blocks_of(files[name], 0, 4))
        time.sleep(0.01)  # distinct last-use times (ordering only, nothing is timed)
    cache._touch(keys["f0"], cache._pair(keys["f0"], create=False))  # f0 used again: f1 is now the coldest
    for name in ("f3", "f4"):
        assert cache.write(keys[name], 0, blocks_of(files[name], 0, 4))
    used = sum(os.stat(p).st_blocks * 512 for p in glob.glob(str(tmp_path / LAYOUT / "*" / "*")))
    assert used <= 1 * MiB
    assert cache.read(keys["f1"], 0, 1) == [None]  # evicted first
    assert bytes(cache.read(keys["f0"], 0, 1)[0]) == files["f0"][:BS]
    assert bytes(cache.read(keys["f4"], 3, 4)[0]) == files["f4"][3 * BS :]
    # A write larger than the whole bound is refused, not half stored.
    big = random.Random(9).randbytes(20 * BS)
    assert not cache.write(ContentKey("big", "etag:1", len(big)), 0, blocks_of(big, 0, 20))


def test_a_run_of_blocks_reads_back_as_one_verified_buffer(tmp_path):
    data = random.Random(3).randbytes(10 * BS + 100)
    key = ContentKey("f3", "etag:r", len(data))
    cache = DiskCache.open(tmp_path, 1 << 30, BS)
    assert cache.blocks_present(key) == bytearray(11)
    cache.write(key, 0, blocks_of(data, 0, 6))
    cache.write(key, 7, blocks_of(data, 7, 11))  # block 6 absent, the short last block present
    assert list(cache.blocks_present(key)) == [1] * 6 + [0] + [1] * 4
    assert cache.read_run(key, 0, 6) == data[: 6 * BS]
    assert cache.read_run(key, 7, 11) == data[7 * BS :]
    assert cache.read_run(key, 5, 8) is None  # one block of the run is absent
    (data_file,) = glob.glob(str(tmp_path / LAYOUT / "*" / "*.data"))
    with open(data_file, "r+b") as f:  # flip one byte of block 2
        f.seek(2 * BS + 5)
        byte = f.read(1)
        f.seek(2 * BS + 5)
        f.write(bytes([byte[0] ^ 0x01]))
    assert cache.read_run(key, 0, 6) is None  # never the corrupt bytes
    assert cache.stats["corrupt"] == 1
    assert list(cache.blocks_present(key))[:6] == [1, 1, 0, 1, 1, 1]  # dropped
    assert cache.read_run(key, 3, 6) == data[3 * BS : 6 * BS]


def test_the_checksum_covers_exactly_the_bytes_asked_for_in_any_buffer_type():
    data = random.Random(11).randbytes(3 * BS + 5)
    whole = block_checksum(data)
    # bytes, a bytearray and views of either give the same value.
    assert block_checksum(bytearray(data)) == block_checksum(memoryview(data)) == block_checksum(memoryview(bytearray(data))) == whole
    # An offset and length select exactly those bytes.
    part = block_checksum(data[BS : 2 * BS + 7])
    assert block_checksum(data, BS, BS + 7) == block_checksum(bytearray(data), BS, BS + 7) == block_checksum(memoryview(data)[BS:], 0, BS + 7) == part
    assert part != block_checksum(data, BS, BS + 6) != block_checksum(data, BS + 1, BS + 6)
    assert block_checksum(b"") == 0x38D394C2  # the published XXH3-64 of empty input (low 32 bits of 0x2D06800538D394C2)
    with pytest.raises(ValueError):
        block_checksum(data, len(data) - 1, 2)  # never reads past the buffer


def test_a_run_of_blocks_is_checked_block_by_block_against_its_records():
    data = random.Random(14).randbytes(3 * BS + 5)
    checks = [(len(block), block_checksum(block)) for block in blocks_of(data, 0, 4)]
    assert first_mismatch(data, BS, checks) is None
    assert first_mismatch(memoryview(bytearray(data)), BS, checks) is None  # any buffer type
    assert first_mismatch(data[: 3 * BS + 4], BS, checks) == 3  # a buffer cut short fails, never reads past it
    changed = bytearray(data)
    changed[2 * BS + 9] ^= 1
    assert first_mismatch(changed, BS, checks) == 2  # the block that changed, not its neighbours
    assert first_mismatch(changed, BS, checks[:2]) is None


class CountingSource:
    """``fetch(file_id, start, end)`` over bytes, counting what the network would have sent."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.bytes = 0

    async def __call__(self, file_id: str, start: int, end: int) -> bytes:
        self.bytes += end - start
        await trio.lowlevel.checkpoint()
        return self.files[file_id][start:end]


def cached_file(tmp_path, size: int, seed: int) -> tuple[DiskCache, bytes]:
    data = random.Random(seed).randbytes(size)
    cache = DiskCache.open(tmp_path, 1 << 30, BS)
    blocks = -(-size // BS)
    assert cache.write(ContentKey("f", "etag:1", size), 0, blocks_of(data, 0, blocks))
    return cache, data


async def stream_through(cache: DiskCache, data: bytes, source: CountingSource) -> tuple[bytes, ReadManager]:
    """Read cached file "f" from start to end in the kernel's 1 MiB reads: its bytes, and the
    (closed) manager that read them."""
    async with ReadManager(source, cache_bytes=64 * MiB, disk=cache) as manager:
        reader = manager.open("f", len(data), version="etag:1")
        out = bytearray()
        while piece := await reader.read(len(out), MiB):
            out += piece
        await reader.close()
    return bytes(out), manager


async def test_a_file_on_the_disk_cache_is_read_in_chunks_without_the_network(tmp_path):
    cache, data = cached_file(tmp_path, 13 * MiB + 777, seed=4)
    source = CountingSource({"f": data})
    async with ReadManager(source, cache_bytes=64 * MiB, disk=cache) as manager:
        reader = manager.open("f", len(data), version="etag:1")
        out = bytearray()
        while piece := await reader.read(len(out), MiB):
            assert isinstance(piece, memoryview)  # a view of the chunk read from disk, no copy
            out += piece
        assert out == data
        rng = random.Random(5)
        for _ in range(50):  # and at random, in and across chunks
            offset, size = rng.randrange(len(data)), rng.choice([1, 4096, 65536, 3 * MiB])
            assert bytes(await reader.read(offset, size)) == data[offset : offset + size]
        await reader.close()
        assert manager.stats["disk_direct_reads"] > 0
    assert source.bytes == 0
    assert manager.cache.reserved_bytes == 0  # every chunk's memory was given back


async def test_a_corrupt_block_under_the_chunked_read_is_fetched_again_and_only_it(tmp_path):
    cache, data = cached_file(tmp_path, 9 * MiB, seed=6)
    (data_file,) = glob.glob(str(tmp_path / LAYOUT / "*" / "*.data"))
    with open(data_file, "r+b") as f:
        f.seek(5 * MiB + 3)
        f.write(bytes([data[5 * MiB + 3] ^ 0x80]))
    source = CountingSource({"f": data})
    out, manager = await stream_through(cache, data, source)
    assert out == data
    assert cache.stats["corrupt"] == 1
    assert 0 < source.bytes <= 2 * BS  # the dropped block (and at most its neighbour), not the chunk


class ColdCache(DiskCache):
    """A disk cache whose files are never in the page cache: every read waits on the disk, in a
    worker thread (``read_run``), as a re-read after the page cache was dropped does at first."""

    def read_run_in_memory(self, key, first, last):
        return None


class GatedCache(ColdCache):
    """A disk cache whose ``read_run`` records each call and holds the first until ``gate`` is set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def read_run(self, key, first, last):
        self.runs.append(first)
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return super().read_run(key, first, last)


def gated_file(tmp_path, size: int, seed: int) -> tuple[GatedCache, bytes]:
    data = random.Random(seed).randbytes(size)
    DiskCache.open(tmp_path, 1 << 30, BS).write(ContentKey("f", "etag:1", size), 0, blocks_of(data, 0, -(-size // BS)))
    return GatedCache(tmp_path, 1 << 30, BS), data


async def test_a_stream_reads_its_chunks_from_disk_one_at_a_time_in_order(tmp_path):
    # Several threads reading one cold cache file at once defeat the kernel's readahead on it
    # (570-1,000 MB/s against 1,500-1,800 for one reader here), and each chunk waited for a worker
    # of its own: one worker thread reads a stream's chunks, in order (disk_stream.py, the pump).
    cache, data = gated_file(tmp_path, 29 * MiB + 5, seed=8)
    source = CountingSource({"f": data})
    async with ReadManager(source, cache_bytes=64 * MiB, disk=cache) as manager:
        reader = manager.open("f", len(data), version="etag:1")
        async with trio.open_nursery() as nursery:
            first = {}

            async def first_read():
                first["data"] = bytes(await reader.read(0, MiB))

            nursery.start_soon(first_read)
            await trio.to_thread.run_sync(cache.entered.wait)
            await trio.testing.wait_all_tasks_blocked()
            # The first read asked for 7 chunks (its own and 6 ahead): one is being read, none beside it.
            assert manager.disk_readers.borrowed_tokens == 1
            assert cache.runs == [0]
            cache.gate.set()
        out = bytearray(first["data"])
        while piece := await reader.read(len(out), MiB):
            out += piece
        assert out == data
        assert cache.runs == sorted(set(cache.runs))  # in order, each chunk once
        await reader.close()
    assert source.bytes == 0
    assert manager.cache.reserved_bytes == 0


async def test_chunks_queued_when_their_handle_closes_are_never_read_and_give_their_memory_back(tmp_path):
    cache, data = gated_file(tmp_path, 29 * MiB, seed=9)
    async with ReadManager(CountingSource({"f": data}), cache_bytes=64 * MiB, disk=cache) as manager:
        reader = manager.open("f", len(data), version="etag:1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.read, 0, MiB)
            await trio.to_thread.run_sync(cache.entered.wait)
            await trio.testing.wait_all_tasks_blocked()
            assert manager.cache.reserved_bytes == 7 * 4 * MiB  # the chunk being read and 6 queued
            nursery.cancel_scope.cancel()  # the reader goes away while the first chunk is read
        await reader.close()
        cache.gate.set()
    assert cache.runs == [0]  # the queued chunks were not read
    assert manager.cache.reserved_bytes == 0


class SnapshotGatedCache(ColdCache):
    """A cold disk cache whose ``blocks_present`` (a handle's first look at what it holds) waits
    for ``gate``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def blocks_present(self, key):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return super().blocks_present(key)


async def test_a_handle_closed_while_its_first_read_looks_at_the_cache_starts_nothing(tmp_path):
    # A handle's first read awaits its look at the disk cache in a worker thread; a close meanwhile
    # (a concurrent read of a concatenation closes its earlier parts) found nothing to stop. The
    # read then made a DiskStream and started 7 chunks (28 MiB reserved) with a pump owned by the
    # closed handle: never dropped, and the handle stayed counted as a stream (window_cap shrank).
    size = 40 * MiB
    data = random.Random(12).randbytes(size)
    key = ContentKey("f", "etag:1", size)
    DiskCache.open(tmp_path, 1 << 30, BS).write(key, 0, blocks_of(data, 0, -(-size // BS)))
    cache = SnapshotGatedCache(tmp_path, 1 << 30, BS)
    async with ReadManager(CountingSource({"f": data}), cache_bytes=64 * MiB, disk=cache) as manager:
        reader = manager.open("f", size, version="etag:1")
        result = {}

        async def first_read() -> None:
            result["data"] = bytes(await reader.read(0, MiB))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_read)
            await trio.to_thread.run_sync(cache.entered.wait)
            await reader.close()  # the handle goes away while its first read is under way
            cache.gate.set()
        assert result["data"] == data[:MiB]
        assert manager.stats["prefetch_tasks"] == 0  # nothing was started for the closed handle
        assert manager.cache.reserved_bytes == 0
        assert reader not in manager._streaming


def test_a_file_forgotten_while_another_thread_opens_it_is_not_served_again(tmp_path, monkeypatch):
    # _pair opens a file's two cache files outside the lock, then puts them in its table. A
    # forget (--verify's, after an MD5 mismatch) or an eviction in between unlinked the files and
    # found no pair to retire; the pair of deleted files then entered the table and this mount
    # served the forgotten bytes again (and would have written to files no one else sees).
    cache, data = cached_file(tmp_path, 3 * BS, seed=13)
    key = ContentKey("f", "etag:1", len(data))
    cache.close()  # out of the table of open files, as one of the 64 least recently used would be
    real_open = os.open
    raced = []

    def open_then_forget(path, flags, mode=0o777, **kwargs):
        fd = real_open(path, flags, mode, **kwargs)
        if str(path).endswith(".data") and not raced:
            raced.append(True)
            cache.forget(key)  # another worker thread, between the two opens and the table
        return fd

    monkeypatch.setattr(os, "open", open_then_forget)
    first = cache.read(key, 0, 3)  # the read that raced with forget: a miss
    monkeypatch.setattr(os, "open", real_open)
    assert raced and first in (None, [None, None, None])
    assert not glob.glob(str(tmp_path / LAYOUT / "*" / "*.idx"))  # forgotten on disk
    assert cache.read_run(key, 0, 3) is None, "forgotten blocks served again from deleted files"
    assert cache.write(key, 0, blocks_of(data, 0, 3))  # and the next write makes new files
    assert glob.glob(str(tmp_path / LAYOUT / "*" / "*.idx"))


class RecordingCache(ColdCache):
    """A disk cache that records the blocks ``[first, last)`` of each ``read_run``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runs: list[tuple[int, int]] = []

    def read_run(self, key, first, last):
        self.runs.append((first, last))
        return super().read_run(key, first, last)


async def test_a_cache_file_in_the_page_cache_is_read_on_the_trio_thread_without_a_worker(tmp_path):
    cache, data = cached_file(tmp_path, 13 * MiB + 777, seed=11)  # just written: in the page cache
    worker_reads = []
    cache.read_run = lambda key, first, last: worker_reads.append(first)  # would read in a worker thread
    out, manager = await stream_through(cache, data, CountingSource({"f": data}))
    assert out == data
    assert worker_reads == []
    assert manager.cache.reserved_bytes == 0


async def test_a_cache_on_a_file_system_without_nowait_reads_is_read_in_worker_threads(tmp_path, monkeypatch, caplog):
    cache, data = cached_file(tmp_path, 9 * MiB + 5, seed=12)
    real_preadv = os.preadv

    def preadv(fd, buffers, offset, flags=0):
        if flags:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    caplog.set_level(logging.INFO, logger="basemount_py.read.disk_cache")
    source = CountingSource({"f": data})
    out, manager = await stream_through(cache, data, source)
    assert out == data
    assert source.bytes == 0  # all from the cache file, through the worker threads
    assert not cache._nowait
    assert "cannot be read without waiting" in caplog.text


def test_a_file_evicted_while_a_read_uses_it_stays_open_until_the_read_is_done(tmp_path):
    # Closed under the read, its descriptor numbers could be reused by another file's pair, whose
    # bytes match that file's records: the read would return another file's bytes.
    cache, data = cached_file(tmp_path, 3 * BS, seed=13)
    key = ContentKey("f", "etag:1", len(data))
    with cache._using(key, create=False) as pair:
        cache.forget(key)  # another thread evicts the file meanwhile
        assert os.pread(pair.data, BS, BS) == data[BS : 2 * BS]  # still the same file
    with pytest.raises(OSError):
        os.fstat(pair.data)  # closed once the read was done
    assert cache.read_run(key, 0, 3) is None  # and gone from the cache


async def test_reads_that_arrive_out_of_order_behind_a_stream_never_read_their_chunk_again(tmp_path):
    # The kernel's readahead requests reach the daemon out of order: in a re-read, 1 in 6 came
    # 4-15 MiB behind the furthest one. After the first 16 MiB, each 16 MiB here arrives as its
    # last 12 MiB, then its first 4.
    size = 48 * MiB
    data = random.Random(10).randbytes(size)
    DiskCache.open(tmp_path, 1 << 30, BS).write(ContentKey("f", "etag:1", size), 0, blocks_of(data, 0, size // BS))
    cache = RecordingCache(tmp_path, 1 << 30, BS)
    order = [*range(16)] + [w + m for w in (16, 32) for m in [*range(4, 16), *range(4)]]
    async with ReadManager(CountingSource({"f": data}), cache_bytes=64 * MiB, disk=cache) as manager:
        reader = manager.open("f", size, version="etag:1")
        for mib in order:
            assert bytes(await reader.read(mib * MiB, MiB)) == data[mib * MiB : (mib + 1) * MiB]
        await reader.close()
        blocks_read = sum(last - first for first, last in cache.runs)
    assert blocks_read == size // BS  # each block read from disk once: no chunk read again
    assert manager.cache.reserved_bytes == 0


class SlowWriteCache(DiskCache):
    """A disk cache whose writes wait for ``gate``: a disk writer slower than the network."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def write(self, key, first, blocks):
        assert self.gate.wait(60), "the test never opened the gate"
        return super().write(key, first, blocks)


async def test_a_whole_prefetch_window_waiting_for_a_slow_disk_writer_is_still_cached(tmp_path, autojump_clock):
    # One stream's window (96 MiB by default) arrives faster than the disk writer stores it: all
    # of it, and what was read before it, waits and is cached. A fixed 64 MiB bound on what
    # waits left 3-6 % of a fast first read unwritten, fetched again by the next mount.
    size = 128 * MiB
    data = bytes(range(256)) * (size // 256)
    cache = SlowWriteCache(tmp_path, 1 << 30, BS)
    source = CountingSource({"f": data})
    key = ContentKey("f", "etag:1", size)
    async with ReadManager(source, disk=cache) as manager:  # the mount's defaults otherwise
        try:
            reader = manager.open("f", size, version="etag:1")
            for offset in range(0, 8 * MiB, MiB):
                assert bytes(await reader.read(offset, MiB)) == data[offset : offset + MiB]
            while manager.stats["prefetch_tasks"]:  # every prefetch arrives; the writes wait
                await trio.sleep(0.01)
            fetched = source.bytes
            assert fetched >= 8 * MiB + manager.config.max_window - 4 * MiB  # the read and its window
        finally:
            cache.gate.set()
        await reader.close()
    assert manager.stats["disk_writes_skipped"] == 0
    stored = cache.blocks_present(key)
    assert all(stored[: fetched // BS]), "a fetched block was not written to the disk cache"


def test_an_unusable_directory_disables_the_cache(tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert DiskCache.open(not_a_dir, 1 << 30, BS) is None
    assert "content cache disabled" in caplog.text


# -- through real mounts ---------------------------------------------------------------------------

FILES = ("Projects", "P", "Samples", "S", "Files")


def make_account(root):
    data = random.Random(7).randbytes(5 * MiB + 4321)
    write_file(root.joinpath(*FILES, "reads.bin"), data)
    return root, data


@pytest.fixture
def account(tmp_path):
    """An account of the test's own (for a test that changes it)."""
    return make_account(tmp_path / "account")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(account folder, file bytes, its emulator): one per module for the tests that only read
    (each measures content bytes from its own reset of the counters)."""
    root, data = make_account(tmp_path_factory.mktemp("disk-cache") / "account")
    with EmulatorProcess(root) as em:
        yield root, data, em


def mounted(m, name="reads.bin"):
    return m.path(*FILES, name)


def content_bytes(em) -> int:
    return em.counters()["content_bytes"]


def cache_opts(cache_dir) -> tuple[str, ...]:
    return (f"--cache-dir={cache_dir}", "--cache-max=1")


def read_through(mount_factory, em, cache_dir, name: str, path_name: str = "reads.bin"):
    """Mount, read the file whole, unmount (so every background cache write is finished)."""
    m = mount_factory(em, *cache_opts(cache_dir), name=name)
    try:
        with open(mounted(m, path_name), "rb") as f:
            data = f.read()
    finally:
        m.stop()
    return data, m


def test_a_second_mount_rereads_from_the_cache_without_the_network(served, mount_factory, tmp_path):
    _, data, em = served
    cache_dir = tmp_path / "cache"
    em.reset_counters()
    assert read_through(mount_factory, em, cache_dir, "m1")[0] == data
    assert content_bytes(em) >= len(data)
    em.reset_counters()
    assert read_through(mount_factory, em, cache_dir, "m2")[0] == data
    assert content_bytes(em) == 0
    assert glob.glob(str(cache_dir / "content" / LAYOUT / "*" / "*.data"))
    # Private: the cache holds file contents.
    for path in glob.glob(str(cache_dir / "content" / LAYOUT / "*" / "*")):
        assert os.stat(path).st_mode & 0o077 == 0


def test_a_corrupt_cache_block_is_refetched_never_returned(served, mount_factory, tmp_path):
    _, data, em = served
    cache_dir = tmp_path / "cache"
    read_through(mount_factory, em, cache_dir, "m1")
    (data_file,) = glob.glob(str(cache_dir / "content" / LAYOUT / "*" / "*.data"))
    with open(data_file, "r+b") as f:
        for offset in (0, 3 * MiB + 5):
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x5A]))
    em.reset_counters()
    again, m = read_through(mount_factory, em, cache_dir, "m2")
    assert again == data
    assert 0 < content_bytes(em) <= 4 * BS  # the two bad blocks (and their read widening)
    assert "failed its checksum" in m.log.read_text()


def test_changed_content_under_the_same_id_is_never_served_from_the_cache(account, mount_factory, tmp_path):
    root, data = account
    cache_dir = tmp_path / "cache"
    path = root.joinpath(*FILES, "reads.bin")
    with EmulatorProcess(root) as em:
        read_through(mount_factory, em, cache_dir, "m1")
        new = bytes(b ^ 0xFF for b in data[:4096]) + data[4096:]  # same size, new bytes
        write_file(path, new, mtime=1_800_000_000)  # a new ETag
        em.reload()
        assert read_through(mount_factory, em, cache_dir, "m2")[0] == new


def test_two_mounts_share_one_cache_directory_at_once(served, mount_factory, tmp_path):
    _, data, em = served
    cache_dir = tmp_path / "cache"
    a = mount_factory(em, *cache_opts(cache_dir), name="a")
    b = mount_factory(em, *cache_opts(cache_dir), name="b")
    results = {}

    def read(m, tag):
        results[tag] = [sha256_file(mounted(m)) for _ in range(3)]

    threads = [threading.Thread(target=read, args=(m, tag)) for m, tag in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    a.stop()
    b.stop()
    expected = __import__("hashlib").sha256(data).hexdigest()
    assert results == {"a": [expected] * 3, "b": [expected] * 3}
    em.reset_counters()
    assert read_through(mount_factory, em, cache_dir, "c")[0] == data
    assert content_bytes(em) == 0


def test_an_unwritable_cache_directory_falls_back_to_the_network(served, mount_factory, tmp_path):
    # The content cache's own directory (<cache-dir>/content) is unusable; the write spool beside
    # it (<cache-dir>/spool) is not, so the mount starts and reads from the network.
    _, data, em = served
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "content").write_text("a file where the content cache's directory should be")
    got, m = read_through(mount_factory, em, cache_dir, "m1")
    assert got == data
    assert "content cache disabled" in m.log.read_text()


def _tiny_tmpfs(path, size: str, *options: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs as the cache directory needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", "mode=0700", *options)), "tmpfs", str(path)], check=True)


def test_a_full_cache_disk_falls_back_to_the_network(served, mount_factory, tmp_path):
    _, data, em = served
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    _tiny_tmpfs(cache_dir / "content", "1m")  # room for a fifth of the file; --cache-max says 1 GiB
    try:
        got, m = read_through(mount_factory, em, cache_dir, "m1")
        assert got == data
        assert "disk is full" in m.log.read_text()
        em.reset_counters()
        assert read_through(mount_factory, em, cache_dir, "m2")[0] == data
        assert content_bytes(em) > 0  # what did not fit came from the network again
    finally:
        subprocess.run(["umount", "-l", str(cache_dir / "content")], check=False)


def test_a_read_only_cache_disk_falls_back_to_the_network(served, mount_factory, tmp_path):
    _, data, em = served
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    _tiny_tmpfs(cache_dir / "content", "1m", "ro")
    try:
        got, m = read_through(mount_factory, em, cache_dir, "m1")
        assert got == data
        assert "content cache disabled" in m.log.read_text()
    finally:
        subprocess.run(["umount", "-l", str(cache_dir / "content")], check=False)
