"""Helpers shared by the scorers: parsing answers and reading probabilities off logprobs (the LLM scorers), and
the test examples and AUC output of the scorers that grade each example with a local model (embedding,
surprisal)."""

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
from ..records import Context, Explanation, ScorerOutput
from ..sampling import LatentSample, latent_rng
from ..text import RenderedExample

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


def graded_examples(
    name: str, n_pos: int | None, n_neg: int | None, sample: LatentSample, explanation: Explanation | None, ctx: Context
) -> tuple[str, list[RenderedExample], list[bool]]:
    """What a scorer ``name`` that grades each test example against the explanation reads (embedding,
    surprisal): the explanation's text, up to ``n_pos`` activating and ``n_neg`` non-activating examples drawn
    with the latent's own generator and rendered as text, and their labels. A missing or failed explanation is
    refused."""
    if explanation is None or explanation.failed:
        raise ValueError(f"{name} needs a (non-failed) explanation")
    rng = latent_rng(ctx.seed, sample.latent, name)
    pos, neg = subsample(sample.test_pos, n_pos, rng), subsample(sample.test_neg, n_neg, rng)
    rendered = [ctx.renderer.render(e) for e in pos + neg]
    return explanation.text, rendered, [bool(r.label) for r in rendered]


def auc_output(
    name: str,
    metrics: dict[str, Any],
    n_examples: int,
    n_failed: int,
    predictions: list[dict[str, Any]],
    prompt_id: str | None,
) -> ScorerOutput:
    """A graded scorer's output: the AUC (``metrics`` from :func:`~sae_lens_autointerp.metrics.auc_metrics`) is the
    headline, with its interval and chance level."""
    return ScorerOutput(
        scorer=name,
        score=metrics["auc"],
        n_examples=n_examples,
        n_failed=n_failed,
        metrics=metrics,
        predictions=predictions,
        prompt_id=prompt_id,
        **ScorerOutput.headline(metrics, "auc"),
    )
