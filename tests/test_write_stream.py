"""The bookkeeping of parts sent while a file is written (``uploader._Stream``), without a mount:
a random mix of writes, truncates and parts sent must never leave a part counted as sent whose
bytes changed after it was read. The real-mount side is in test_write_spool.py."""

from __future__ import annotations

import math
import random

from basemount_py.write.uploader import _Stream

PART = 8


def test_a_write_into_a_sent_part_makes_it_unsent_and_one_in_flight_stale():
    s = _Stream(remote_path="x", settled=32)
    s.sent.update({1: PART, 2: PART, 3: PART})
    s.in_flight.add(4)
    s.low = 5
    s.dirty(9, 10, PART)  # inside part 2
    assert sorted(s.sent) == [1, 3] and s.low == 2 and not s.stale
    s.dirty(24, 25, PART)  # inside part 4, in flight
    assert s.stale == {4}
    s.dirty(7, 17, PART)  # across parts 1, 2 and 3
    assert not s.sent


def test_ready_gives_only_full_parts_while_open_and_the_last_one_after_close():
    s = _Stream(remote_path="x", settled=0)
    assert s.ready(3 * PART + 1, closed=False, part=PART, limit=10) == [1, 2, 3]
    s.in_flight.update({1, 2, 3})
    assert s.ready(3 * PART + 1, closed=False, part=PART, limit=10) == []
    assert s.ready(3 * PART + 1, closed=True, part=PART, limit=10) == [4]
    assert s.ready(9 * PART, closed=True, part=PART, limit=2) == [4, 5]  # at most ``limit``


def test_random_writes_and_sends_never_count_a_part_whose_bytes_changed():
    rng = random.Random(11)
    for _ in range(200):
        s = _Stream(remote_path="x", settled=0)
        size = 0
        version: dict[int, int] = {}  # part -> how many times its bytes changed
        sent_version: dict[int, int] = {}  # part -> version the server holds
        reading: dict[int, int] = {}  # part in flight -> version it read
        for _step in range(60):
            op = rng.random()
            if op < 0.45:  # a write (often sequential at the end)
                start = size if rng.random() < 0.6 else rng.randrange(0, size + 1)
                end = start + rng.randrange(1, 3 * PART)
                for n in range(start // PART + 1, (end - 1) // PART + 2):
                    version[n] = version.get(n, 0) + 1
                size = max(size, end)
                s.dirty(start, end, PART)
            elif op < 0.55:  # a truncate
                new = rng.randrange(0, size + 2 * PART)
                lo, hi = min(size, new), max(size, new)
                if hi > lo:
                    for n in range(lo // PART + 1, (hi - 1) // PART + 2):
                        version[n] = version.get(n, 0) + 1
                s.dirty(lo, hi, PART)
                size = new
            elif op < 0.8:  # parts start (they read their bytes now)
                for n in s.ready(size, closed=rng.random() < 0.3, part=PART, limit=3):
                    s.in_flight.add(n)
                    reading[n] = version.get(n, 0)
            elif reading:  # one part's PUT returns
                n = rng.choice(sorted(reading))
                s.in_flight.discard(n)
                if n in s.stale:
                    s.stale.discard(n)
                    s.low = min(s.low, n)
                else:
                    s.sent[n] = PART
                    sent_version[n] = reading[n]
                del reading[n]
            for n in s.sent:
                assert sent_version[n] == version.get(n, 0), (n, s.sent)
            # nothing is skipped: every part neither sent nor in flight is offered
            count = math.ceil(size / PART)
            unsent = [n for n in range(1, count + 1) if n not in s.sent and n not in s.in_flight]
            assert s.ready(size, closed=True, part=PART, limit=count + 1) == unsent
