"""Token usage, dollar estimates and budgets, shared by a whole run.

One :class:`UsageTracker` is passed to every client of a run (``get_client(..., usage=tracker)``); it keeps
totals per stage (``"explain"``, each scorer) and per (stage, latent), turns them into dollars with a
user-supplied :class:`PriceTable`, and enforces a budget in tokens or dollars: before a request is sent,
the tracker reserves its worst case (estimated prompt tokens + ``max_tokens``); when that would pass the
limit it raises :class:`BudgetExceeded` and refuses every later request, while everything already finished
(or in flight) is kept. Responses served from the response cache cost nothing and are counted apart.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from .errors import BudgetExceeded

PER = 1_000_000  # prices are in dollars per million tokens, as providers list them


@dataclass(frozen=True)
class Usage:
    """Tokens of one request (or a sum of requests).

    ``cached_tokens`` are prompt tokens the *server* (or the local engine) took from its prefix cache, as
    reported in OpenAI's ``prompt_tokens_details.cached_tokens``; they are included in ``prompt_tokens``.
    Responses served from our own response cache are counted separately by :class:`UsageTracker`.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens. ``cached_input`` defaults to ``input`` (no discount)."""

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, usage: Usage) -> float:
        cached_rate = self.input if self.cached_input is None else self.cached_input
        fresh = max(usage.prompt_tokens - usage.cached_tokens, 0)
        return (fresh * self.input + usage.cached_tokens * cached_rate + usage.completion_tokens * self.output) / PER


class PriceTable:
    """``{model: Price}``; looked up by the client's full name (``"openai:gpt-4o-mini"``), then the model
    name after the prefix (``"gpt-4o-mini"``), then ``"*"``. Values may be :class:`Price`, a dict
    ``{"input": .., "output": .., "cached_input": ..}`` or a tuple ``(input, output[, cached_input])``.
    A model with no price costs ``nan`` dollars (unknown), and a dollar budget then refuses to run it."""

    def __init__(self, prices: Mapping[str, Any] | None = None) -> None:
        self._prices: dict[str, Price] = {}
        for model, p in (prices or {}).items():
            if isinstance(p, Price):
                price = p
            elif isinstance(p, Mapping):
                price = Price(**p)
            else:
                price = Price(*p)
            self._prices[model] = price

    def get(self, model: str) -> Price | None:
        if model in self._prices:
            return self._prices[model]
        short = model.split(":", 1)[1] if ":" in model else model
        return self._prices.get(short, self._prices.get("*"))

    def cost(self, model: str, usage: Usage) -> float:
        price = self.get(model)
        return math.nan if price is None else price.cost(usage)

    def __bool__(self) -> bool:
        return bool(self._prices)


@dataclass
class UsageTotals:
    """Sums over a set of requests.

    ``requests`` counts requests the backend answered (a request answered after three retries counts once);
    ``attempts`` counts every try sent to the backend, answered or not (each retry, and the last try of a
    request that failed); ``retries`` the tries after a request's first; ``failures`` the requests that got
    no usable answer (an error after the retries, a refusal, or one not sent because the backend was failing
    fast). A hanging server's 5 requests tried twice each: ``requests 0, attempts 10, retries 5, failures 5``.
    ``cache_hits`` / ``cache_hit_tokens`` count answers taken from the response cache (tokens not spent
    again; never an attempt)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_hits: int = 0
    cache_hit_tokens: int = 0
    retries: int = 0
    failures: int = 0
    cost: float = 0.0
    attempts: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["total_tokens"] = self.total_tokens
        return d


@dataclass
class Reservation:
    """The worst case of one in-flight request, held against the budget until it finishes."""

    tokens: int
    dollars: float
    released: bool = False


@dataclass
class _Budget:
    tokens: int | None = None
    dollars: float | None = None
    exhausted: str | None = None  # the message, once exhausted
    reserved_tokens: int = 0
    reserved_dollars: float = 0.0
    refused: int = 0
    stages: set[str] = field(default_factory=set)


class UsageTracker:
    """Per-stage / per-latent usage of one run, its cost, and its budget. Thread-safe."""

    def __init__(
        self,
        prices: PriceTable | Mapping[str, Any] | None = None,
        budget_tokens: int | None = None,
        budget_dollars: float | None = None,
    ) -> None:
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable(prices)
        for name, value in (("budget_tokens", budget_tokens), ("budget_dollars", budget_dollars)):
            if value is not None and (
                isinstance(value, (bool, str)) or not isinstance(value, (int, float)) or value < 0
            ):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if budget_dollars is not None and not self.prices:
            raise ConfigError(
                "budget_dollars needs prices to turn tokens into dollars: pass prices={'MODEL': [input, output]} "
                "($ per million tokens), or budget_tokens= instead"
            )
        self._budget = _Budget(tokens=budget_tokens, dollars=budget_dollars)
        self._lock = threading.Lock()
        self._stage: dict[str, UsageTotals] = {}
        self._latent: dict[tuple[str, int | None], UsageTotals] = {}
        # latent -> {stage: totals}: the same objects as in ``_latent``, so one latent's usage is found in O(1)
        self._per_latent: dict[int | None, dict[str, UsageTotals]] = {}
        self._model: dict[str, UsageTotals] = {}
        self._total = UsageTotals()

    def __getstate__(self) -> dict[str, Any]:  # picklable (a client sent to another process): the lock is not
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- budget ----------------------------------------------------------------------------------------

    @property
    def budget_exhausted(self) -> bool:
        return self._budget.exhausted is not None

    @property
    def budget_message(self) -> str | None:
        """Why the run stopped issuing requests (``None`` while within budget)."""
        return self._budget.exhausted

    @property
    def has_budget(self) -> bool:
        """Whether a token or dollar budget is set (without one, :meth:`reserve` only books numbers)."""
        return self._budget.tokens is not None or self._budget.dollars is not None

    def reserve(self, model: str, stage: str, prompt_tokens: int, max_tokens: int) -> Reservation:
        """Hold a request's worst case against the budget, or raise :class:`BudgetExceeded`."""
        worst = Usage(prompt_tokens=prompt_tokens, completion_tokens=max_tokens)
        dollars = self.prices.cost(model, worst) if self._budget.dollars is not None else 0.0
        with self._lock:
            b = self._budget
            if b.exhausted is None:
                over = None
                if (
                    b.tokens is not None
                    and self._total.total_tokens + b.reserved_tokens + worst.total_tokens > b.tokens
                ):
                    over = (
                        f"token budget {b.tokens:,} reached: {self._total.total_tokens:,} spent, "
                        f"{b.reserved_tokens:,} in flight, next request needs up to {worst.total_tokens:,}"
                    )
                elif b.dollars is not None and math.isnan(dollars):
                    over = f"dollar budget set but no price for model {model!r} in the price table"
                elif b.dollars is not None and self._total.cost + b.reserved_dollars + dollars > b.dollars:
                    over = (
                        f"dollar budget ${b.dollars:.4f} reached: ${self._total.cost:.4f} spent, "
                        f"${b.reserved_dollars:.4f} in flight, next request may cost ${dollars:.4f}"
                    )
                if over is not None:
                    b.exhausted = (
                        f"{over}. Stopped issuing new requests at stage {stage!r}; "
                        f"{self._total.requests} finished requests are kept."
                    )
            if b.exhausted is not None:
                b.refused += 1
                b.stages.add(stage)
                raise BudgetExceeded(b.exhausted)
            b.reserved_tokens += worst.total_tokens
            b.reserved_dollars += dollars
            return Reservation(tokens=worst.total_tokens, dollars=dollars)

    def release(self, reservation: Reservation | None) -> None:
        if reservation is None or reservation.released:
            return
        with self._lock:
            reservation.released = True
            self._budget.reserved_tokens -= reservation.tokens
            self._budget.reserved_dollars -= reservation.dollars

    # -- recording -------------------------------------------------------------------------------------

    def _rows(self, model: str, stage: str, latent: int | None) -> tuple[UsageTotals, ...]:
        # get before creating: setdefault(k, UsageTotals()) would build a row per request to throw away
        row = self._latent.get((stage, latent))
        if row is None:
            row = self._latent[(stage, latent)] = UsageTotals()
            self._per_latent.setdefault(latent, {})[stage] = row
        stage_row = self._stage.get(stage)
        if stage_row is None:
            stage_row = self._stage[stage] = UsageTotals()
        model_row = self._model.get(model)
        if model_row is None:
            model_row = self._model[model] = UsageTotals()
        return self._total, stage_row, row, model_row

    def record(self, model: str, stage: str, latent: int | None, usage: Usage, *, cached: bool = False) -> None:
        """Count one finished request (``cached=True``: served from the response cache, cost nothing)."""
        # no price table: the cost is unknown (nan, never added), so skip the look-up per request
        cost = 0.0 if cached else self.prices.cost(model, usage) if self.prices else math.nan
        with self._lock:
            for t in self._rows(model, stage, latent):
                if cached:
                    t.cache_hits += 1
                    t.cache_hit_tokens += usage.total_tokens
                    continue
                t.requests += 1
                t.attempts += 1
                t.prompt_tokens += usage.prompt_tokens
                t.completion_tokens += usage.completion_tokens
                t.cached_tokens += usage.cached_tokens
                if not math.isnan(cost):
                    t.cost += cost

    def record_many(
        self,
        model: str,
        stage: str,
        latent: int | None,
        usages: Sequence[Usage],
        failures: int = 0,
        unanswered: int = 0,
    ) -> None:
        """:meth:`record` of each of ``usages`` (in order) and :meth:`record_failure` ``failures`` times
        (``unanswered`` of them with ``attempted=True``), under one lock: the same totals as one call per
        request (each cost added one by one, so the float sums match)."""
        if not usages and not failures:
            return  # as no call at all: no row is created
        costs = [self.prices.cost(model, u) for u in usages] if self.prices else []
        costs = [c for c in costs if not math.isnan(c)]
        prompt = sum(u.prompt_tokens for u in usages)
        completion = sum(u.completion_tokens for u in usages)
        cached = sum(u.cached_tokens for u in usages)
        with self._lock:
            for t in self._rows(model, stage, latent):
                t.requests += len(usages)
                t.attempts += len(usages) + unanswered
                t.prompt_tokens += prompt
                t.completion_tokens += completion
                t.cached_tokens += cached
                t.failures += failures
                for c in costs:
                    t.cost += c

    def record_retry(self, model: str, stage: str, latent: int | None) -> None:
        """A try that failed and is tried again (one attempt)."""
        with self._lock:
            for t in self._rows(model, stage, latent):
                t.retries += 1
                t.attempts += 1

    def record_failure(self, model: str, stage: str, latent: int | None, *, attempted: bool = False) -> None:
        """A request without a usable answer; ``attempted``: its last try was sent and got no answer (an
        error), so it is counted as an attempt too (a refused answer was counted by :meth:`record`)."""
        with self._lock:
            for t in self._rows(model, stage, latent):
                t.failures += 1
                t.attempts += attempted

    # -- several processes ------------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """Everything counted, as plain data: a tracker in another process :meth:`absorb` s it (the workers of a
        distributed run report to the driver's tracker)."""
        with self._lock:
            return {
                "total": asdict(self._total),
                "stages": {k: asdict(v) for k, v in self._stage.items()},
                "latents": [[s, lat, asdict(v)] for (s, lat), v in self._latent.items()],
                "models": {k: asdict(v) for k, v in self._model.items()},
                "budget": {"exhausted": self._budget.exhausted, "refused": self._budget.refused},
            }

    def absorb(self, exported: Mapping[str, Any]) -> None:
        """Add what another tracker counted (its :meth:`export`)."""

        def add(into: UsageTotals, counts: Mapping[str, Any]) -> None:
            for name in asdict(into):
                setattr(into, name, getattr(into, name) + counts.get(name, 0))

        with self._lock:
            add(self._total, exported["total"])
            for k, v in exported["stages"].items():
                add(self._stage.setdefault(k, UsageTotals()), v)
            for stage, lat, v in exported["latents"]:
                row = self._latent.get((stage, lat))
                if row is None:  # both indexes, as _rows keeps them
                    row = self._latent[(stage, lat)] = UsageTotals()
                    self._per_latent.setdefault(lat, {})[stage] = row
                add(row, v)
            for k, v in exported["models"].items():
                add(self._model.setdefault(k, UsageTotals()), v)
            budget = exported["budget"]
            self._budget.refused += budget["refused"]
            if budget["exhausted"] and self._budget.exhausted is None:
                self._budget.exhausted = budget["exhausted"]

    # -- reading ---------------------------------------------------------------------------------------

    def total(self) -> UsageTotals:
        with self._lock:
            return _copy(self._total)

    def by_stage(self) -> dict[str, UsageTotals]:
        with self._lock:
            return {k: _copy(v) for k, v in self._stage.items()}

    def by_latent(self) -> dict[tuple[str, int | None], UsageTotals]:
        with self._lock:
            return {k: _copy(v) for k, v in self._latent.items()}

    def for_latent(self, latent: int | None) -> dict[str, UsageTotals]:
        """One latent's usage per stage, in O(1) (copies; empty when it made no request)."""
        with self._lock:
            return {k: _copy(v) for k, v in self._per_latent.get(latent, {}).items()}

    def forget_latent(self, latent: int | None) -> dict[str, UsageTotals]:
        """Remove one latent's per-stage rows (the run, stage and model totals keep them) and return them: a
        long run calls it once the latent's record holds its usage, so the tracker stays small."""
        with self._lock:
            rows = self._per_latent.pop(latent, {})
            for stage in rows:
                self._latent.pop((stage, latent), None)
            return rows

    def by_model(self) -> dict[str, UsageTotals]:
        with self._lock:
            return {k: _copy(v) for k, v in self._model.items()}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (stage, latent): ready for ``pandas.DataFrame(tracker.rows())`` or JSON."""
        return [
            {"stage": s, "latent": lat, **t.as_dict()}
            for (s, lat), t in sorted(
                self.by_latent().items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])
            )
        ]

    def summary(self) -> dict[str, Any]:
        """JSON-able totals: run, per stage, per model, and the budget state."""
        b = self._budget
        return {
            "total": self.total().as_dict(),
            "stages": {k: v.as_dict() for k, v in self.by_stage().items()},
            "models": {k: v.as_dict() for k, v in self.by_model().items()},
            "budget": {
                "tokens": b.tokens,
                "dollars": b.dollars,
                "exhausted": b.exhausted is not None,
                "message": b.exhausted,
                "refused_requests": b.refused,
            },
            "priced": bool(self.prices),
        }

    def format(self) -> str:
        """A short human-readable report."""
        lines = [
            f"{'stage':<16}{'requests':>9}{'attempts':>9}{'prompt':>10}{'completion':>11}{'cached':>8}"
            f"{'hits':>6}{'retries':>8}{'fails':>6}{'cost $':>10}"
        ]
        items: Sequence[tuple[str, UsageTotals]] = [*sorted(self.by_stage().items()), ("TOTAL", self.total())]
        for name, t in items:
            cost = f"{t.cost:.4f}" if self.prices else "-"
            lines.append(
                f"{name:<16}{t.requests:>9}{t.attempts:>9}{t.prompt_tokens:>10}{t.completion_tokens:>11}"
                f"{t.cached_tokens:>8}{t.cache_hits:>6}{t.retries:>8}{t.failures:>6}{cost:>10}"
            )
        if self._budget.exhausted:
            lines.append(f"BUDGET: {self._budget.exhausted}")
        return "\n".join(lines)


def _copy(t: UsageTotals) -> UsageTotals:
    return UsageTotals(
        t.requests,
        t.prompt_tokens,
        t.completion_tokens,
        t.cached_tokens,
        t.cache_hits,
        t.cache_hit_tokens,
        t.retries,
        t.failures,
        t.cost,
        t.attempts,
    )


def estimate_prompt_tokens(messages: Sequence[tuple[str, str]]) -> int:
    """A deliberately generous token estimate for budget reservations (no tokenizer needed)."""
    return sum(len(c) // 3 + 8 for _, c in messages) + 4
