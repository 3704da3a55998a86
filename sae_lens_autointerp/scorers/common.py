"""Helpers shared by the LLM scorers: parsing answers and reading probabilities off logprobs."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from ..llm.concurrency import map_bounded as map_bounded  # re-exported: it lived here first
from ..llm.types import TokenLogprob
from ..metrics import flat as flat  # re-exported: scorers and plugins import it from here

_LIST_RE = re.compile(r"\[([^\[\]]*)\]")
T = TypeVar("T")
R = TypeVar("R")


def parse_binary_list(text: str, n: int) -> list[bool] | None:
    """The first ``[..]`` list of exactly ``n`` 0/1 entries in ``text`` (or exactly ``n`` bare 0/1 digits)."""
    for match in _LIST_RE.finditer(text or ""):
        items = [x.strip().strip("'\"") for x in match.group(1).split(",") if x.strip()]
        if len(items) == n and all(x in ("0", "1") for x in items):
            return [x == "1" for x in items]
    digits = re.findall(r"(?<!\d)[01](?!\d)", text or "")
    if len(digits) == n:
        return [d == "1" for d in digits]
    return None


def digit_probabilities(logprobs: Sequence[TokenLogprob] | None, n: int) -> list[float] | None:
    """P("1") / (P("1") + P("0")) at each of the first ``n`` generated 0/1 tokens, from top logprobs.

    None when logprobs are missing or the answer's 0/1 tokens do not line up with ``n`` predictions.
    A choice missing from the top-k list counts as probability 0 (it is below every listed token).
    """
    if not logprobs:
        return None
    probs = []
    for tok in logprobs:
        if tok.token.strip() not in ("0", "1"):
            continue
        top = tok.top_logprobs or {tok.token: tok.logprob}
        p = {c: max((math.exp(lp) for t, lp in top.items() if t.strip() == c), default=0.0) for c in ("0", "1")}
        total = p["0"] + p["1"]
        if total <= 0:
            return None
        probs.append(p["1"] / total)
        if len(probs) == n:
            return probs
    return None


def parse_int_list(text: str, n: int, low: int = 0, high: int = 10) -> list[int] | None:
    """The first ``[..]`` list of exactly ``n`` integers in [low, high]."""
    for match in _LIST_RE.finditer(text or ""):
        items = [x.strip() for x in match.group(1).split(",") if x.strip()]
        if len(items) != n:
            continue
        try:
            values = [int(float(x)) for x in items]
        except ValueError:
            continue
        if all(low <= v <= high for v in values):
            return values
    return None


def subsample(examples: Iterable[T], n: int | None, rng: np.random.Generator) -> list[T]:
    """``n`` of ``examples`` drawn without replacement, kept in their original order (all when n is None)."""
    items = list(examples)
    if n is None:
        return items
    return [items[i] for i in sorted(rng.permutation(len(items))[:n])]


async def gather_or_raise(jobs: Sequence[Awaitable[Any]]) -> list[Any]:
    """Run every job to the end, then raise the first exception if any did (a transport error, the budget,
    a bug). Waiting for all first means every answer that was paid for is in the response cache before the
    latent is left for the next run; nothing is scored from a partial set of answers."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for res in results:
        if isinstance(res, BaseException):
            raise res
    return list(results)
