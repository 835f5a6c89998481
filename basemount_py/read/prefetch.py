"""Access-pattern logic for one open file: pure arithmetic, no I/O, no trio.

:class:`AccessPattern` watches the reads of one handle and answers, for each read, two questions:

* **How much to fetch now** (``demand_end``): in random mode a read is widened to what the recent
  reads looked like (their average size, clamped to ``random_min..random_max``) so index lookups that
  read a little past the first request do not cost a second round trip; never a long stream.
* **What should be in flight ahead of the reader** (``prefetch_end``): once the reads are
  sequential, a window that starts at ``first_window`` (1 MiB + 128 KiB: the kernel asks for 128 KiB
  of readahead beyond what the reader wanted, so a 1 MiB window alone would cost a second trip) and
  doubles on every further sequential read up to ``max_window``.

What counts as sequential (mountpoint-s3 / hf-mount rules, adapted to the kernel's readahead):

* a read starting at offset 0 of a fresh handle (``cp``, ``cat``, ``md5sum`` start there);
* a read starting exactly where the previous one ended;
* while a stream is live, a read starting up to ``back_tolerance`` before the end of the previous
  read (kernel readahead requests arrive out of order) or a forward skip of up to
  ``forward_tolerance`` (the data is probably already in flight, so skipping a little is cheaper
  than resetting).

How far out of order: with 1 MiB READs, a 4 MiB readahead and up to 12 requests in the daemon at
once (each a trio task, which trio runs in a shuffled order), a ``cp`` on the wan profile had 48
reads per GiB arrive 4-14 MiB behind the end of the stream. With a tolerance of 256 KiB (enough for
the 128 KiB READs of old) each of them was taken for a seek: the window fell to zero and ramped up
again in small parts, 397 GETs per GiB instead of about 260 (docs/performance.md, "Fourth round").
So the tolerance matches the forward one, 16 MiB.

Anything else is a seek: the window collapses to zero and the handle is in random mode until a
read continues exactly where the previous one ended (random reads almost never do). A read that
lies wholly inside the last ``back_tolerance`` bytes (a late readahead request, a re-read) neither
advances nor resets the stream.

:func:`split_parts` cuts the range to prefetch into parts fetched in parallel: the part size grows
with the window (a quarter of it, so even a small window is four parallel requests) up to
``part_max`` (4 MiB: the largest window, 96 MiB, is then 24 parts, one per connection; with 8 MiB
parts a 50 MB/s-per-connection link had only 8 requests in flight and ``--direct-io`` reads on the
``wan`` profile stalled at 340 MB/s, 476 MB/s with 4 MiB — docs/performance.md. Each part pays
the link's latency once, so a mount needs more parts in flight than a downloader that fetches
whole slices: on the ``wan`` model, in virtual time, 16 parts in flight stream at 0.64× 16
whole-slice GETs and 24 parts at 0.85× (tests/test_read_logic.py; "Sixth round").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import KiB, MiB, MountOptions


@dataclass(frozen=True)
class PrefetchConfig:
    block_size: int = 64 * KiB
    first_window: int = 1 * MiB + 128 * KiB
    max_window: int = MountOptions.prefetch_max
    growth: int = 2
    part_max: int = 4 * MiB
    back_tolerance: int = 16 * MiB
    forward_tolerance: int = 16 * MiB
    random_min: int = 64 * KiB
    random_max: int = 1 * MiB

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.part_max < self.block_size:
            raise ValueError("block_size must be positive and part_max at least one block")
        if self.growth < 1 or self.max_window < 0 or self.first_window < 0:
            raise ValueError("window sizes must be non-negative and growth >= 1")


@dataclass(frozen=True)
class Plan:
    """What to do for one read: fetch ``[offset, demand_end)`` now, keep ``[.., prefetch_end)`` coming."""

    sequential: bool
    demand_end: int
    prefetch_end: int  # == demand_end when nothing is to be prefetched


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class AccessPattern:
    """Sequential/random detector with a geometrically growing window (see module docstring)."""

    def __init__(self, size: int, config: PrefetchConfig = PrefetchConfig()):
        self.size = size
        self.config = config
        self.last_end: int | None = None  # end of the previous read; None before the first read
        self.streak = 0  # consecutive sequential reads
        self.window = 0
        self.avg_read = 0.0  # moving average of read sizes, for random-mode sizing

    def observe(self, offset: int, length: int, *, window_cap: int | None = None) -> Plan:
        """Record a read of ``length`` bytes at ``offset`` and return the plan for it.

        ``window_cap`` lets the caller shrink the window below ``max_window`` (memory pressure:
        the global cache is shared by every open handle)."""
        cfg = self.config
        end = min(self.size, offset + max(0, length))
        kind = self._classify(offset, end)
        self.avg_read = length if self.avg_read == 0 else 0.75 * self.avg_read + 0.25 * length
        if kind == "advance":
            self.streak += 1
            self.last_end = max(end, self.last_end or 0)
        elif kind == "seek":
            self.streak = 0
            self.window = 0
            self.last_end = end
        # "behind" (a late readahead request, a re-read just behind us) changes nothing.

        # A fresh handle reading from 0 streams at once (streak 1); after a seek, the first read
        # that continues where the previous one ended does.
        streaming = self.streak >= 1
        if streaming or (kind == "behind" and self.window > 0):
            if kind == "advance":
                self.window = cfg.first_window if self.window == 0 else self.window * cfg.growth
            limit = cfg.max_window if window_cap is None else min(cfg.max_window, window_cap)
            self.window = max(0, min(self.window, limit))
            prefetch_end = min(self.size, (self.last_end or end) + self.window)
            return Plan(True, end, max(end, prefetch_end))

        # Random mode: widen to the typical read size, block aligned, but never a stream.
        want = min(cfg.random_max, max(cfg.random_min, int(self.avg_read), length))
        demand_end = min(self.size, max(end, round_up(offset + want, cfg.block_size)))
        return Plan(kind != "seek", demand_end, demand_end)

    def _classify(self, offset: int, end: int) -> str:
        """ "advance" (sequential progress), "behind" (inside what was just read) or "seek"."""
        cfg = self.config
        if self.last_end is None:
            return "advance" if offset == 0 else "seek"
        if self.window == 0:
            # No live stream: only an exact continuation starts one. The tolerances below exist for
            # the kernel's readahead *within* a stream; applied to random reads they would turn
            # every read that happens to land near the previous one into a 1 MiB prefetch.
            return "advance" if offset == self.last_end else "seek"
        if self.last_end - cfg.back_tolerance <= offset <= self.last_end:
            return "advance" if end > self.last_end else "behind"
        if self.last_end < offset <= self.last_end + cfg.forward_tolerance:
            return "advance"
        return "seek"


def part_size(window: int, config: PrefetchConfig) -> int:
    """Parts are a quarter of the window (parallelism even while it is small), block aligned."""
    return max(config.block_size, min(config.part_max, round_up(max(1, window // 4), config.block_size)))


def split_parts(start: int, end: int, part: int, block_size: int) -> list[tuple[int, int]]:
    """Cut ``[start, end)`` into consecutive block-aligned pieces of at most ``part`` bytes.

    ``start`` must be block aligned; ``end`` is the file size or block aligned."""
    if start % block_size:
        raise ValueError("prefetch parts must start on a block boundary")
    part = max(block_size, part - part % block_size)
    return [(a, min(end, a + part)) for a in range(start, end, part)]
