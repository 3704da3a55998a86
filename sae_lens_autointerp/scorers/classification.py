"""Detection and fuzzing: the LLM sees the explanation and judges examples, one or several per prompt.

With one example per prompt (the default) the answer is read off the next-token distribution
(``LLMClient.classify``: P("1") vs P("0"), no generation). With several, the LLM answers a list like
``[1, 0, 1]``; probabilities come from the answer's top logprobs when the backend gives them. An answer
that does not parse is retried once with a reminder turn, at temperature 0.7 and another seed (so the retry
can differ; both answers stay in the response cache); then every example in that prompt counts as failed
(``n_failed``) and is excluded from the metrics.

Every prediction records where its probability came from (``prob_source``): ``exact`` (the model's full
next-token distribution), ``top_logprobs`` (a server's top-k list) or ``one-hot`` (no logprobs: the generated
answer matched to "0"/"1"; ``probability`` is then None). The AUC uses graded probabilities only; without
any it is absent, with the reason in ``notes``.

Detection: activating examples (5 per activation decile by default) against non-activating ones, no
highlighting. Score = balanced accuracy (chance 0.5).

Fuzzing (Paulo et al. 2024, delphi's default ``fuzz_type="default"``): activating examples with the tokens
where the latent fires (>= 0.3 x the example's max) marked ``<<like this>>`` (label 1) against
non-activating examples with the marks of a random activating example moved to a random place (label 0): the
same number of marks in the same runs, so how many tokens are marked and whether they are contiguous say
nothing about the label (delphi marks ``ceil(mean count)`` scattered tokens; measured on the embedded store, a
judge that calls one contiguous run "1" and scattered marks "0", never reading the explanation, scored 0.504
[0.502, 0.507] against scattered fakes: ``tests/test_blind_judges.py``). The LLM judges whether the marks fit
the explanation. Score = balanced accuracy (chance 0.5).

Fuzzing-active (``fuzzing-active``; close to delphi's ``fuzz_type="active"``): activating examples only; a
random half shows the true marks (label 1), the other half as many marks on tokens where the latent is
exactly zero (label 0; never on weakly firing tokens below the highlight threshold), in the true marks' runs
where such a place exists: can the judge tell *which* tokens fire, not just *whether* the context fits?

Calibrated decisions (one example per prompt, graded probabilities): a judge biased towards "1" is at
chance at the 0.5 threshold even when its probabilities separate the classes. Contextual calibration (Zhao
et al. 2021): one extra request per latent asks about a content-free excerpt ("N/A") under the same
explanation; dividing both classes' probabilities by the content-free ones means answering 1 exactly when
P("1") >= P_cf("1"). ``balanced_accuracy_calibrated`` (with its interval) is reported next to the raw
``balanced_accuracy``, which stays the headline.

``protocol="delphi"`` (detection and fuzzing): delphi's prompts, 5 examples per prompt, its answer reading
and its fake-mark count, so the number compares with delphi's; ``protocol="delphi-compat"`` also reproduces
delphi 0.1.3's known bugs. What each does and does not match is in :mod:`.delphi_protocol`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..llm.base import classify_all
from ..llm.types import ClassifyResult
from ..metrics import binary_metrics
from ..numeric import finite
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample, latent_rng
from ..text import active_mask, highlight
from . import delphi_protocol
from .common import digit_probabilities, map_bounded, parse_binary_list

SYSTEM = "Judge excerpts against a neuron description."  # short: it is sent with every example
CONTENT_FREE = "N/A"
RETRY_TEMPERATURE = 0.7
#: ClassifyResult.method -> where a prediction's probability came from
PROB_SOURCE = {"logits": "exact", "top_logprobs": "top_logprobs", "generation": "one-hot"}


@dataclass(frozen=True)
class Item:
    text: str
    label: bool
    token_id: int
    quantile: int | None


def classify_probability(res: ClassifyResult, choice: str = "1") -> tuple[float | None, str]:
    """(graded probability of ``choice`` or None, its source) of a successful classification."""
    source = PROB_SOURCE.get(res.method, "one-hot")
    return (None if source == "one-hot" else res.prob(choice)), source


class ClassificationScorer:
    name = "classification"
    needs_explanation = True
    question_one = ""
    question_many = ""
    #: which of delphi's prompts this scorer sends under ``protocol="delphi"`` (None: no delphi protocol)
    delphi_kind: delphi_protocol.Kind | None = None

    def __init__(
        self,
        examples_per_prompt: int | None = None,
        highlight_threshold: float = 0.3,
        concurrency: int = 8,
        calibrate: bool = True,
        protocol: str = "ours",
    ) -> None:
        self.protocol = delphi_protocol.check_protocol(protocol, self.name)
        if self.protocol != "ours" and self.delphi_kind is None:
            raise ConfigError(
                f"{self.name}: protocol={protocol!r} exists for detection and fuzzing only; drop protocol"
            )
        if examples_per_prompt is None:  # one per prompt is ours; delphi sends 5
            examples_per_prompt = 1 if self.protocol == "ours" else delphi_protocol.EXAMPLES_PER_PROMPT
        if not isinstance(examples_per_prompt, int) or examples_per_prompt < 1:
            raise ValueError("examples_per_prompt must be an integer >= 1")
        self.examples_per_prompt = examples_per_prompt
        self.highlight_threshold = highlight_threshold
        self.concurrency = concurrency
        self.calibrate = calibrate
        self.prompt_id = template_id(
            self.name,
            SYSTEM,
            self.question_one,
            self.question_many,
            str(examples_per_prompt),
            CONTENT_FREE if calibrate else "",
            *([] if self.protocol == "ours" else [self.protocol, str(self.messages("{explanation}", ["{example}"]))]),
        )

    def items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        raise NotImplementedError

    def messages(self, explanation: str, texts: list[str]) -> list[dict[str, str]]:
        if self.delphi_kind is not None and self.protocol != "ours":
            return delphi_protocol.messages(self.delphi_kind, explanation, texts)
        if len(texts) == 1:
            body = f"Description: {explanation}\n\nExcerpt: {texts[0]}\n\n{self.question_one}"
        else:
            listing = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))
            body = f"Description: {explanation}\n\nExcerpts:\n{listing}\n\n" + self.question_many.format(n=len(texts))
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]

    async def _judge(self, ctx: Context, latent: int, explanation: str, batch: list[Item]) -> list[dict[str, Any]]:
        messages = self.messages(explanation, [it.text for it in batch])
        preds: list[bool] | None = None
        probs: list[float | None] = [None] * len(batch)
        source = None
        error = None
        assert ctx.llm is not None
        if self.protocol != "ours":
            return await self._judge_delphi(ctx, latent, messages, batch)
        if len(batch) == 1:
            res = await ctx.llm.classify(messages, choices=("0", "1"), stage=self.name, latent=latent)
            return [_one_prediction(batch[0], res)]
        for attempt in range(2):
            resp = await ctx.llm.chat(
                messages,
                max_tokens=4 * len(batch) + 8,
                logprobs=True,
                top_logprobs=5,
                stage=self.name,
                latent=latent,
                temperature=0.0 if attempt == 0 else RETRY_TEMPERATURE,
                seed=None if attempt == 0 else attempt,
            )
            if resp.refused:
                error = f"refused: {resp.refusal or resp.finish_reason}"
                break
            preds = parse_binary_list(resp.text, len(batch))
            if preds is not None:
                graded = digit_probabilities(resp.logprobs, len(batch))
                source = "one-hot" if graded is None else "top_logprobs"
                probs = list(graded) if graded is not None else [None] * len(batch)
                break
            error = f"unparseable answer: {resp.text[:80]!r}"
            messages = [
                *messages,
                {"role": "assistant", "content": resp.text},
                {
                    "role": "user",
                    "content": (
                        f"That was not a list of {len(batch)} digits. " + self.question_many.format(n=len(batch))
                    ),
                },
            ]
        return _batch_predictions(batch, preds, probs, source, error)

    async def _judge_delphi(
        self, ctx: Context, latent: int, messages: list[dict[str, str]], batch: list[Item]
    ) -> list[dict[str, Any]]:
        """One request per batch, read as delphi reads it; an unreadable answer fails the batch, no retry."""
        assert ctx.llm is not None
        compat = self.protocol == "delphi-compat"
        n = self.examples_per_prompt if compat else len(batch)  # delphi wants a full list even for a short batch
        resp = await ctx.llm.chat(
            messages,
            max_tokens=delphi_protocol.ANSWER_MAX_TOKENS,
            logprobs=True,
            top_logprobs=5,
            stage=self.name,
            latent=latent,
            temperature=0.0,
        )
        if resp.refused:
            return _batch_predictions(batch, None, [], None, f"refused: {resp.refusal or resp.finish_reason}")
        preds = delphi_protocol.parse_answer(resp.text, n, compat=compat)
        if preds is None:
            return _batch_predictions(batch, None, [], None, f"unparseable answer: {resp.text[:80]!r}")
        graded = delphi_protocol.answer_probabilities(resp.logprobs, n)
        probs: list[float | None] = list(graded) if graded is not None else [None] * n
        return _batch_predictions(batch, preds, probs, "one-hot" if graded is None else "top_logprobs", None)

    async def _content_free(self, ctx: Context, latent: int, explanation: str) -> tuple[float | None, str | None]:
        """P_cf("1") for a content-free excerpt under this explanation, or (None, why not)."""
        assert ctx.llm is not None
        res = await ctx.llm.classify(
            self.messages(explanation, [CONTENT_FREE]), choices=("0", "1"), stage=self.name, latent=latent
        )
        if not res.ok:
            return None, f"the content-free request failed: {res.error}"
        p, source = classify_probability(res)
        if p is None:
            return None, "the backend gives no graded probabilities"
        return p, None

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        if explanation is None or explanation.failed:
            raise ValueError(f"{self.name} needs a (non-failed) explanation")
        rng = latent_rng(ctx.seed, sample.latent, self.name)
        items = self.items(sample, ctx, rng)
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
        k = self.examples_per_prompt

        async def run(batch: list[Item]) -> list[dict[str, Any]]:
            return await self._judge(ctx, sample.latent, explanation.text, batch)

        # Transport errors (and the budget) propagate once every request has finished: what was answered is
        # in the response cache, and the latent is redone, not scored from a partial set of answers.
        predictions: list[dict[str, Any]]
        if (
            k == 1 and self.protocol == "ours"
        ):  # one classification per example: all of them at once, for backends that take a batch
            prompts = [self.messages(explanation.text, [it.text]) for it in items]
            answers = await classify_all(
                ctx.llm, prompts, ("0", "1"), stage=self.name, latent=sample.latent, concurrency=self.concurrency
            )
            predictions = [_one_prediction(it, res) for it, res in zip(items, answers, strict=True)]
        else:
            batches = [items[i : i + k] for i in range(0, len(items), k)]  # the last batch may be short
            results = await map_bounded(batches, run, self.concurrency)
            predictions = [p for res in results for p in res]
        labels = [p["label"] for p in predictions]
        answered = [p["prediction"] for p in predictions]
        graded = [p["probability"] for p in predictions]
        content_free = None
        if (
            self.calibrate and k == 1 and self.protocol == "ours" and any(g is not None for g in graded)
        ):  # no use for one-hot answers
            content_free = await self._content_free(ctx, sample.latent, explanation.text)
        metrics_obj = binary_metrics(
            labels, answered, graded, rng=latent_rng(ctx.seed, sample.latent, self.name + "/ci")
        )
        metrics = metrics_obj.to_dict()
        sources = sorted({p["prob_source"] for p in predictions if p["prob_source"]})
        metrics["prob_sources"] = sources
        metrics["protocol"] = self.protocol
        if metrics_obj.n_answered and metrics_obj.n_auc == 0:
            metrics["notes"] = "; ".join(
                filter(
                    None,
                    [metrics["notes"], "auc: left out, the backend gave no graded probabilities (one-hot answers)"],
                )
            )
        metrics.update(self._calibrated(labels, answered, graded, content_free, ctx.seed, sample.latent))
        return ScorerOutput(
            scorer=self.name,
            score=finite(metrics_obj.balanced_accuracy.value),
            n_examples=len(predictions),
            n_failed=metrics_obj.n_failed,
            metrics=metrics,
            predictions=predictions,
            prompt_id=self.prompt_id,
            **ScorerOutput.headline(metrics, "balanced_accuracy"),
        )

    def _calibrated(
        self,
        labels: list[bool],
        answered: list[bool | None],
        graded: list[float | None],
        content_free: tuple[float | None, str | None] | None,
        seed: int,
        latent: int,
    ) -> dict[str, Any]:
        if content_free is None:
            why = (
                f"protocol={self.protocol!r} asks for a list, not one next token"
                if self.protocol != "ours"
                else "needs one example per prompt"
                if self.examples_per_prompt > 1
                else "calibrate=False"
                if not self.calibrate
                else "the backend gave no graded probabilities"
            )
            return {"balanced_accuracy_calibrated": None, "calibration": f"not computed: {why}"}
        threshold, reason = content_free
        if threshold is None:
            return {"balanced_accuracy_calibrated": None, "calibration": f"not computed: {reason}"}
        decided = [None if a is None or g is None else g >= threshold for a, g in zip(answered, graded)]
        # the generator is built here, where it is used: a judge without graded probabilities never needs it
        cal = binary_metrics(labels, decided, rng=latent_rng(seed, latent, self.name + "/ci-cal")).balanced_accuracy
        return {
            "balanced_accuracy_calibrated": finite(cal.value),
            "balanced_accuracy_calibrated_low": finite(cal.low),
            "balanced_accuracy_calibrated_high": finite(cal.high),
            "calibration_threshold": float(threshold),
            "calibration": f"contextual: answer 1 when P('1') >= P('1' | excerpt {CONTENT_FREE!r})",
        }


def _batch_predictions(
    batch: list[Item], preds: list[bool] | None, probs: list[float | None], source: str | None, error: str | None
) -> list[dict[str, Any]]:
    """The predictions of a batch from its answer's predictions (None: the batch failed, with ``error``)."""
    return [
        {
            "token_id": it.token_id,
            "label": it.label,
            "quantile": it.quantile,
            "prediction": None if preds is None else bool(preds[i]),
            "probability": None if preds is None or probs[i] is None else float(probs[i]),  # type: ignore[arg-type]
            "prob_source": None if preds is None else source,
            "error": None if preds is not None else error,
        }
        for i, it in enumerate(batch)
    ]


def _one_prediction(it: Item, res: ClassifyResult) -> dict[str, Any]:
    """The prediction of a one-example prompt from its classification."""
    if res.ok:
        p, source = classify_probability(res)
        prediction: bool | None = bool(res.prob("1") >= 0.5)
        error = None
    else:
        p, source, prediction, error = None, None, None, res.error
    return {
        "token_id": it.token_id,
        "label": it.label,
        "quantile": it.quantile,
        "prediction": prediction,
        "probability": None if prediction is None or p is None else float(p),
        "prob_source": None if prediction is None else source,
        "error": error,
    }


class DetectionScorer(ClassificationScorer):
    name = "detection"
    delphi_kind = "detection"
    question_one = "Does the neuron fire in this excerpt? Answer 1 for yes or 0 for no.\nAnswer:"
    question_many = (
        "For each excerpt, does the neuron fire somewhere in it? Reply with only a list of {n} digits, "
        "1 for yes and 0 for no, like [1, 0, 1]."
    )

    def items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        examples = sample.test
        texts = ctx.renderer.texts(examples)  # render(ex).text: only the tokens are shown here, never the activations
        if self.protocol == "ours":  # delphi shows newlines as they are
            texts = [text.replace("\n", "\\n") for text in texts]
        return [
            Item(text, bool(ex.extra.get("label")), ex.token_id, ex.extra.get("quantile"))
            for ex, text in zip(examples, texts)
        ]


FUZZ_QUESTION_ONE = (
    "Some tokens are marked <<like this>>. Do the marked tokens fit the description? "
    "Answer 1 for yes or 0 for no.\nAnswer:"
)
FUZZ_QUESTION_MANY = (
    "In each excerpt some tokens are marked <<like this>>. For each excerpt, are the marked tokens what the "
    "description is about? Reply with only a list of {n} digits, 1 for yes and 0 for no, like [1, 0, 1]."
)


class FuzzingScorer(ClassificationScorer):
    """The paper's fuzzing: true marks on activating examples vs random marks on non-activating ones."""

    name = "fuzzing"
    delphi_kind = "fuzzing"
    question_one = FUZZ_QUESTION_ONE
    question_many = FUZZ_QUESTION_MANY

    def items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        if self.protocol != "ours":
            return self._delphi_items(sample, ctx, rng)
        out, shapes = [], []
        for ex, r in zip(sample.test_pos, ctx.renderer.render_many(sample.test_pos)):
            marked = active_mask(r, self.highlight_threshold)
            shapes.append(np.flatnonzero(marked))
            out.append(Item(highlight(r.tokens, marked), True, ex.token_id, r.quantile))
        for ex, r in zip(sample.test_neg, ctx.renderer.render_many(sample.test_neg)):
            shape = shapes[rng.integers(len(shapes))] if shapes else np.zeros(1, dtype=np.int64)
            fake = moved_marks(shape, np.ones(len(r.tokens), dtype=bool), rng)
            out.append(Item(highlight(r.tokens, fake), False, ex.token_id, r.quantile))
        return out

    def _delphi_items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        """delphi's fuzzing examples: true marks, and ceil(mean non-zero count) scattered fake marks."""
        thr = self.highlight_threshold
        positives = ctx.renderer.render_many(sample.test_pos)
        n_marks = delphi_protocol.fake_mark_count([r.activations for r in positives])
        out = [
            Item(
                delphi_protocol.marked_text(r.tokens, delphi_protocol.true_marks(r.activations, thr)),
                True,
                ex.token_id,
                r.quantile,
            )
            for ex, r in zip(sample.test_pos, positives)
        ]
        compat = self.protocol == "delphi-compat"
        for ex, r in zip(sample.test_neg, ctx.renderer.render_many(sample.test_neg)):
            text = delphi_protocol.fake_text(r.tokens, r.activations, n_marks, rng, compat=compat, threshold=thr)
            out.append(Item(text, False, ex.token_id, r.quantile))
        return out


def moved_marks(shape: np.ndarray, allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Marks with the runs of ``shape`` (marked token indices of an activating example) moved, as one block, to
    a random place where every mark falls on an ``allowed`` token; where no such place exists, as many marks
    on random allowed tokens. A mask the length of ``allowed``."""
    n = len(allowed)
    fake = np.zeros(n, dtype=bool)
    shape = shape - shape.min() if shape.size else shape
    if shape.size == 0 or not allowed.any():
        return fake
    starts = np.arange(max(n - int(shape.max()), 0))
    fits = starts[allowed[starts[:, None] + shape[None, :]].all(axis=1)] if starts.size else starts
    if fits.size:
        fake[int(fits[rng.integers(fits.size)]) + shape] = True
    else:
        ok = np.flatnonzero(allowed)
        fake[rng.choice(ok, size=min(shape.size, ok.size), replace=False)] = True
    return fake


class FuzzingActiveScorer(ClassificationScorer):
    """Activating examples only: true marks vs as many marks on tokens where the latent does not fire."""

    name = "fuzzing-active"
    question_one = FUZZ_QUESTION_ONE
    question_many = FUZZ_QUESTION_MANY

    def items(self, sample: LatentSample, ctx: Context, rng: np.random.Generator) -> list[Item]:
        positives = list(sample.test_pos)
        wrong = set(rng.permutation(len(positives))[: len(positives) // 2].tolist())
        out = []
        for i, (ex, r) in enumerate(zip(positives, ctx.renderer.render_many(positives))):
            marked = active_mask(r, self.highlight_threshold)
            label = i not in wrong
            if not label:  # on silent tokens, not just below the threshold
                marked = moved_marks(np.flatnonzero(marked), np.asarray(r.activations) <= 0, rng)
            out.append(Item(highlight(r.tokens, marked), label, ex.token_id, r.quantile))
        return out
