"""Deterministic synthetic file content, computed on the fly for any byte range.

A synthetic file (``NAME.synthetic.json`` = ``{"size": N, "seed": S}`` in an account folder) is
served without any disk: its bytes are ``synthetic_bytes(seed, offset, length)``.

Design (fast and random-access):

* Per seed, one random *pad* of ``PAD_SIZE`` (1 MiB) + ``CHUNK`` bytes is generated once with
  ``random.Random`` and kept in a small LRU (bounded memory: ``_PAD_CACHE`` pads).
* The stream is cut into 64 KiB *chunks*, grouped 16 to a 1 MiB *block*.  Chunk ``c`` is the
  slice ``pad[o : o + CHUNK]`` where the offset ``o`` comes from a BLAKE2b digest of
  ``(seed, block index)`` (one 64-byte digest yields the 16 chunk offsets of a block).

So producing any byte range is one join of views of an in-memory buffer (one memcpy of the
range, several GB/s) plus one small hash per MiB, and the bytes at a given offset never depend on how the
range was asked for.  The content is not cryptographically random, but every chunk starts at an
independent random place of a random pad, so an off-by-N error in a client's range arithmetic
shows up as a mismatch (what the tests need).  Pure Python ``randbytes`` for every block would be
~150 MB/s, too slow for the loopback throughput target.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from threading import Lock

__all__ = ["synthetic_bytes", "synthetic_sha256", "iter_synthetic", "CHUNK", "PAD_SIZE"]

CHUNK = 64 * 1024
CHUNKS_PER_BLOCK = 16  # 16 x 4-byte offsets = one 64-byte BLAKE2b digest
BLOCK = CHUNK * CHUNKS_PER_BLOCK
PAD_SIZE = 1024 * 1024
_PAD_CACHE = 8

_pads: OrderedDict[int, bytes] = OrderedDict()
_pads_lock = Lock()  # content may be produced from worker threads


def _pad(seed: int) -> bytes:
    with _pads_lock:
        pad = _pads.get(seed)
        if pad is not None:
            _pads.move_to_end(seed)
            return pad
    # Generated outside the lock: two threads may both build it once, which is harmless.
    pad = random.Random(f"basemount-synthetic:{seed}").randbytes(PAD_SIZE + CHUNK)
    with _pads_lock:
        _pads[seed] = pad
        while len(_pads) > _PAD_CACHE:
            _pads.popitem(last=False)
    return pad


def _block_offsets(seed: int, block: int) -> list[int]:
    digest = hashlib.blake2b(seed.to_bytes(16, "little", signed=True) + block.to_bytes(8, "little"), digest_size=64).digest()
    return [int.from_bytes(digest[i : i + 4], "little") % PAD_SIZE for i in range(0, 64, 4)]


def synthetic_bytes(seed: int, offset: int, length: int) -> bytes:
    """The ``length`` bytes at ``offset`` of the synthetic stream ``seed`` (unbounded stream;
    callers clamp to the file size)."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must be >= 0")
    if length == 0:
        return b""
    pad = memoryview(_pad(seed))  # views of the pad: the join below is the one copy of the bytes
    parts: list[memoryview] = []
    pos, end = offset, offset + length
    block, offsets = -1, []
    while pos < end:
        chunk = pos // CHUNK
        if chunk // CHUNKS_PER_BLOCK != block:
            block = chunk // CHUNKS_PER_BLOCK
            offsets = _block_offsets(seed, block)
        start = offsets[chunk % CHUNKS_PER_BLOCK]
        within = pos - chunk * CHUNK
        take = min(CHUNK - within, end - pos)
        parts.append(pad[start + within : start + within + take])
        pos += take
    return b"".join(parts)


def iter_synthetic(seed: int, offset: int, length: int, step: int = BLOCK):
    """Yield the range ``[offset, offset+length)`` in pieces of at most ``step`` bytes."""
    end = offset + length
    while offset < end:
        n = min(step, end - offset)
        yield synthetic_bytes(seed, offset, n)
        offset += n


def synthetic_sha256(seed: int, size: int) -> str:
    """Hex SHA-256 of a whole synthetic file (for tests and benchmarks)."""
    h = hashlib.sha256()
    for piece in iter_synthetic(seed, 0, size, step=4 * BLOCK):
        h.update(piece)
    return h.hexdigest()
