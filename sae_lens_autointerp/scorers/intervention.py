"""Intervention scoring (Paulo et al. 2024, App. G.1): does steering the latent make text *about* the explanation?

Scores what a latent *does*, so it also rates latents whose activating examples say little (output
features). For each latent, as the paper does it (deviations: docs/scorers.md, "intervention"):

1. **Prompts**: up to ``n_prompts`` (default 30, the paper's) of the latent's held-out activating test
   examples, each cut so that it ends with its first token on which the latent fires (activation > 0; a
   sequence's first position is ignored, as the paper ignores it): no earlier token of the prompt activates.
   BOS goes first when the SAE was trained with it. ``prompts=`` gives fixed prompts instead (a variant).
2. **Calibration**: ``alpha`` such that adding ``alpha * W_dec[i]`` at the SAE's hook, from the prompt's last
   token on, moves the next-token distribution at the prompt's end by ``target_kl`` nats of
   ``KL(clean || steered)`` on average over the prompts (default 1.0, tolerance 0.1; see
   :mod:`sae_lens_autointerp.steering`).
3. **Continuations**: each prompt is continued greedily for ``max_new_tokens`` (default 8, the paper's),
   clean and steered (steered from the prompt's last token on, generated tokens included).
4. **Rating**: the scorer LM reads the paper's prompt, its four demonstrations first (``few_shot``), then
   ``<PASSAGE>\\n{prompt}{continuation}\\n\\nThe above passage contains an amplified amount of "`` and rates
   ``{explanation}"`` by its **mean log-probability per token**: the scale does not grow with the
   explanation's length. The scorer LM is the subject model itself by default (the paper's and delphi's
   choice; ``scorer_model=`` names a Hugging Face causal LM instead).

Score = mean over prompts of ``logp(steered) - logp(clean)`` (nats per token; chance 0: the explanation is no
likelier after steering), with a Student-t interval over prompts (``mean_diff``, ``mean_diff_low``,
``mean_diff_high``, ``mean_diff_se``, ``chance_mean_diff``). ``metrics`` also records the calibration
(``alpha``, ``kl``, ``calibrated``), the protocol, the tokens run through the subject model and the scorer
LM, and the wall time. Needs ``model`` and ``sae`` in the context (the pipeline passes both), no LLM client.

A control (the same latent, another latent's explanation, on a subset of these prompts) reuses the steered
continuations and the ``alpha`` of the score, so the two rate the same texts.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..harvest.store import PAD_TOKEN, Example
from ..local_lm import continuation_logprobs, load_causal_lm, record_usage
from ..metrics import aggregate
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample, latent_rng
from ..steering import Calibration, Steerer, model_name
from .common import flat

#: The paper's scorer prompt (App. G.1; the authors' code puts "\n\n" before the question, which the printed
#: prompt's line breaks hide). The explanation follows in quotes; its closing quote is rated with it.
SEPARATOR = "<PASSAGE>\n"
TEMPLATE = '\n\nThe above passage contains an amplified amount of "'
CLOSE = '"'
#: The four demonstrations printed in App. G.1: (prompt, generation, explanation).
FEW_SHOT: tuple[tuple[str, str, str], ...] = (
    ("from west to east, the westmost of the seven", " wonders of the world is the great wall of china", "Asia"),
    ("Given 4x is less than 10,", " 4", "numbers"),
    (
        "In information theory, the information content, self-information, surprisal, or Shannon information is a "
        "basic quantity derived",
        " by her when she was a student at Windsor",
        "she/her pronouns",
    ),
    ("My favorite food is", " oranges", "fruits and vegetables"),
)
#: Names of the scorer LM that mean "the subject model itself".
SUBJECT = (None, "subject")
#: Latents whose steering a scorer keeps for their controls (a control follows its score closely).
KEEP_STEERED = 64


def few_shot_prefix() -> str:
    return "".join(f"{SEPARATOR}{p}{g}{TEMPLATE}{e}{CLOSE}\n\n" for p, g, e in FEW_SHOT)


def first_activation_prompt(example: Example, ctx_len: int) -> list[int] | None:
    """The tokens of ``example``'s window up to and including its first token with activation > 0, skipping
    a sequence's first position (the paper ignores activations there); padding dropped. None when the latent
    fires nowhere else in the window."""
    start_id = example.token_id - (example.peak_index or 0)
    for j, a in enumerate(np.asarray(example.activations)):
        if a > 0 and (start_id + j) % ctx_len != 0:
            return [int(t) for t in np.asarray(example.tokens)[: j + 1] if t != PAD_TOKEN]
    return None


@dataclass
class _Steered:
    calibration: Calibration
    continuations: dict[tuple[int, ...], list[int]]  # prompt row -> steered continuation


class InterventionScorer:
    name = "intervention"
    needs_explanation = True
    needs_llm = False  # local torch models only; a run's LLM client, if any, only lends its usage tracker

    def __init__(
        self,
        scorer_model: str | None = None,
        *,
        prompts: Sequence[str] | None = None,
        n_prompts: int = 30,
        few_shot: bool = True,
        target_kl: float = 1.0,
        kl_tolerance: float = 0.1,
        max_evals: int = 24,
        alpha_max: float | None = None,
        max_new_tokens: int = 8,
        device: str = "cpu",
    ) -> None:
        if prompts is not None and (isinstance(prompts, str) or not prompts):
            raise ConfigError("intervention prompts= takes a list of at least one prompt (or None: test examples)")
        if int(n_prompts) < 2:
            raise ConfigError(f"intervention n_prompts must be >= 2 (an interval needs two), got {n_prompts}")
        self.scorer_model = scorer_model
        self.prompts = None if prompts is None else tuple(prompts)
        self.n_prompts = int(n_prompts)
        self.few_shot = bool(few_shot)
        self.target_kl, self.kl_tolerance, self.max_evals = target_kl, kl_tolerance, max_evals
        self.alpha_max = alpha_max
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.protocol = "paper" if self.prompts is None else "fixed prompts"
        self.prompt_id = template_id(
            "intervention-g1",
            few_shot_prefix() if self.few_shot else "",
            SEPARATOR + TEMPLATE + CLOSE,
            *(self.prompts or ("<test examples cut at their first activation>", str(self.n_prompts))),
            str(target_kl),
            str(max_new_tokens),
        )
        # subject model -> {prompt row: clean continuation} (fixed prompts: the same for every latent)
        self._clean: weakref.WeakKeyDictionary[Any, dict[tuple[int, ...], list[int]]] = weakref.WeakKeyDictionary()
        # subject model -> {latent: its steering}, for the latent's control
        self._steered: weakref.WeakKeyDictionary[Any, OrderedDict[int, _Steered]] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ prompts and steering

    def _rows(self, sample: LatentSample, ctx: Context, steerer: Steerer) -> tuple[list[list[int]], list[int | None]]:
        """The prompts as token rows (BOS first where the SAE wants it) and the test example each was cut from."""
        if self.prompts is not None:
            return steerer.encode(self.prompts), [None] * len(self.prompts)
        bos = steerer.encode([""])[0]
        ctx_len = int(ctx.store.settings.ctx_len)
        cut: list[tuple[list[int], int]] = []
        for e in sample.test_pos:
            ids = first_activation_prompt(e, ctx_len)
            if ids:  # None: the latent fires nowhere in the window but at a sequence start
                cut.append((ids, e.token_id))
        if len(cut) > self.n_prompts:  # a seeded subset, in the sample's order
            keep = latent_rng(ctx.seed, sample.latent, "intervention").permutation(len(cut))[: self.n_prompts]
            cut = [cut[i] for i in sorted(keep)]
        rows = [bos + (ids[1:] if bos and ids[0] == bos[0] else ids) for ids, _ in cut]
        kept = [(r, t) for r, (_, t) in zip(rows, cut) if len(r) > len(bos)]  # a lone BOS has nothing to steer
        if len(kept) < 2:
            raise ValueError(
                f"intervention needs at least 2 activating test examples to cut prompts from, got {len(kept)} "
                "(sample more test examples, or pass prompts=)"
            )
        return [r for r, _ in kept], [t for _, t in kept]

    def _steer(self, latent: int, rows: list[list[int]], steerer: Steerer, model: Any) -> dict[str, Any]:
        keys = [tuple(r) for r in rows]
        with steerer.lock:
            known = self._clean.setdefault(model, {})
            if len(known) > 4096:
                known.clear()
            todo = [r for r, k in zip(rows, keys) if k not in known]
            if todo:
                for r, c in zip(todo, steerer.generate(todo, max_new_tokens=self.max_new_tokens, starts="last")):
                    known[tuple(r)] = c
            clean = [known[k] for k in keys]
            kept = self._steered.setdefault(model, OrderedDict())
            done = kept.get(latent)
            if done is None or any(k not in done.continuations for k in keys):
                calibration = steerer.calibrate(
                    latent,
                    rows,
                    target_kl=self.target_kl,
                    tolerance=self.kl_tolerance,
                    max_evals=self.max_evals,
                    alpha_max=self.alpha_max,
                    starts="last",
                )
                steered = steerer.generate(rows, latent, calibration.alpha, self.max_new_tokens, starts="last")
                done = kept[latent] = _Steered(calibration, dict(zip(keys, steered)))
                while len(kept) > KEEP_STEERED:
                    kept.popitem(last=False)
            kept.move_to_end(latent)
        return {
            "calibration": done.calibration,
            "clean": clean,
            "steered": [done.continuations[k] for k in keys],
            "tokens_processed": steerer.tokens_processed,
            "tokens_generated": steerer.tokens_generated,
        }

    # ------------------------------------------------------------------ rating

    def _rate(
        self, explanation: str, rows: list[list[int]], continuations: list[list[int]], steerer: Steerer
    ) -> tuple[list[float], int, str]:
        """Mean log-probability per token of ``explanation"`` after each passage (prompt + continuation)."""
        target = explanation.strip() + CLOSE
        head = (few_shot_prefix() if self.few_shot else "") + SEPARATOR
        if self.scorer_model in SUBJECT:
            # the subject reads its own tokens: the prompt and what it generated, not a re-tokenised text
            def ids(text: str) -> list[int]:
                return list(steerer.tokenizer(text, add_special_tokens=False)["input_ids"])

            bos = steerer.encode([""])[0]
            head_ids, tail_ids, x = ids(head), ids(TEMPLATE), ids(target)
            contexts = [bos + head_ids + r[len(bos) :] + c + tail_ids for r, c in zip(rows, continuations)]
            per_token = steerer.token_logprobs(contexts, [x] * len(contexts))
            processed = sum(len(c) + len(x) for c in contexts)
            return [float(np.mean(p)) for p in per_token], processed, model_name(steerer.model)
        lm = load_causal_lm(self.scorer_model, self.device)
        decode = steerer.tokenizer.decode
        texts = [head + decode(r[steerer.start :]) + decode(c) + TEMPLATE for r, c in zip(rows, continuations)]
        sums, lengths, processed = continuation_logprobs(lm, texts, [target] * len(texts))
        return [s / max(n, 1) for s, n in zip(sums, lengths)], processed, lm.name

    def _run(self, sample: LatentSample, explanation: str, ctx: Context) -> dict[str, Any]:
        if ctx.model is None or ctx.sae is None:
            raise ConfigError("intervention scoring needs the model and the SAE (pass model= to score/run)")
        steerer = Steerer(ctx.model, ctx.sae)
        rows, sources = self._rows(sample, ctx, steerer)
        steer = self._steer(sample.latent, rows, steerer, ctx.model)
        n = len(rows)
        logps, processed, lm_name = self._rate(explanation, rows + rows, steer["clean"] + steer["steered"], steerer)
        decode = steerer.tokenizer.decode
        return {
            **steer,
            "model": model_name(ctx.model),
            "prompts": [decode(r[steerer.start :]) for r in rows],
            "sources": sources,
            "clean": [decode(c) for c in steer["clean"]],
            "steered": [decode(c) for c in steer["steered"]],
            "logp_clean": logps[:n],
            "logp_steered": logps[n:],
            "lm_tokens": processed,
            "lm": lm_name,
        }

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        if explanation is None or explanation.failed:
            raise ValueError("intervention needs a (non-failed) explanation")
        start = time.perf_counter()
        res = await asyncio.to_thread(self._run, sample, explanation.text, ctx)
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
            "protocol": self.protocol,
            "logprob": "mean per token",
            "n_prompts": len(diffs),
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
            {
                "prompt": p,
                "token_id": t,
                "clean": c,
                "steered": s,
                "logp_clean": lc,
                "logp_steered": ls,
                "diff": ls - lc,
            }
            for p, t, c, s, lc, ls in zip(
                res["prompts"], res["sources"], res["clean"], res["steered"], res["logp_clean"], res["logp_steered"]
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
