"""Intervention scoring (Paulo et al. 2024): does steering the latent make text *about* the explanation?

Scores what a latent *does*, so it also rates latents whose activating examples say little (output
features). For each latent:

1. Calibrate the steering strength ``alpha`` so that adding ``alpha * W_dec[i]`` at the SAE's hook (error
   term kept; see :mod:`sae_lens_autointerp.steering`) moves the next-token distribution on the neutral
   prompts by ``target_kl`` nats of KL on average (default 1.0, tolerance 0.1, bounded search). Calibrating
   to a fixed KL, rather than a fixed alpha, makes latents with different decoder norms and downstream
   effects comparable.
2. Greedily continue each neutral prompt twice (``max_new_tokens``, default 12): clean, and steered by
   ``alpha`` (clean continuations are computed once per scorer and model).
3. A scorer LM (default: the embedded SmolLM2 through ``transformers``; any HF causal LM) rates each text
   by ``log P(explanation | text + TEMPLATE)`` (summed over the explanation's tokens).

Score = mean over prompts of ``log P(explanation | steered text) - log P(explanation | clean text)`` in nats
(chance 0: the explanation is no likelier after steering), with a Student-t interval over prompts
(``mean_diff``, ``mean_diff_low``, ``mean_diff_high``, ``mean_diff_se``, ``chance_mean_diff``).
``metrics`` also records the calibration (``alpha``, ``kl``, ``calibrated``), the tokens run through the
subject model and the scorer LM, and the wall time. Needs ``model`` and ``sae`` in the context (the
pipeline passes both), no LLM client.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..local_lm import continuation_logprobs, load_causal_lm, record_usage
from ..metrics import aggregate
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample
from ..steering import NEUTRAL_PROMPTS, Steerer, model_name
from .common import flat

TEMPLATE = "\n\nThe text above is about"


class InterventionScorer:
    name = "intervention"
    needs_explanation = True
    needs_llm = False  # local torch models only; a run's LLM client, if any, only lends its usage tracker

    def __init__(
        self,
        scorer_model: str | None = None,
        *,
        prompts: Sequence[str] = NEUTRAL_PROMPTS,
        target_kl: float = 1.0,
        kl_tolerance: float = 0.1,
        max_evals: int = 24,
        alpha_max: float | None = None,
        max_new_tokens: int = 12,
        device: str = "cpu",
    ) -> None:
        if not prompts:
            raise ConfigError("intervention scoring needs at least one prompt")
        self.scorer_model = scorer_model
        self.prompts = tuple(prompts)
        self.target_kl, self.kl_tolerance, self.max_evals = target_kl, kl_tolerance, max_evals
        self.alpha_max = alpha_max
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.prompt_id = template_id("intervention", TEMPLATE, *self.prompts, str(target_kl), str(max_new_tokens))
        # subject model -> {prompt token ids: (clean log-probs, clean continuations)}: the same for every latent
        self._clean: weakref.WeakKeyDictionary[Any, dict[Any, tuple[list[Any], list[list[int]]]]] = (
            weakref.WeakKeyDictionary()
        )

    def _steer(self, latent: int, ctx: Context) -> dict[str, Any]:
        if ctx.model is None or ctx.sae is None:
            raise ConfigError("intervention scoring needs the model and the SAE (pass model= to score/run)")
        steerer = Steerer(ctx.model, ctx.sae)
        rows = steerer.encode(self.prompts)
        with steerer.lock:
            known = self._clean.setdefault(ctx.model, {})
            key = tuple(tuple(r) for r in rows)
            clean = known.get(key)
            if clean is None:
                clean = known[key] = (
                    steerer.log_probs(rows),
                    steerer.generate(rows, max_new_tokens=self.max_new_tokens),
                )
            calibration = steerer.calibrate(
                latent,
                rows,
                target_kl=self.target_kl,
                tolerance=self.kl_tolerance,
                max_evals=self.max_evals,
                alpha_max=self.alpha_max,
                clean=clean[0],
            )
            steered = steerer.generate(rows, latent, calibration.alpha, self.max_new_tokens)
        decode = steerer.tokenizer.decode
        return {
            "calibration": calibration,
            "prompts": [decode(r[steerer.start :]) for r in rows],
            "clean": [decode(c) for c in clean[1]],
            "steered": [decode(c) for c in steered],
            "tokens_processed": steerer.tokens_processed,
            "tokens_generated": steerer.tokens_generated,
            "model": model_name(ctx.model),
        }

    def _rate(self, explanation: str, texts: list[str]) -> tuple[list[float], int, str]:
        lm = load_causal_lm(self.scorer_model, self.device)
        contexts = [t + TEMPLATE for t in texts]
        logps, _, processed = continuation_logprobs(lm, contexts, [" " + explanation.strip()] * len(texts))
        return logps, processed, lm.name

    def _run(self, latent: int, explanation: str, ctx: Context) -> dict[str, Any]:
        steer = self._steer(latent, ctx)
        n = len(self.prompts)
        texts = [p + c for p, c in zip(steer["prompts"], steer["clean"])]
        texts += [p + s for p, s in zip(steer["prompts"], steer["steered"])]
        logps, processed, lm_name = self._rate(explanation, texts)
        return {**steer, "logp_clean": logps[:n], "logp_steered": logps[n:], "lm_tokens": processed, "lm": lm_name}

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        if explanation is None or explanation.failed:
            raise ValueError("intervention needs a (non-failed) explanation")
        start = time.perf_counter()
        res = await asyncio.to_thread(self._run, sample.latent, explanation.text, ctx)
        diffs = [s - c for s, c in zip(res["logp_steered"], res["logp_clean"])]
        est = aggregate(diffs)
        se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else None
        cal = res["calibration"]
        record_usage(ctx, res["model"], self.name, sample.latent, res["tokens_processed"], res["tokens_generated"])
        record_usage(ctx, res["lm"], self.name, sample.latent, res["lm_tokens"])
        metrics: dict[str, Any] = {
            **flat("mean_diff", est),
            "chance_mean_diff": 0.0,
            "mean_diff_se": se,
            "alpha": cal.alpha,
            "kl": cal.kl,
            "target_kl": cal.target_kl,
            "kl_tolerance": cal.tolerance,
            "calibrated": cal.converged,
            "n_kl_evals": cal.n_evals,
            "subject_model": res["model"],
            "scorer_model": res["lm"],
            "tokens_processed": res["tokens_processed"] + res["lm_tokens"],
            "tokens_generated": res["tokens_generated"],
            "subject_tokens": res["tokens_processed"],
            "scorer_tokens": res["lm_tokens"],
            "seconds": round(time.perf_counter() - start, 3),
        }
        predictions = [
            {"prompt": p, "clean": c, "steered": s, "logp_clean": lc, "logp_steered": ls, "diff": ls - lc}
            for p, c, s, lc, ls in zip(
                res["prompts"], res["clean"], res["steered"], res["logp_clean"], res["logp_steered"]
            )
        ]
        score = est.value if math.isfinite(est.value) else None
        return ScorerOutput(
            scorer=self.name,
            score=score,
            n_examples=len(predictions),
            n_failed=0,
            metrics=metrics,
            predictions=predictions,
            prompt_id=self.prompt_id,
            **ScorerOutput.headline(metrics, "mean_diff"),
        )
