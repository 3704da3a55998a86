"""The "saebench" scorer: 14 shuffled windows, the LLM lists the activating ones, accuracy (+ balanced)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.metrics import binary_metrics
from sae_lens_autointerp.records import Context, Explanation, ScorerOutput
from sae_lens_autointerp.sampling import LatentSample, latent_rng

from .protocol import (
    SAEBENCH_SAMPLING,
    SCORING_PROMPT_ID,
    BenchSet,
    SAEBenchConfig,
    parse_predictions,
    render,
    scoring_messages,
    select_for,
)

HEADLINES = ("accuracy", "balanced_accuracy")


class SAEBenchScorer:
    """SAEBench's scoring phase (see ``protocol.py``). ``selection="saebench"`` (the default) scores SAEBench's
    own windows, so its numbers compare with published SAEBench scores; the "saebench-clean" scorer
    (``selection="clean"``) scores silent negatives read from the store instead.

    ``score`` is SAEBench's number, the accuracy over the 14 windows, unless ``headline="balanced_accuracy"``.
    ``metrics`` always holds both, with intervals, plus ``trivial_none_accuracy``: what answering "None"
    scores on the same windows (10/14 = 0.714 with the default counts), the accuracy a useless explanation
    gets. One prompt per latent: an answer that does not parse (or a refusal) makes all its windows failed
    (``n_failed``), never right or wrong. Keyword arguments override :class:`SAEBenchConfig` fields.
    """

    name = "saebench"
    needs_explanation = True
    default_selection = "saebench"

    def __init__(self, headline: str = "accuracy", **config: Any) -> None:
        if headline not in HEADLINES:
            raise ConfigError(f"headline must be one of {HEADLINES}, got {headline!r}")
        self.headline = headline
        self.config = SAEBenchConfig(**{"selection": self.default_selection, **config})
        # SAEBench scores every latent that fired (its own rule skips some): the core's density and rarity
        # filters are switched off for this run unless the user set them (pipeline.protocol_filters)
        self.latent_filters = dict(SAEBENCH_SAMPLING) if self.config.selection == "saebench" else {}
        self.prompt_id = SCORING_PROMPT_ID

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        if explanation is None or explanation.failed:
            raise ConfigError(f"the {self.name} scorer needs a (non-failed) explanation")
        if ctx.llm is None:
            raise ConfigError(f"the {self.name} scorer needs an LLM: pass llm=... (e.g. llm='local')")
        latent, cfg = sample.latent, self.config
        bench = await asyncio.to_thread(select_for, ctx, latent, cfg, explanation.examples_shown)
        if bench.skipped is not None:
            return ScorerOutput.failed(
                self.name,
                f"SAEBench skips this latent: {bench.skipped}",
                metrics={"selection": bench.selection, "selection_notes": bench.skipped},
                prompt_id=self.prompt_id,
                metric=self.headline,
            )
        order = latent_rng(ctx.seed, latent, "saebench/shuffle").permutation(len(bench.scoring))
        items = [bench.scoring[i] for i in order]
        keep = bench.selection == "saebench"
        texts = [
            render(b, ctx.renderer, mark=False, act_threshold=bench.act_threshold, keep_special=keep) for b in items
        ]
        n = len(items)
        demo_rng = latent_rng(ctx.seed, latent, "saebench/demo")
        demo = sorted(int(i) + 1 for i in demo_rng.choice(n, size=min(cfg.n_correct_for_scoring, n), replace=False))

        error, chosen = None, None
        # Transport errors (sae_lens_autointerp.llm.LLMError) propagate: the latent is left incomplete and
        # redone by the next run; only the judge's own failures (refusal, unparseable) are counted here.
        response = await ctx.llm.chat(
            scoring_messages(explanation.text, texts, demo),
            max_tokens=cfg.max_tokens_in_prediction,
            temperature=cfg.temperature,
            stage=self.name,
            latent=latent,
        )
        answer = response.text
        if response.refused:
            error = f"refused: {response.refusal or response.finish_reason}"
        else:
            chosen = parse_predictions(response.text)
            if chosen is None:
                error = f"unparseable answer: {response.text[:80]!r}"

        picked = set(chosen or ())
        predictions = [
            {
                "index": i + 1,
                "kind": b.kind,
                "token_id": b.token_id,
                "value": b.value,
                "label": b.label,
                "fires": b.fires,
                "prediction": None if chosen is None else (i + 1) in picked,
                "probability": None,
                "error": error if chosen is None else None,
            }
            for i, b in enumerate(items)
        ]
        labels = [p["label"] for p in predictions]
        m = binary_metrics(
            labels, [p["prediction"] for p in predictions], rng=latent_rng(ctx.seed, latent, "saebench/ci")
        )
        metrics: dict[str, Any] = m.to_dict()
        n_neg = sum(1 for label in labels if not label)
        fires = [b.fires for b in items]
        metrics.update(
            selection=bench.selection,
            # what an answer naming exactly the windows where the latent fires scores (1.0 unless negatives fire)
            ceiling_accuracy=sum(f == lab for f, lab in zip(fires, labels)) / n if n else None,
            n_random_firing=sum(1 for b in items if b.kind == "random" and b.fires),
            n_scoring_near_shown=_near_shown(bench, explanation.examples_shown, ctx.store.settings.ctx_len, cfg.buffer),
            saebench_score=metrics["accuracy"],
            trivial_none_accuracy=n_neg / n if n else None,
            n_top=sum(b.kind == "top" for b in items),
            n_iw=sum(b.kind == "iw" for b in items),
            n_random=sum(b.kind == "random" for b in items),
            act_threshold=bench.act_threshold,
            answer=answer,
            out_of_range=sorted(i for i in picked if not 1 <= i <= n),
            selection_notes="; ".join(bench.notes),
        )
        score = metrics[self.headline]
        # The headline's own interval and chance: for accuracy, what answering "None" scores on these windows
        chance = (
            metrics["trivial_none_accuracy"] if self.headline == "accuracy" else metrics["chance_balanced_accuracy"]
        )
        return ScorerOutput(
            scorer=self.name,
            score=None if score is None or not np.isfinite(score) else float(score),
            n_examples=n,
            n_failed=m.n_failed,
            metrics=metrics,
            predictions=predictions,
            prompt_id=self.prompt_id,
            metric=self.headline,
            low=metrics[f"{self.headline}_low"],
            high=metrics[f"{self.headline}_high"],
            chance=chance,
        )


def _near_shown(bench: BenchSet, shown: tuple[int, ...], ctx_len: int, buffer: int) -> int:
    """Scoring windows whose centre lies within ``buffer`` tokens of a token id the explainer was shown
    (never with the "saebench" explainer's own windows; SAEBench itself does not check)."""
    ids = set(shown)
    count = 0
    for b in bench.scoring:
        seq = b.token_id // ctx_len
        near = range(max(b.token_id - buffer, seq * ctx_len), min(b.token_id + buffer + 1, (seq + 1) * ctx_len))
        count += any(t in ids for t in near) and b.kind != "random"
    return count


class SAEBenchCleanScorer(SAEBenchScorer):
    """The "saebench-clean" scorer: SAEBench's prompt and score on windows read from the store, with negatives
    checked to be silent (``selection="clean"``); not comparable with published SAEBench numbers."""

    name = "saebench-clean"
    default_selection = "clean"
