"""How concurrent and background work fails, written once.

``gather`` runs jobs together and raises the first failure as itself (never an ExceptionGroup:
callers map one error to one errno). ``never_fatal`` is the boundary of work that must not die and
has no one to report to (a background task, a kernel request without a reply, shutdown): the
failure is logged and dropped there, and nowhere else.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Awaitable, Callable, Iterator, Sequence, TypeVar

import trio

T = TypeVar("T")


async def gather(jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``jobs`` concurrently; their results in order, or the first error raised as itself once
    every job has ended. A single job runs inline (no nursery)."""
    if len(jobs) == 1:
        return [await jobs[0]()]
    results: list = [None] * len(jobs)
    errors: list[Exception] = []

    async def run(index: int) -> None:
        try:
            results[index] = await jobs[index]()
        except Exception as exc:  # not swallowed: the first one is raised below, as itself
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for index in range(len(jobs)):
            nursery.start_soon(run, index)
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def never_fatal(logger: logging.Logger, what: str, *args: object, level: int = logging.WARNING) -> Iterator[None]:
    """Log a failure of the block (``what % args: error``) and carry on. At ``logging.ERROR`` the
    traceback is logged too: the failure is then a bug. Cancellation passes through."""
    try:
        yield
    except Exception as exc:  # the boundary itself: see the module docstring
        if level >= logging.ERROR:
            logger.exception(what, *args)
        else:
            logger.log(level, what + ": %s", *args, exc)
