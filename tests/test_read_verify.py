"""--verify without a kernel: whole-file sequential reads checked against a plain-MD5 ETag."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio

from basemount_py.api.errors import IntegrityError, errno_for
from basemount_py.read import ReadManager
from basemount_py.read.verify import MAX_AHEAD, VerifiedReader, plain_md5

KiB, MiB = 1024, 1024 * 1024


class SliceReader:
    """A reader over bytes; ``closed`` tells whether close() reached it."""

    def __init__(self, data: bytes):
        self.data = data
        self.closed = False

    async def read(self, offset: int, size: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.data[offset : offset + size]

    async def close(self) -> None:
        self.closed = True


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def verified(data: bytes, etag_of: bytes | None = None) -> tuple[VerifiedReader, list]:
    dropped: list = []
    md5 = hashlib.md5(data if etag_of is None else etag_of).hexdigest()

    async def forget(reader) -> None:
        dropped.append(reader)

    return VerifiedReader(SliceReader(data), "f1", len(data), md5, on_mismatch=forget), dropped


def test_plain_md5_accepts_only_a_single_part_md5():
    md5 = hashlib.md5(b"x").hexdigest()
    assert plain_md5(md5) == md5
    assert plain_md5(f'"{md5.upper()}"') == md5  # quoted, any case, as a content host may send it
    assert plain_md5(f"{md5}-12") is None  # multipart: an MD5 of part MD5s, not checkable here
    for junk in (None, "", "abc", 5, md5[:-1] + "g"):
        assert plain_md5(junk) is None


async def test_a_whole_sequential_read_is_verified():
    data = payload(9 * MiB + 123)  # more than two hashing batches
    reader, dropped = verified(data)
    got = b"".join([await reader.read(off, 128 * KiB) for off in range(0, len(data), 128 * KiB)])
    assert got == data and reader.state == "verified" and dropped == []


async def test_out_of_order_reads_as_kernel_readahead_sends_them_are_still_verified():
    data = payload(2 * MiB)
    reader, _ = verified(data)
    chunks = list(range(0, len(data), 128 * KiB))
    order = chunks[:]
    for i in range(0, len(order) - 1, 3):  # swap neighbours: reads arriving out of order
        order[i], order[i + 1] = order[i + 1], order[i]
    results = {}

    async def one(off: int) -> None:
        results[off] = await reader.read(off, 128 * KiB)

    async with trio.open_nursery() as nursery:
        for off in order:
            nursery.start_soon(one, off)
    assert b"".join(results[o] for o in chunks) == data
    assert reader.state == "verified"


async def test_a_mismatch_is_eio_on_the_last_read_then_on_every_read_and_drops_the_cache():
    data = payload(1 * MiB)
    reader, dropped = verified(data, etag_of=data[:-1] + b"?")
    for off in range(0, len(data) - 64 * KiB, 64 * KiB):
        assert await reader.read(off, 64 * KiB) == data[off : off + 64 * KiB]
    with pytest.raises(IntegrityError) as err:
        await reader.read(len(data) - 64 * KiB, 64 * KiB)
    assert errno_for(err.value) == 5  # EIO
    assert dropped == [reader.reader] and reader.state == "mismatch"
    with pytest.raises(IntegrityError):
        await reader.read(0, 10)


async def test_random_or_partial_reads_are_not_verified_and_never_fail():
    data = payload(MAX_AHEAD + 4 * MiB)
    reader, dropped = verified(data, etag_of=b"something else")
    # jumps far ahead: more than MAX_AHEAD beyond the hashed prefix, so verification is given up
    for off in range(MiB, len(data), MiB):
        assert await reader.read(off, MiB) == data[off : off + MiB]
    assert await reader.read(0, MiB) == data[:MiB]
    assert reader.state == "skipped" and dropped == []
    partial, _ = verified(data[: 2 * MiB], etag_of=b"other")
    assert await partial.read(0, MiB) == data[:MiB]  # half the file: nothing to compare yet
    await partial.close()
    assert partial.state == "reading" and partial.reader.closed


async def test_read_manager_wraps_only_when_asked_and_the_etag_is_a_plain_md5():
    data = payload(600 * KiB)
    files = {"f": data}

    async def fetch(file_id: str, start: int, end: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return files[file_id][start:end]

    good, bad = hashlib.md5(data).hexdigest(), hashlib.md5(b"no").hexdigest()
    async with ReadManager(fetch, cache_bytes=8 * MiB) as plain:
        assert not isinstance(plain.open("f", len(data), etag=good), VerifiedReader)
    async with ReadManager(fetch, cache_bytes=8 * MiB, verify=True) as manager:
        assert not isinstance(manager.open("f", len(data), etag=f"{good}-3"), VerifiedReader)
        assert not isinstance(manager.open("f", 0, etag=good), VerifiedReader)
        reader = manager.open("f", len(data), etag=good)
        assert b"".join([await reader.read(o, 64 * KiB) for o in range(0, len(data), 64 * KiB)]) == data
        assert reader.state == "verified"
        await reader.close()
        assert manager.cache.cached_bytes > 0
        wrong = manager.open("f", len(data), etag=bad)
        with pytest.raises(IntegrityError):
            for o in range(0, len(data), 64 * KiB):
                await wrong.read(o, 64 * KiB)
        assert manager.cache.cached_bytes == 0  # the failed file's blocks are gone
        await wrong.close()


async def test_a_mismatch_also_forgets_the_disk_cache_copy(tmp_path):
    from basemount_py.read.disk_cache import ContentKey, DiskCache
    from basemount_py.read.prefetch import PrefetchConfig

    data = payload(300 * KiB)
    bs = PrefetchConfig().block_size
    disk = DiskCache.open(tmp_path, 64 * MiB, bs)
    key = ContentKey("f", "etag:x", len(data))
    assert disk.write(key, 0, [data[o : o + bs] for o in range(0, len(data), bs)])

    async def fetch(file_id: str, start: int, end: int) -> bytes:
        raise AssertionError("served from the disk cache, the network is not asked")

    async with ReadManager(fetch, cache_bytes=8 * MiB, verify=True, disk=disk) as manager:
        reader = manager.open("f", len(data), version="etag:x", etag=hashlib.md5(b"not it").hexdigest())
        with pytest.raises(IntegrityError):
            for o in range(0, len(data), 64 * KiB):
                await reader.read(o, 64 * KiB)
        await reader.close()
    assert disk.read(key, 0, -(-len(data) // bs)) == [None] * -(-len(data) // bs)
    disk.close()
