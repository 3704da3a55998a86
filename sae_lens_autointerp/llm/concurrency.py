"""Bounded concurrency for many requests: ``[await job(x) for x in items]``, a few in flight at a time.

Shared by the LLM layer (a client's many classifications) and the scorers; it knows nothing of either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def map_bounded(items: Sequence[T], job: Callable[[T], Awaitable[R]], concurrency: int) -> list[R]:
    """``[await job(x) for x in items]`` with at most ``concurrency`` in flight, with :func:`gather_or_raise`'s
    rule (every job runs to the end, then the first exception in item order is raised).

    ``concurrency`` workers pull the next item, instead of one task per item behind a semaphore: a latent's
    hundred judge requests cost a handful of tasks, and a job that answers without waiting (a response-cache
    hit, a local judge) costs a function call, not a trip through the event loop."""
    results: list[Any] = [None] * len(items)
    queue = iter(range(len(items)))

    async def worker() -> None:
        for i in queue:
            try:
                results[i] = await job(items[i])
            except Exception as exc:  # kept in its slot; raised below once every job has finished
                results[i] = _Failed(exc)

    # return_exceptions: a KeyboardInterrupt / CancelledError out of a worker stays in its slot here (as in
    # gather_or_raise) instead of being thrown into this task while asyncio.run cancels and closes the rest
    workers = await asyncio.gather(
        *(worker() for _ in range(max(1, min(concurrency, len(items))))), return_exceptions=True
    )
    for escaped in workers:
        if isinstance(escaped, BaseException):
            raise escaped
    for res in results:
        if isinstance(res, _Failed):
            raise res.error
    return results


class _Failed:
    """A job's exception in :func:`map_bounded`'s results (a job may return an exception object itself)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
