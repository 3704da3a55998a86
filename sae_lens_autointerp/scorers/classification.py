"""Detection and fuzzing: the LLM sees the explanation and judges examples, one or several per prompt.

With one example per prompt (the default) the answer is read off the next-token distribution
(``LLMClient.classify``: P("1") vs P("0"), no generation), which also gives the probabilities for AUC.
With several, the LLM answers a list like ``[1, 0, 1]``; probabilities come from the answer's top
logprobs when the backend gives them. An answer that does not parse is retried once; then every example
in that prompt counts as failed (``n_failed``), and is excluded from the metrics.

Detection: activating examples (5 per activation decile by default) against non-activating ones, no
highlighting. Score = balanced accuracy (chance 0.5); AUC from the probabilities.

Fuzzing (variant used here): activating examples only; a random half shows the tokens where the latent
fires (>= 0.3 x the example's max) marked ``<<like this>>`` (label 1), the other half the same number of
marks on tokens where it does not fire (label 0). The LLM judges whether the marks fit the explanation.
Score = balanced accuracy (chance 0.5).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from ..llm.errors import BudgetExceeded
from ..metrics import binary_metrics
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample, latent_rng
from ..text import active_mask, highlight
from .common import digit_probabilities, parse_binary_list

SYSTEM = "Judge excerpts against a neuron description."  # short: it is sent with every example


@dataclass(frozen=True)
class Item:
    text: str
    label: bool
    token_id: int
    quantile: int | None


class ClassificationScorer:
    name = "classification"
    needs_explanation = True
    question_one = ""
    question_many = ""

    def __init__(self, examples_per_prompt: int = 1, highlight_threshold: float = 0.3, concurrency: int = 8) -> None:
        if examples_per_prompt < 1:
            raise ValueError("examples_per_prompt must be >= 1")
        self.examples_per_prompt = examples_per_prompt
        self.highlight_threshold = highlight_threshold
        self.concurrency = concurrency
        self.prompt_id = template_id(SYSTEM, self.question_one, self.question_many, str(examples_per_prompt))

    def items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        raise NotImplementedError

    def messages(self, explanation: str, texts: list[str]) -> list[dict[str, str]]:
        if len(texts) == 1:
            body = f"Description: {explanation}\n\nExcerpt: {texts[0]}\n\n{self.question_one}"
        else:
            listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
            body = f"Description: {explanation}\n\nExcerpts:\n{listing}\n\n" + self.question_many.format(n=len(texts))
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]

    async def _judge(self, ctx: Context, latent: int, explanation: str, batch: list[Item]) -> list[dict]:
        messages = self.messages(explanation, [it.text for it in batch])
        preds: list[bool] | None = None
        probs: list[float] | None = None
        error = None
        assert ctx.llm is not None
        if len(batch) == 1:
            res = await ctx.llm.classify(messages, choices=("0", "1"), stage=self.name, latent=latent)
            if res.ok:
                probs = [res.prob("1")]
                preds = [probs[0] >= 0.5]
            else:
                error = res.error
        else:
            for _attempt in range(2):
                resp = await ctx.llm.chat(
                    messages, max_tokens=4 * len(batch) + 8, logprobs=True, top_logprobs=5, stage=self.name, latent=latent
                )
                if resp.refused:
                    error = f"refused: {resp.refusal or resp.finish_reason}"
                    break
                preds = parse_binary_list(resp.text, len(batch))
                if preds is not None:
                    probs = digit_probabilities(resp.logprobs, len(batch))
                    break
                error = f"unparseable answer: {resp.text[:80]!r}"
        out = []
        for i, it in enumerate(batch):
            out.append(
                {
                    "token_id": it.token_id,
                    "label": it.label,
                    "quantile": it.quantile,
                    "prediction": None if preds is None else bool(preds[i]),
                    "probability": None if probs is None else float(probs[i]),
                    "error": None if preds is not None else error,
                }
            )
        return out

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        if explanation is None or explanation.failed:
            raise ValueError(f"{self.name} needs a (non-failed) explanation")
        rng = latent_rng(ctx.seed, sample.latent, self.name)
        items = self.items(sample, ctx, rng)
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
        k = self.examples_per_prompt
        batches = [items[i : i + k] for i in range(0, len(items), k)]  # the last batch may be short
        gate = asyncio.Semaphore(self.concurrency)

        async def run(batch: list[Item]) -> list[dict]:
            async with gate:
                return await self._judge(ctx, sample.latent, explanation.text, batch)

        results = await asyncio.gather(*(run(b) for b in batches), return_exceptions=True)
        predictions: list[dict] = []
        for batch, res in zip(batches, results):
            if isinstance(res, BudgetExceeded):
                raise res
            if isinstance(res, BaseException):
                res = [
                    {"token_id": it.token_id, "label": it.label, "quantile": it.quantile, "prediction": None,
                     "probability": None, "error": f"{type(res).__name__}: {res}"}
                    for it in batch
                ]
            predictions.extend(res)
        metrics = binary_metrics(
            [p["label"] for p in predictions],
            [p["prediction"] for p in predictions],
            [p["probability"] for p in predictions],
            rng=latent_rng(ctx.seed, sample.latent, self.name + "/ci"),
        )
        return ScorerOutput(
            scorer=self.name,
            score=_finite(metrics.balanced_accuracy.value),
            n_examples=len(predictions),
            n_failed=metrics.n_failed,
            metrics=metrics.to_dict(),
            predictions=predictions,
            prompt_id=self.prompt_id,
        )


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


class DetectionScorer(ClassificationScorer):
    name = "detection"
    question_one = "Does the neuron fire in this excerpt? Answer 1 for yes or 0 for no.\nAnswer:"
    question_many = (
        "For each excerpt, does the neuron fire somewhere in it? Reply with only a list of {n} digits, "
        "1 for yes and 0 for no, like [1, 0, 1]."
    )

    def items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        out = []
        for ex in sample.test:
            r = ctx.renderer.render(ex)
            out.append(Item(r.text.replace("\n", "\\n"), bool(r.label), ex.token_id, r.quantile))
        return out


class FuzzingScorer(ClassificationScorer):
    name = "fuzzing"
    question_one = (
        "Some tokens are marked <<like this>>. Do the marked tokens fit the description? "
        "Answer 1 for yes or 0 for no.\nAnswer:"
    )
    question_many = (
        "In each excerpt some tokens are marked <<like this>>. For each excerpt, are the marked tokens what the "
        "description is about? Reply with only a list of {n} digits, 1 for yes and 0 for no, like [1, 0, 1]."
    )

    def items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        positives = list(sample.test_pos)
        wrong = set(rng.permutation(len(positives))[: len(positives) // 2].tolist())
        out = []
        for i, ex in enumerate(positives):
            r = ctx.renderer.render(ex)
            marked = active_mask(r, self.highlight_threshold)
            label = i not in wrong
            if not label:
                quiet = np.flatnonzero(~marked)
                fake = np.zeros_like(marked)
                fake[rng.choice(quiet, size=min(int(marked.sum()), len(quiet)), replace=False)] = True
                marked = fake
            out.append(Item(highlight(r.tokens, marked), label, ex.token_id, r.quantile))
        return out
