"""How many CPU threads llama.cpp evaluates a prompt with, picked from measured speed.

ggml's CPU threads meet at a barrier after every operation (hundreds per forward pass), and llama.cpp's OpenMP
build spin-waits there: when another process holds one of the cores, every barrier waits for the descheduled
thread, so on a loaded 2-core machine 2 threads measured 7-14 prompt tokens/s where 1 thread did 90-140, while on
an idle machine 2 threads are ~2x faster than 1. The count does not change the arithmetic (each output element is
computed whole by one thread: logits are bit-identical), so :class:`ThreadTuner` picks it per evaluation from
measured seconds per token: the fastest so far, with now and then one probe of the runner-up, probed less often
while the choice keeps winning (so a wrong probe on a loaded machine costs little).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

#: Evaluations shorter than this are dominated by per-call overhead; they do not update the estimates.
MIN_TOKENS = 16


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def thread_options(cores: int | None = None) -> tuple[int, ...]:
    """1, the powers of two below ``cores``, and ``cores``: few enough that probing them all is cheap."""
    cores = available_cores() if cores is None else max(cores, 1)
    options = {1, cores}
    p = 2
    while p < cores:
        options.add(p)
        p *= 2
    return tuple(sorted(options))


class ThreadTuner:
    """Chooses a thread count per evaluation from measured seconds per token.

    Args:
        options: the thread counts to choose from; each is tried once first, the largest first (the fastest on an
            idle machine).
        first_probe: evaluations between probes right after a probe won (the choice changed).
        max_interval: the longest gap between probes (it doubles each time the current choice wins a probe).
        alpha: weight of a new measurement in the running estimate of the current choice.
    """

    def __init__(
        self, options: Sequence[int], *, first_probe: int = 4, max_interval: int = 64, alpha: float = 0.3
    ) -> None:
        if not options:
            raise ValueError("ThreadTuner needs at least one thread count")
        self.options = tuple(sorted(set(options), reverse=True))
        self.first_probe = first_probe
        self.max_interval = max_interval
        self.alpha = alpha
        self.cost: dict[int, float] = {}  # seconds per token
        self.uses: Counter[int] = Counter()  # evaluations run with each count
        self._interval = first_probe
        self._since_probe = 0
        self._probing: int | None = None

    def best(self) -> int:
        measured = [t for t in self.options if t in self.cost]
        return min(measured, key=lambda t: self.cost[t]) if measured else self.options[0]

    def pick(self) -> int:
        untried = [t for t in self.options if t not in self.cost]
        if untried:
            return untried[0]
        best = self.best()
        if len(self.options) > 1 and self._since_probe >= self._interval:
            self._probing = min((t for t in self.options if t != best), key=lambda t: self.cost[t])
            return self._probing
        return best

    def record(self, threads: int, seconds: float, tokens: int) -> None:
        self.uses[threads] += 1
        if tokens < MIN_TOKENS:
            return
        per_token = seconds / tokens
        if threads == self._probing or threads not in self.cost:
            # a probe's estimate is stale (made under another load): the fresh measurement replaces it
            before = self.best() if self.cost else None
            self.cost[threads] = per_token
            if threads == self._probing:
                won = self.best() != before
                self._interval = self.first_probe if won else min(2 * self._interval, self.max_interval)
                self._since_probe = 0
                self._probing = None
            return
        self.cost[threads] += self.alpha * (per_token - self.cost[threads])
        self._since_probe += 1
