"""The runner: latents in blocks, at most ``concurrency`` in flight, one record per finished latent, a breaker.

Latents go in blocks of :data:`~sae_lens_autointerp.controls.CONTROL_BLOCK` (in the order given): first every
latent of the block is prepared (sampled and explained), then finished (scored, with its controls, whose
explanations come from the other latents of the block). What a latent takes is the :class:`Work`'s: in this
process :class:`~.work.LatentWork`, on Ray the distributed executor's. The runner owns the bookkeeping: what
is finished (resume), what is written, what is incomplete and why, and the circuit breaker that stops the run
after ``max_failures`` latents in a row fail on the infrastructure, cancelling the latents then in flight (each
would wait for its own timeouts against the failing backend; nothing of theirs is written, and what they were
answered is in the response cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..controls import CONTROL_BLOCK
from ..llm import BudgetExceeded
from ..records import Explanation
from ..results import ResultsFile, encode_record
from ..sampling import LatentSample
from .contract import explanation_from, quarantine
from .flags import Tally


class Incomplete(Exception):
    """A latent could not finish because of the infrastructure (never the judge)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage, self.error = stage, error


@dataclass
class Prepared:
    """A latent between the two halves of its block: its sample (None where another process holds it) and
    explanation, and what it finished in an earlier, incomplete attempt."""

    sample: LatentSample | None
    explanation: Explanation | None
    scores: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Prepared:
        """The latent as another process sent it (:meth:`state`), without its sample."""
        e = state["explanation"]
        explanation = explanation_from(e) if e is not None else None
        return cls(None, explanation, dict(state["scores"] or {}), dict(state["controls"] or {}))

    def state(self) -> dict[str, Any]:
        """What another process needs to finish the latent (the explanation as a record holds it)."""
        e = self.explanation
        return {"explanation": e.to_dict() if e is not None else None, "scores": self.scores, "controls": self.controls}


class Outcomes(Protocol):
    """Where a latent's outcome goes: written as finished (or skipped), or as incomplete; and a reason the
    work cannot go on (the run stops, its unfinished latents stay incomplete)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def fail(self, latent: int, record: dict[str, Any], failure: Incomplete) -> None: ...

    def stop(self, reason: str) -> None: ...


class Work(Protocol):
    """What the runner runs per latent. ``parallel``: copies of the work side by side (the runner keeps
    ``concurrency`` latents in flight per copy); ``backend``: the LLM backend, as the breaker names it."""

    parallel: int
    tally: Tally

    @property
    def backend(self) -> str: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def prepare(self, latent: int, partial: dict[str, Any] | None, out: Outcomes) -> Prepared | None: ...

    async def finish(self, latent: int, item: Prepared, pool: dict[int, str], out: Outcomes) -> None: ...


class Runner:
    """Runs ``work`` over a run's latents, writing each latent's record to ``results`` under ``run_key``."""

    def __init__(
        self, work: Work, results: ResultsFile, run_key: str, *, max_failures: int = 3, progress: bool = True
    ) -> None:
        self.work, self.results, self.run_key = work, results, run_key
        self.max_failures, self.progress = max_failures, progress
        self.stopped: str | None = None
        self.incomplete: dict[int, str] = {}
        self.written: set[int] = set()  # latents of the current block written as finished
        self._failures_in_a_row = 0
        self._bar: Any = None
        self._in_flight: dict[int, asyncio.Task[Any]] = {}  # latent -> the task running it (the breaker cancels)
        self._cancelled: set[int] = set()

    async def run(self, latents: list[int], concurrency: int) -> str | None:
        """Run every latent not finished yet; the records go to ``self.results`` (nothing is kept here).
        Returns why the run stopped early, or None."""
        from tqdm.auto import tqdm

        self.results.repair()
        finished = self.results.finished(self.run_key)
        partial = self.results.partial(self.run_key)
        is_done = np.isin(np.asarray(latents, dtype=np.int64), finished)
        del finished
        self._bar = tqdm(
            total=len(latents), initial=int(is_done.sum()), unit="latent", desc="autointerp", disable=not self.progress
        )
        in_flight = concurrency * self.work.parallel
        await self.work.open()
        try:
            for i in range(0, len(latents), CONTROL_BLOCK):
                block, block_done = latents[i : i + CONTROL_BLOCK], is_done[i : i + CONTROL_BLOCK]
                todo = [lat for lat, d in zip(block, block_done, strict=True) if not d]
                if not todo:
                    continue
                if self.stopped:
                    for lat in todo:
                        self.incomplete.setdefault(lat, f"not started: {self.stopped}")
                    continue
                done = [x for x, d in zip(block, block_done, strict=True) if d]
                await self._block(todo, done, partial, in_flight)
        finally:
            try:
                await self.work.close()
            finally:
                self.results.close()
                self._bar.close()
        return self.stopped

    async def _block(
        self, todo: list[int], done: list[int], partial: dict[int, dict[str, Any]], concurrency: int
    ) -> None:
        """Prepare the block's unfinished latents, then finish them with the explanations of the whole block
        (those finished in earlier runs included) as the controls' pool."""
        prepared: dict[int, Prepared] = {}

        async def prepare(latent: int) -> None:
            item = await self.work.prepare(latent, partial.get(latent), self)
            if item is not None:
                prepared[latent] = item

        await bounded(todo, self._cancellable(prepare), concurrency, lambda: self.stopped is not None)
        texts: dict[int, str | None] = dict(self.results.explanation_texts(self.run_key, done))
        texts.update(
            {
                lat: p.explanation.text
                for lat, p in prepared.items()
                if p.explanation is not None and not p.explanation.failed
            }
        )
        pool: dict[int, str] = {k: v for k, v in texts.items() if v}

        async def finish(latent: int) -> None:
            await self.work.finish(latent, prepared[latent], pool, self)

        await bounded(
            [lat for lat in todo if lat in prepared],
            self._cancellable(finish),
            concurrency,
            lambda: self.stopped is not None,
        )
        for lat in todo:
            if lat not in self.written and lat not in self.incomplete:
                self.incomplete[lat] = f"not started: {self.stopped}" if self.stopped else "not started"
        self.written.clear()
        self.results.sync()

    def _cancellable(self, job: Callable[[int], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
        """``job`` with its task registered while it runs, so that the breaker can cancel it: a latent the
        breaker cancels ends here, unwritten (incomplete; its answers so far are in the response cache)."""

        async def run(latent: int) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._in_flight[latent] = task
            try:
                await job(latent)
            except asyncio.CancelledError:
                if latent not in self._cancelled:
                    raise  # cancelled from outside (Ctrl-C, the caller): not ours to swallow
                if hasattr(task, "uncancel"):
                    task.uncancel()
                self.incomplete.setdefault(latent, f"cancelled in flight: {self.stopped}")
            finally:
                self._in_flight.pop(latent, None)

        return run

    def _cancel_in_flight(self) -> None:
        """The breaker tripped: cancel the other latents in flight. Each would otherwise wait for its own
        timeouts and retries against the failing backend (a hanging one: two read timeouts each), and a worker
        freed by the failures just before the trip would already have started a new one."""
        current = asyncio.current_task()
        for latent, task in list(self._in_flight.items()):
            if task is not current and not task.done():
                self._cancelled.add(latent)
                task.cancel()

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record``, encoded once. Where a plugin's output cannot be written (not JSON, a NaN), that
        scorer's entry (or control) becomes the error it is, naming the plugin, and the rest is kept."""
        try:
            line = encode_record(record)
        except (TypeError, ValueError):
            quarantine(record)
            line = encode_record(record)  # anything still failing is a bug of ours: it raises
        self.results.append(record, line)

    def write(self, record: dict[str, Any]) -> None:
        """Write a finished (or skipped) latent's record."""
        self.append(record)
        self.written.add(record["latent"])
        self._failures_in_a_row = 0
        self._bar.update(1)

    def stop(self, reason: str) -> None:
        """Start no more latents (the first reason given is the one reported)."""
        self.stopped = self.stopped or reason

    def fail(self, latent: int, record: dict[str, Any], failure: Incomplete) -> None:
        """Keep what the latent finished (an ``incomplete`` record the next run resumes from) and count the
        infrastructure failure; trip the breaker after too many in a row."""
        record["incomplete"] = {"stage": failure.stage, "error": f"{type(failure.error).__name__}: {failure.error}"}
        self.append(record)
        self.incomplete[latent] = str(failure)
        if isinstance(failure.error, BudgetExceeded):
            self.stop(str(failure.error))
            return
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self.max_failures and not self.stopped:
            self.stopped = (
                f"stopped after {self._failures_in_a_row} latents in a row failed on the LLM backend "
                f"{self.work.backend}: {failure}. Finished latents and every answer already received are kept; "
                "rerun the same command once the backend works again and only the unfinished latents are redone."
            )
            self._cancel_in_flight()


async def bounded(
    items: list[int], job: Callable[[int], Awaitable[None]], concurrency: int, stop: Callable[[], bool]
) -> None:
    """Run ``job(item)`` for every item with at most ``concurrency`` in flight, until ``stop()``."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            if stop():
                return
            await job(item)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
