"""A pytest plugin that seeds ``random`` before each test: a sweep over seeds finds bounds that
only hold for some retry jitter (docs/testing.md, "Jitter").

In-process tests run on trio's MockClock, so their timing is exact except for the retry backoff's
jitter (``api.retry.RetryPolicy.backoff``: ``random.uniform``). A bound a test asserts must hold
for every jitter. This plugin makes each test's jitter a function of ``SWEEP_SEED`` and the test's
id, so a failure found by the sweep replays exactly, and it deselects the tests that start real
processes or mounts (their timing is the machine's, not the seed's):

    for s in $(seq 0 13); do
        PYTHONPATH=tests SWEEP_SEED=$s .venv/bin/python -m pytest -q -p seedsweep -n 2 tests/test_*.py
    done
"""

from __future__ import annotations

import inspect
import os
import random
import zlib

import pytest

# What a test that starts real processes or mounts uses (fixtures, or names in its body).
REAL = ("mount_factory", "EmulatorProcess", "Mount(", "subprocess", "cli_in_process", "plain_emulator", "shared_emulator", "require_fuse", "demo_mount")


def _starts_real_processes(item: pytest.Item) -> bool:
    try:
        source = inspect.getsource(item.function)  # type: ignore[attr-defined]
    except (OSError, TypeError, AttributeError):
        source = ""
    return any(name in source for name in REAL) or any(name in getattr(item, "fixturenames", ()) for name in REAL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    real = [item for item in items if _starts_real_processes(item)]
    items[:] = [item for item in items if not _starts_real_processes(item)]
    config.hook.pytest_deselected(items=real)


@pytest.fixture(autouse=True)
def _seed_per_test(request: pytest.FixtureRequest) -> None:
    random.seed(int(os.environ.get("SWEEP_SEED", "0")) * 1_000_003 + zlib.crc32(request.node.nodeid.encode()))
