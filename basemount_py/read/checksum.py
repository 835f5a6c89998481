"""Block checksums of the persistent content cache (disk_cache.py): the low 32 bits of XXH3-64.

Every block read back from the cache is checked, so the checksum is on the hot path of a re-read:
with ``zlib.crc32`` (about 2 GB/s here) it was a quarter of the daemon's CPU on a second-mount
re-read, more than any other single cost (docs/performance.md, "Third round"). XXH3 runs at about
12 GB/s on the same machine. It comes from the ``xxhash`` package (pinned in pyproject.toml),
which hashes any buffer in place and releases the GIL while it does, as ``zlib.crc32`` does.

A record keeps 32 bits of it (the record stays 8 bytes): a random corruption goes unnoticed with a
2**-32 chance, as with CRC-32. The cache's layout directory (:data:`LAYOUT`) names the
checksum, so records an older version made with CRC-32 (``v1``) are never checked with it.
"""

from __future__ import annotations

import xxhash

Buffer = bytes | bytearray | memoryview
LAYOUT = "v2"  # the cache's subdirectory holding records checked with this function (v1: CRC-32)


def block_checksum(buffer: Buffer, offset: int = 0, length: int | None = None) -> int:
    """The low 32 bits of the XXH3-64 of ``buffer[offset:offset + length]`` (hashed in place)."""
    view = memoryview(buffer).cast("B")
    if length is None:
        length = len(view) - offset
    if not 0 <= offset <= offset + length <= len(view):
        raise ValueError("checksum range outside the buffer")
    return xxhash.xxh3_64_intdigest(view[offset : offset + length]) & 0xFFFFFFFF


def first_mismatch(buffer: Buffer, block_size: int, checks: list[tuple[int, int]]) -> int | None:
    """The index of the first block of ``buffer`` that fails its check, or None if every one passes.

    Block ``i`` is ``buffer[i * block_size:][:length]``, checked against ``checks[i] == (length,
    checksum)``. The hot path of a re-read checks 16 blocks per 1 MiB read: one view and, per
    block, one slice and one hash (a call of :func:`block_checksum` per block cost as much again
    as the hashing itself)."""
    view = memoryview(buffer).cast("B")
    digest = xxhash.xxh3_64_intdigest
    for index, (length, check) in enumerate(checks):
        start = index * block_size
        if start + length > len(view) or digest(view[start : start + length]) & 0xFFFFFFFF != check:
            return index
    return None
