"""The soak, short: 16 processes of ls/stat/sequential/random reads and 2 writers through one mount
for ~10 s with faults on (the 2-minute run is ``scripts/soak``; its figures are in docs/reliability.md).

Its faults: a schedule of one-shot faults of every kind (taken by the first requests of their
scope, so the run has at least MIN_FAULTS however slow the machine is) on top of the seeded random
mix of ``SOAK_FAULTS``, without random 429s from the API: to the daemon an API 429 is congestion
(api/budget.py), and the first one, while the budget is still at its starting rate, holds the
whole process at ~2 API requests/s for minutes. 16 readers whose listings expire every 5 s and 2
writers' uploads then queue behind it: the run did ~3 ops/s, had to be extended to reach its
faults, and its upload drain took minutes (247 s in all). That behaviour is the rate-limit tests'
subject (tests/test_rate_limit.py); here 429s come from the content host, which has no budget."""

from __future__ import annotations

import os

import pytest

from conftest import require_fuse

from basemount_py.options import MountOptions
from soak import SOAK_FAULTS, SOAK_OP_TIMEOUT, run_soak

MIN_FAULTS = 20  # the run is extended until the emulator injected this many (soak.run_soak)
CI_SECONDS = float(os.environ.get("BASEMOUNT_SOAK_SECONDS", "10"))
CI_FAULTS = dict(SOAK_FAULTS, throttle_rate=0.0)
# Every kind, API and content, spread over the kinds so that no request meets many in a row.
SCHEDULE = [("500", "api"), ("503", "content"), ("429", "content"), ("reset", "content"), ("truncate", "content")] * 4 + [("stall", "api")]
SCHEDULED_FAULTS = [{"kind": kind, "count": 1, "scope": scope} for kind, scope in SCHEDULE]
# Files per writer, spread over the run (all three ways of writing, ~25 MiB each): unpaced, two
# writers spooled ~150 MiB in 20 s, and the drain after the run took longer than the run.
WRITER_FILES = 15


def _check(result) -> None:
    print("\n" + result.summary())
    assert result.daemon_alive, "the daemon died during the soak"
    assert result.wrong_bytes == 0, result.wrong_ops
    assert result.hung_workers == 0
    # Retries absorb the injected faults; a failed op may only ever be a clean EIO.
    assert set(result.errors) <= {"EIO"}, result.errors
    assert sum(result.errors.values()) <= result.ops * 0.02, result.errors
    # Every system call is bounded (a read(2) may span two FUSE requests, each within the timeout).
    assert result.max_call < 2 * SOAK_OP_TIMEOUT + 5, result.max_call_what
    assert sum(result.faults_injected.values()) >= MIN_FAULTS, result.faults_injected
    assert {"ls", "stat", "seq", "random"} <= set(result.by_kind)
    # Writers: every file closed without error is on the server with its bytes, after the spool drained.
    assert result.files_written > 0 and not result.write_errors, result.write_errors
    assert (result.lost_files, result.wrong_files, result.failed_uploads) == (0, 0, 0), result.upload_problems
    # Bounded resources: the block cache is 64 MiB; connections are pooled (API and content host each).
    assert result.peak_rss_mib < 400, result.peak_rss_mib
    assert result.peak_sockets <= 2 * MountOptions.max_connections + 4, result.peak_sockets


# Bound: the run (extended up to 4x if the faults were not all taken) and the writers' upload
# drain with the faults still on (flush_and_wait allows 600 s), on a loaded machine.
@pytest.mark.timeout(1200)
def test_soak_short(tmp_path):
    require_fuse()
    result = run_soak(
        tmp_path, duration=CI_SECONDS, workers=16, writers=2, writer_files=WRITER_FILES, faults=CI_FAULTS, min_faults=MIN_FAULTS,
        scheduled_faults=SCHEDULED_FAULTS,
    )
    _check(result)
    assert {kind for kind, _ in SCHEDULE} <= set(result.faults_injected), result.faults_injected


@pytest.mark.slow
def test_soak_two_minutes(tmp_path):
    require_fuse()
    _check(run_soak(tmp_path, duration=120, workers=16, writers=4, min_faults=MIN_FAULTS))
