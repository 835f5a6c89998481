"""A global LRU cache of fixed-size file blocks, bounded in bytes (not entries).

Keys are ``(file_id, block_index)``; values are ``bytes`` of exactly one block (the last block of a
file may be shorter). The bound covers two kinds of memory:

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

Everything here is synchronous and O(1) per block: it is called from trio tasks without awaiting,
so no locking is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable


class BlockCache:
    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError("cache capacity must be >= 0 bytes")
        self.capacity = capacity
        self._blocks: OrderedDict[Hashable, bytes] = OrderedDict()  # cold end first
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

    def put_reserved(self, key: Hashable, block: bytes) -> None:
        """Store a block whose bytes were reserved earlier (the reservation becomes the block)."""
        size = len(block)
        self.reserved_bytes = max(0, self.reserved_bytes - size)
        old = self._blocks.pop(key, None)
        if old is not None:
            self.cached_bytes -= len(old)
        self._blocks[key] = block
        self.cached_bytes += size
        self._note_peak()

    def discard(self, belongs: Callable[[Any], bool]) -> int:
        """Drop the cached blocks whose key ``belongs`` (a file whose bytes failed a check)."""
        doomed = [key for key in self._blocks if belongs(key)]
        for key in doomed:
            self.cached_bytes -= len(self._blocks.pop(key))
        return len(doomed)

    def demote(self, key: Hashable) -> None:
        if key in self._blocks:
            self._blocks.move_to_end(key, last=False)

    def _evict_until(self, limit: int) -> None:
        while self.cached_bytes > limit and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.cached_bytes -= len(block)
            self.evictions += 1

    def _note_peak(self) -> None:
        total = self.cached_bytes + self.reserved_bytes
        if total > self.peak_bytes:
            self.peak_bytes = total
