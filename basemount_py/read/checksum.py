"""Block checksums of the persistent content cache (disk_cache.py): XXH3 when it is there, else CRC-32.

Every block read back from the cache is checked, so the checksum is on the hot path of a re-read:
with ``zlib.crc32`` (about 2 GB/s here) it was a quarter of the daemon's CPU on a second-mount
re-read, more than any other single cost (docs/performance.md, "Third round"). XXH3 runs at
about 12 GB/s on the same machine. Python's standard library has nothing as fast, so it is called
through ``ctypes`` in the system's ``libxxhash`` (Debian's ``libxxhash0``, which apt itself
depends on); ``ctypes`` releases the GIL for the call, as ``zlib.crc32`` does for large buffers.
Where the library is missing (or older than 0.8, without XXH3), CRC-32 is used.

Records made with one checksum cannot be checked with the other, so each has its own directory
in the cache (:attr:`BlockChecksum.layout`): two mounts that differ share nothing but never serve
each other's blocks unchecked. Both are stored in 32 bits (XXH3's low half): the record stays 8
bytes, and a random corruption goes unnoticed with the same 2**-32 chance as with CRC-32.
"""

from __future__ import annotations

import ctypes
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

XXHASH_LIBRARY = "libxxhash.so.0"
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class BlockChecksum:
    """A 32-bit checksum of ``buffer[offset:offset + length]`` and the cache layout of its records."""

    name: str
    layout: str  # the cache's subdirectory holding records made with it
    _digest: Callable[[Buffer, int, int], int]

    def __call__(self, buffer: Buffer, offset: int = 0, length: int | None = None) -> int:
        if length is None:
            length = len(buffer) - offset
        return self._digest(buffer, offset, length)


def _crc32(buffer: Buffer, offset: int, length: int) -> int:
    if offset == 0 and length == len(buffer):
        return zlib.crc32(buffer)
    return zlib.crc32(memoryview(buffer)[offset : offset + length])


CRC32 = BlockChecksum("CRC-32", "v1", _crc32)


def _load_xxh3() -> BlockChecksum | None:
    try:
        function = ctypes.CDLL(XXHASH_LIBRARY).XXH3_64bits
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_uint64
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

    def digest(buffer: Buffer, offset: int, length: int) -> int:
        if not 0 <= offset <= offset + length <= len(buffer):
            raise ValueError("checksum range outside the buffer")
        if not isinstance(buffer, bytes):
            view = memoryview(buffer).cast("B")
            if view.readonly:  # a read-only view (of bytes received by httpx): hash a copy
                return digest(bytes(view[offset : offset + length]), 0, length)
            # The buffer's own memory, no copy (it stays exported while this array lives).
            array = (ctypes.c_char * len(view)).from_buffer(view)
            return function(ctypes.addressof(array) + offset, length) & 0xFFFFFFFF
        # bytes: c_char_p points at the object's own buffer (no copy), kept alive by `buffer`.
        address = ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value or 0
        return function(address + offset, length) & 0xFFFFFFFF

    return BlockChecksum("XXH3", "v2", digest)


XXH3 = _load_xxh3()


def best() -> BlockChecksum:
    """XXH3 where the library is installed, else CRC-32."""
    return XXH3 if XXH3 is not None else CRC32
