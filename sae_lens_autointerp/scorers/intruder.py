"""Intruder detection (no explanation needed): the LLM sees ``n_examples - 1`` activating examples of the
latent and one excerpt where it does not fire, shuffled, and names the odd one out. A latent whose examples
share a recognisable pattern makes the intruder easy to find. Score = accuracy over ``n_prompts`` prompts,
with a Wilson interval; chance = 1 / n_examples.

Variant used here: the intruder is a window from the harvest's random pool on which the latent is exactly
zero (verified), rather than another latent's example (which may also activate this latent). Examples are
shown without highlighting. The answer is read from the next-token distribution over the numbers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from ..metrics import wilson
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample, latent_rng
from .classification import classify_probability
from .common import flat, gather_or_raise

SYSTEM = "You find the odd one out among text excerpts."
QUESTION = (
    "All excerpts but one share a common pattern (a topic, a word, a kind of token or context). Which excerpt "
    "is the odd one out? Answer with its number only.\nAnswer:"
)


class IntruderScorer:
    name = "intruder"
    needs_explanation = False

    def __init__(self, n_prompts: int = 10, n_examples: int = 5, concurrency: int = 8) -> None:
        if not 2 <= n_examples <= 9:
            raise ValueError("n_examples must be between 2 and 9 (single-token answers)")
        self.n_prompts = n_prompts
        self.n_examples = n_examples
        self.concurrency = concurrency
        self.prompt_id = template_id(SYSTEM, QUESTION, str(n_examples))

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        assert ctx.llm is not None, "intruder needs an LLM"
        llm = ctx.llm
        rng = latent_rng(ctx.seed, sample.latent, self.name)
        k = self.n_examples - 1
        pos = [sample.test_pos[i] for i in rng.permutation(len(sample.test_pos))]
        neg = [sample.test_neg[i] for i in rng.permutation(len(sample.test_neg))]
        n_prompts = min(self.n_prompts, len(pos) // k, len(neg))
        choices = tuple(str(i + 1) for i in range(self.n_examples))
        # drawn up front (order-independent) and balanced: each place as often as the prompts allow, so that a
        # judge that always names one place scores 1 / n_examples exactly (uniform draws scatter around it)
        places = rng.permutation(np.resize(np.arange(self.n_examples), n_prompts)).tolist()
        gate = asyncio.Semaphore(self.concurrency)

        async def run(p: int) -> dict[str, Any]:
            shown = pos[p * k : (p + 1) * k]
            where = places[p]
            excerpts = [ctx.renderer.render(e).text.replace("\n", "\\n") for e in shown]
            excerpts.insert(where, ctx.renderer.render(neg[p]).text.replace("\n", "\\n"))
            listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(excerpts))
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Excerpts:\n{listing}\n\n{QUESTION}"},
            ]
            async with gate:
                res = await llm.classify(messages, choices=choices, stage=self.name, latent=sample.latent)
            probs = res.probs
            if probs is None:  # a refusal or an answer that is no excerpt number: a judge failure
                return {
                    "intruder": where + 1,
                    "answer": None,
                    "probability": None,
                    "prob_source": None,
                    "error": res.error,
                }
            answer = max(probs, key=probs.__getitem__)
            prob, source = classify_probability(res, str(where + 1))
            return {
                "intruder": where + 1,
                "answer": int(answer),
                "probability": prob,
                "prob_source": source,
                "error": None,
            }

        predictions = await gather_or_raise([run(p) for p in range(n_prompts)])
        answered = [p for p in predictions if p["answer"] is not None]
        correct = sum(p["answer"] == p["intruder"] for p in answered)
        acc = wilson(correct, len(answered))
        metrics = {
            **flat("accuracy", acc),
            "chance_accuracy": 1 / self.n_examples,
            "identical_answers": _identical_share([p["answer"] for p in answered]),
        }
        return ScorerOutput(
            scorer=self.name,
            score=None if not answered else correct / len(answered),
            n_examples=len(predictions),
            n_failed=len(predictions) - len(answered),
            metrics=metrics,
            predictions=predictions,
            prompt_id=self.prompt_id,
            **ScorerOutput.headline(metrics, "accuracy"),
        )


def _identical_share(answers: list[object]) -> float | None:
    """Share of the most common answer (1.0: the judge always names the same position)."""
    if not answers:
        return None
    return max(answers.count(a) for a in set(answers)) / len(answers)
