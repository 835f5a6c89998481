"""Block checksums of the persistent content cache (disk_cache.py): the low 32 bits of XXH3-64.

Every block read back from the cache is checked, so the checksum is on the hot path of a re-read:
with ``zlib.crc32`` (about 2 GB/s here) it was a quarter of the daemon's CPU on a second-mount
re-read, more than any other single cost (docs/performance.md, "Third round"). XXH3 runs at about
12 GB/s on the same machine. It comes from the ``xxhash`` package (pinned in pyproject.toml),
which hashes any buffer in place and releases the GIL while it does, as ``zlib.crc32`` does.

A record keeps 32 bits of it (the record stays 8 bytes): a random corruption goes unnoticed with a
2**-32 chance, as with CRC-32. The cache's layout directory (:data:`XXH3`'s ``layout``) names the
checksum, so records an older version made with CRC-32 (``v1``) are never checked with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import xxhash

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class BlockChecksum:
    """A 32-bit checksum of ``buffer[offset:offset + length]`` and the cache layout of its records."""

    name: str
    layout: str  # the cache's subdirectory holding records made with it
    _digest: Callable[[Buffer], int]

    def __call__(self, buffer: Buffer, offset: int = 0, length: int | None = None) -> int:
        view = memoryview(buffer).cast("B")
        if length is None:
            length = len(view) - offset
        if not 0 <= offset <= offset + length <= len(view):
            raise ValueError("checksum range outside the buffer")
        return self._digest(view[offset : offset + length]) & 0xFFFFFFFF


XXH3 = BlockChecksum("XXH3", "v2", xxhash.xxh3_64_intdigest)
