"""A global LRU cache of fixed-size file blocks, bounded in bytes (not entries).

Keys are ``(file_id, block_index)``; values are buffers of exactly one block (the last block of a
file may be shorter): ``bytes``, or views of a part's buffer (below). The bound covers two kinds of memory:

* ``cached_bytes`` — blocks held in the LRU;
* ``reserved_bytes`` — fetches in flight. A fetch reserves its size *before* it starts, so data that
  is being prefetched (and later sits unread in the cache) counts against the same bound; when the
  fetch lands the reservation turns into cached blocks, when it fails it is simply released.

``reserve`` makes room by evicting from the cold end. It refuses (returns False) when the
reservations alone would exceed the bound: the caller then skips a prefetch, or serves a demand read
without caching it. So ``cached_bytes + reserved_bytes <= capacity`` always holds, and
``peak_bytes`` records the highest value it reached (tests assert it).

Blocks a sequential reader has consumed are moved to the cold end (``demote``): they are the least
likely to be read again (the kernel page cache keeps them for re-reads anyway) and should go before
prefetched blocks nobody has read yet.

**Parts.** A fetch receives its bytes into one buffer, and its blocks are views of that buffer
(no copy: :meth:`put_part`), so a 1 MiB read inside one part is answered with one view of it
instead of a join of 16 blocks (:meth:`part_of`). A view keeps the whole buffer alive, so a part
counts in ``cached_bytes`` with its whole size as long as any of its blocks is cached, and frees
it when the last one goes: the bound is on the memory really held, whatever the order of
eviction (evicting one block of a part whose other blocks are still cached frees nothing, so
eviction goes on to the next cold block).

Everything here is synchronous and O(1) per block: it is called from trio tasks without awaiting,
so no locking is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Sequence


class Part:
    """One fetch's buffer: ``data`` holds the file's bytes from offset ``start``; ``live`` counts
    its blocks in the cache."""

    __slots__ = ("data", "start", "live")

    def __init__(self, data: Any, start: int):
        self.data = data
        self.start = start
        self.live = 0


class BlockCache:
    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0 bytes")
        self.capacity = capacity
        self._blocks: OrderedDict[Hashable, Any] = OrderedDict()  # cold end first
        self._parts: dict[Hashable, Part] = {}  # the part of each block that is a view of one
        self.cached_bytes = 0
        self.reserved_bytes = 0
        self.peak_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._blocks

    def get(self, key: Hashable, *, count: bool = True) -> bytes | None:
        block = self._blocks.get(key)
        if block is None:
            self.misses += count
            return None
        self.hits += count
        self._blocks.move_to_end(key)
        return block

    def reserve(self, nbytes: int) -> bool:
        """Set aside ``nbytes`` for a fetch, evicting cold blocks as needed; False if impossible."""
        if nbytes < 0:
            raise ValueError("cannot reserve a negative size")
        if self.reserved_bytes + nbytes > self.capacity:
            return False
        self._evict_until(self.capacity - self.reserved_bytes - nbytes)
        self.reserved_bytes += nbytes
        self._note_peak()
        return True

    def release(self, nbytes: int) -> None:
        """Give back (part of) a reservation whose data will not be cached."""
        self.reserved_bytes = max(0, self.reserved_bytes - nbytes)

    def put_reserved(self, key: Hashable, block: Any) -> None:
        """Store a block whose bytes were reserved earlier (the reservation becomes the block)."""
        size = len(block)
        self.reserved_bytes = max(0, self.reserved_bytes - size)
        self._remove(key)
        self._blocks[key] = block
        self.cached_bytes += size
        self._note_peak()

    def put_part(self, keys: Sequence[Hashable], blocks: Sequence[Any], part: Part) -> None:
        """Store the blocks of one reserved fetch, views of ``part.data`` (its whole size reserved)."""
        size = len(part.data)
        self.reserved_bytes = max(0, self.reserved_bytes - size)
        for key, block in zip(keys, blocks, strict=True):
            self._remove(key)
            self._blocks[key] = block
            self._parts[key] = part
        part.live += len(keys)
        self.cached_bytes += size
        self._note_peak()

    def part_of(self, key: Hashable) -> Part | None:
        """The part whose buffer holds the cached block ``key`` (None: not cached, or on its own)."""
        return self._parts.get(key)

    def discard(self, belongs: Callable[[Any], bool]) -> int:
        """Drop the cached blocks whose key ``belongs`` (a file whose bytes failed a check)."""
        doomed = [key for key in self._blocks if belongs(key)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def _remove(self, key: Hashable) -> None:
        block = self._blocks.pop(key, None)
        if block is not None:
            self._forget(key, block)

    def _forget(self, key: Hashable, block: Any) -> None:
        """Account for a block that has left ``_blocks``: its bytes, or its part's when it was the last."""
        part = self._parts.pop(key, None)
        if part is None:
            self.cached_bytes -= len(block)
            return
        part.live -= 1
        if part.live == 0:
            self.cached_bytes -= len(part.data)

    def demote(self, key: Hashable) -> None:
        if key in self._blocks:
            self._blocks.move_to_end(key, last=False)

    def _evict_until(self, limit: int) -> None:
        while self.cached_bytes > limit and self._blocks:
            key, block = self._blocks.popitem(last=False)
            self._forget(key, block)
            self.evictions += 1

    def _note_peak(self) -> None:
        total = self.cached_bytes + self.reserved_bytes
        if total > self.peak_bytes:
            self.peak_bytes = total
