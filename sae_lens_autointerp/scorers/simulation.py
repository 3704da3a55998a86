"""Simulation (Bills et al. 2023): from the explanation alone the LLM predicts, for every token of an
excerpt, how strongly the latent fires (0-10). Score = Pearson correlation between predicted and true
activations over all tested tokens concatenated (activating and non-activating excerpts), with an interval
that resamples excerpts, not tokens (:func:`~sae_lens_autointerp.metrics.excerpt_correlation`: a simulator
errs per excerpt, so a Fisher interval over tokens is several times too narrow).

The LLM answers a JSON-style list of integers, one per token (JSON mode). When the backend returns top
logprobs and a predicted value is a single digit token, the prediction is the expected value over the
digits 0-9 at that position (logprob mode), which is finer than the argmax. A list of the wrong length or
out of range counts the excerpt as failed (never scored).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from ..llm.types import TokenLogprob
from ..metrics import excerpt_correlation
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample, latent_rng
from ..text import RenderedExample
from .common import flat, gather_or_raise, parse_int_list, subsample

SYSTEM = "You predict, token by token, how strongly a neuron in a language model fires, from a description of it."
QUESTION = (
    "For each token above, predict how strongly the neuron fires on it: 0 = not at all, 10 = maximally. "
    "Most tokens are 0. Reply with only a list of {n} integers, one per token, like [0, 0, 7, 0]."
)


class SimulationScorer:
    name = "simulation"
    needs_explanation = True

    def __init__(self, n_pos: int = 10, n_neg: int = 10, concurrency: int = 8) -> None:
        self.n_pos = n_pos
        self.n_neg = n_neg
        self.concurrency = concurrency
        self.prompt_id = template_id(SYSTEM, QUESTION)

    def messages(self, explanation: str, tokens: tuple[str, ...]) -> list[dict[str, str]]:
        listing = "\n".join(f"{i}: {tok!r}" for i, tok in enumerate(tokens))
        body = f"Description: {explanation}\n\nTokens:\n{listing}\n\n" + QUESTION.format(n=len(tokens))
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]

    async def _simulate(
        self, ctx: Context, latent: int, explanation: str, tokens: tuple[str, ...]
    ) -> tuple[list[float] | None, str | None, str | None]:
        assert ctx.llm is not None
        resp = await ctx.llm.chat(
            self.messages(explanation, tokens),
            max_tokens=3 * len(tokens) + 8,
            logprobs=True,
            top_logprobs=10,
            stage=self.name,
            latent=latent,
        )
        if resp.refused:
            return None, f"refused: {resp.refusal or resp.finish_reason}", None
        values = parse_int_list(resp.text, len(tokens))
        if values is None:
            return None, f"no list of {len(tokens)} integers 0-10 in the answer: {resp.text[:80]!r}", None
        # expected values over the digits where top logprobs line up, else the integers as written
        return _expected_values(values, resp.logprobs), None, "top_logprobs" if resp.logprobs else "one-hot"

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        if explanation is None or explanation.failed:
            raise ValueError("simulation needs a (non-failed) explanation")
        rng = latent_rng(ctx.seed, sample.latent, self.name)
        pos, neg = subsample(sample.test_pos, self.n_pos, rng), subsample(sample.test_neg, self.n_neg, rng)
        rendered = [ctx.renderer.render(e) for e in pos + neg]
        gate = asyncio.Semaphore(self.concurrency)

        async def run(r: RenderedExample) -> tuple[list[float] | None, str | None, str | None]:
            async with gate:
                return await self._simulate(ctx, sample.latent, explanation.text, r.tokens)

        results = await gather_or_raise([run(r) for r in rendered])
        predicted: list[list[float] | None] = []
        actual: list[list[float]] = []
        predictions: list[dict[str, Any]] = []
        n_failed = 0
        for r, (values, error, source) in zip(rendered, results):
            n_failed += values is None
            predicted.append(values)
            actual.append(list(r.activations))
            predictions.append(
                {
                    "token_id": r.token_id,
                    "label": r.label,
                    "quantile": r.quantile,
                    "predicted": values,
                    "actual": list(r.activations),
                    "prob_source": source,
                    "error": error,
                }
            )
        est = excerpt_correlation(predicted, actual, [r.label for r in rendered])
        score = None if not math.isfinite(est.value) else float(est.value)
        n_tokens = sum(len(v) for v in predicted if v is not None)
        metrics: dict[str, Any] = {**flat("pearson", est), "chance_pearson": 0.0, "n_tokens": n_tokens}
        metrics["n_excerpts"] = len(rendered) - n_failed
        if score is None and n_tokens:
            metrics["notes"] = (
                "pearson undefined: constant predictions or activations (fewer than 4 tokens, or no variance)"
            )
        return ScorerOutput(
            scorer=self.name,
            score=score,
            n_examples=len(rendered),
            n_failed=n_failed,
            metrics=metrics,
            predictions=predictions,
            prompt_id=self.prompt_id,
            **ScorerOutput.headline(metrics, "pearson"),
        )


def _expected_values(values: list[int], logprobs: Sequence[TokenLogprob] | None) -> list[float]:
    """Replace each single-digit prediction by its expected value under the top logprobs, when available."""
    if not logprobs:
        return [float(v) for v in values]
    digit_positions = [t for t in logprobs if t.token.strip().isdigit()]
    out: list[float] = []
    j = 0
    for v in values:
        # Align the i-th integer with the i-th numeric token; "10" may be one token or two, so stop refining
        # at the first mismatch rather than guess.
        if j < len(digit_positions) and digit_positions[j].token.strip() == str(v):
            top = digit_positions[j].top_logprobs
            digits = {
                int(t.strip()): math.exp(lp) for t, lp in top.items() if t.strip().isdigit() and len(t.strip()) == 1
            }
            total = sum(digits.values())
            out.append(sum(d * p for d, p in digits.items()) / total if v < 10 and total > 0 else float(v))
            j += 1
        else:
            out.append(float(v))
            j = len(digit_positions)  # misaligned: keep plain integers for the rest
    return out
