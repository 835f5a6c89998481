"""A bounded TTL cache for listings with single-flight loading and stale fallback.

* Fresh entries (younger than ``ttl``) are served without a call.
* Concurrent misses for the same key share one load (``ls`` and a parallel ``stat`` storm on a
  5,000-entry folder make one set of API calls, not thousands).
* When a reload fails (API briefly down) and an expired copy exists, the expired copy is served and
  the failure logged: ``ls`` keeps working from cache. The stale copy then counts as fresh for
  ``stale_grace`` seconds (default 10 s), so a path walk over a dead server pays one
  retry cycle per folder per grace period, not one per lookup.
* A reload that failed for want of a server (a transient error: refused, timed out, 5xx, after
  its retries) marks an outage for ``stale_grace`` seconds, during which every other expired
  listing is served stale at once, without a retry cycle of its own: ``ls -R`` over a dead server
  waits for one retry cycle per grace period, not one per folder (with the default
  ``--op-timeout`` a cycle is 10-20 s). A folder never listed is still asked for (it has no copy).
* Memory is bounded by an LRU on entries (cachetools); expired entries stay until evicted so they
  can serve as the fallback.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Hashable

import trio
from cachetools import LRUCache

from ..api.retry import is_transient

log = logging.getLogger(__name__)


class ListingCache:
    def __init__(
        self,
        ttl: float,
        maxsize: int = 4096,
        # trio's clock: monotonic in a mount, and in tests a MockClock drives expiry in no wall time
        clock: Callable[[], float] = trio.current_time,
        stale_grace: float | None = None,
    ):
        self.ttl = ttl
        self.stale_grace = 10.0 if stale_grace is None else stale_grace
        self._clock = clock
        self._entries: LRUCache = LRUCache(maxsize=maxsize)
        self._inflight: dict[Hashable, trio.Event] = {}
        self._errors: dict[Hashable, BaseException] = {}
        self.loads = 0
        self.stale_served = 0
        self.last_stale_reason = ""  # why the last stale copy was served (for a folder's .error)
        self._outage_until = float("-inf")  # until then, expired copies are served without a reload

    def peek(self, key: Hashable) -> Any | None:
        """The cached value, fresh or not, without loading (None if absent)."""
        entry = self._entries.get(key)
        return entry[0] if entry else None

    def loaded_at(self, key: Hashable) -> float | None:
        """When the cached value was loaded (this cache's clock), None if absent."""
        entry = self._entries.get(key)
        return entry[1] if entry else None

    def now(self) -> float:
        return self._clock()

    async def get(self, key: Hashable, loader: Callable[[], Awaitable[Any]]) -> Any:
        while True:
            entry = self._entries.get(key)
            if entry is not None and self._clock() - entry[1] < self.ttl:
                return entry[0]
            if entry is not None and self._clock() < self._outage_until:
                self.stale_served += 1
                return entry[0]
            pending = self._inflight.get(key)
            if pending is None:
                break
            await pending.wait()
            if key in self._errors and self._entries.get(key) is None:
                raise self._errors[key]
            entry = self._entries.get(key)
            if entry is not None:
                return entry[0]
        event = self._inflight[key] = trio.Event()
        self._errors.pop(key, None)
        try:
            self.loads += 1
            value = await loader()
        except BaseException as exc:
            stale = self._entries.get(key)
            if stale is not None and isinstance(exc, Exception):
                self.stale_served += 1
                self.last_stale_reason = f"{type(exc).__name__}: {exc}"
                log.warning("serving cached listing after a failed reload: %s", exc)
                # Fresh again for stale_grace seconds: don't retry a dead server on every lookup.
                self._entries[key] = (stale[0], self._clock() - self.ttl + self.stale_grace)
                if is_transient(exc):
                    self._outage_until = self._clock() + self.stale_grace
                return stale[0]
            if isinstance(exc, Exception):
                self._errors[key] = exc
            raise
        else:
            self._entries[key] = (value, self._clock())
            return value
        finally:
            del self._inflight[key]
            event.set()

    def expire(self, predicate: Callable[[Any], bool]) -> int:
        """Make matching entries stale without dropping them: the next access reloads, and if
        that reload fails (``refresh`` during an outage) the old listing is still served. An
        outage marked before is forgotten: a refresh asks the server, which may be back."""
        self._outage_until = float("-inf")
        doomed = [k for k in list(self._entries.keys()) if predicate(k)]
        for key in doomed:
            value, _ = self._entries[key]
            self._entries[key] = (value, float("-inf"))
        return len(doomed)

    def invalidate(self, predicate: Callable[[Any], bool]) -> int:
        doomed = [k for k in list(self._entries.keys()) if predicate(k)]
        for key in doomed:
            self._entries.pop(key, None)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)
