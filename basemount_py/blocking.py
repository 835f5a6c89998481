"""The one home for running blocking work (file I/O, hashing) from async code.

Whoever does blocking work in a handler takes a ``RunBlocking`` and awaits
``run_blocking(func, *args)``. In production that is ``in_worker_thread``: the work runs in a
worker thread, so the event loop never blocks (trio in the mount; asyncio, or trio, under the
emulator's server: it goes through anyio, which runs on both).

Tests that run the filesystem core and the emulator in-process on trio's MockClock
(``autojump_threshold=0``, tests/inprocess.py) pass ``inline`` instead: while a worker thread
runs, every task looks idle to trio, so the mock clock would jump to the next deadline and fire
timeouts that a real run never meets. Inline, the work is done on the spot (after a checkpoint,
so cancellation and scheduling stay as with a thread), and virtual time stands still meanwhile.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import anyio
import anyio.lowlevel
import anyio.to_thread

RunBlocking = Callable[..., Awaitable[Any]]


async def in_worker_thread(func: Callable[..., Any], /, *args: Any) -> Any:
    """``func(*args)`` in a worker thread (trio's or asyncio's default limiter of the loop)."""
    return await anyio.to_thread.run_sync(func, *args)


async def inline(func: Callable[..., Any], /, *args: Any) -> Any:
    """``func(*args)`` right here, on the event loop: for in-process tests on a mock clock only."""
    await anyio.lowlevel.checkpoint()
    return func(*args)


__all__ = ["RunBlocking", "in_worker_thread", "inline"]
