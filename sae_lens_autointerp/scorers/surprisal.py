"""Surprisal scoring (Paulo et al. 2024): does the explanation make activating examples easier to predict?

A causal LM (default: the embedded SmolLM2-135M-Instruct through ``transformers``; any Hugging Face causal
LM by name or path) reads a few-shot prefix of (description, excerpt) pairs that ends with a description
and ``Excerpt:``, then each test example. Each example's loss (mean next-token NLL over its tokens) is
computed twice: after a prefix ending in the explanation, and after the same prefix ending in a
placeholder description that says nothing (``NULL_DESCRIPTION``). The loss reduction
``loss(without) - loss(with)`` should be larger for activating examples than for non-activating ones.

Score = AUC of the loss reduction, activating vs non-activating (chance 0.5), with a DeLong interval
(``auc``, ``auc_low``, ``auc_high``, ``chance_auc``). Each prefix is run once and its KV cache reused for
every example batch (the placeholder prefix's cache is kept across latents); examples are re-tokenized
with the scorer LM's tokenizer from their text, so any LM works. Torch work runs in a worker thread,
serialised by a per-model lock. ``metrics`` also has ``tokens_processed`` (tokens through the LM) and
``tokens_without_cache`` (what recomputing each prefix per example would cost).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# The local-LM helpers and the AUC summary used to live here; they moved to neutral modules (explainers and
# other scorers use them too) and stay importable from here under their old names.
from ..local_lm import LOAD_LOCK as LOAD_LOCK
from ..local_lm import CausalLM as CausalLM
from ..local_lm import _load_causal_lm as _load_causal_lm
from ..local_lm import context_ids as _context_ids
from ..local_lm import continuation_logprobs as continuation_logprobs
from ..local_lm import load_causal_lm as load_causal_lm
from ..local_lm import piece_ids as _piece_ids
from ..local_lm import record_usage as record_usage
from ..metrics import auc_metrics as auc_metrics
from ..numeric import finite
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample, latent_rng
from .common import auc_output, graded_examples

HEADER = "Each excerpt below comes from a longer text and is preceded by a short description of what it contains.\n\n"
FEW_SHOT: tuple[tuple[str, str], ...] = (
    ("mentions of animals", "the farmer fed the horses and the goats before the dog woke up"),
    ("numbers written with digits", "the invoice lists 14 chairs at 35 dollars each, 490 in total"),
    ("words about cooking", "stir the onions in butter until soft, then add the garlic and simmer"),
)
NULL_DESCRIPTION = "an excerpt"
ITEM = "Description: {description}\nExcerpt: {text}\n\n"
QUERY = "Description: {description}\nExcerpt:"


@dataclass
class _Prefix:
    ids: list[int]
    cache: Any  # the model's past_key_values for the prefix (batch 1)
    last_logp: torch.Tensor  # [vocab] log-probs of the token after the prefix


@torch.no_grad()
def _run_prefix(lm: CausalLM, text: str) -> _Prefix:
    ids = _context_ids(lm, text)
    out = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=True)
    cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return _Prefix(ids, cache, torch.log_softmax(out.logits[0, -1].float(), dim=-1))


def _cache_argument(model: Any) -> str:
    """transformers >= 5.2x calls the KV-cache argument ``cache``; earlier versions ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def example_losses(
    lm: CausalLM, prefix: _Prefix, texts: Sequence[str], batch_size: int = 16, max_tokens: int = 64
) -> tuple[list[float], int]:
    """Mean NLL of each text's tokens after ``prefix``, reusing the prefix's KV cache. Returns (losses,
    example tokens processed). A text with no tokens gets NaN. Texts are batched by length (less padding)."""
    pieces = [_piece_ids(lm, " " + t.strip(), max_tokens) for t in texts]
    losses: list[float] = [float("nan")] * len(pieces)
    processed = 0
    p = len(prefix.ids)
    order = [i for i in sorted(range(len(pieces)), key=lambda i: len(pieces[i])) if pieces[i]]
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = [pieces[i] for i in index]
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), p + width), dtype=torch.long)
        mask[:, :p] = 1
        for j, x in enumerate(batch):
            ids[j, : len(x)] = torch.tensor(x)
            mask[j, p : p + len(x)] = 1
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(len(batch))
        out = lm.model(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            use_cache=True,
            **{_cache_argument(lm.model): cache},
        )
        # NLL of token t+1 at position t: logsumexp - target logit (no [batch, seq, vocab] log-softmax copy)
        logits = out.logits[:, :-1].float()
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, ids[:, 1:].unsqueeze(-1).to(logits.device)).squeeze(-1)
        processed += sum(len(x) for x in batch)
        for j, (i, x) in enumerate(zip(index, batch)):
            first = -float(prefix.last_logp[x[0]])
            losses[i] = (first + float(nll[j, : len(x) - 1].sum())) / len(x)
    return losses, processed


# ---------------------------------------------------------------------------------------- the scorer


class SurprisalScorer:
    name = "surprisal"
    needs_explanation = True
    needs_llm = False  # local torch models only; a run's LLM client, if any, only lends its usage tracker

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        n_pos: int | None = None,
        n_neg: int | None = None,
        batch_size: int = 16,
        max_example_tokens: int = 64,
    ) -> None:
        self.model_name = model
        self.device = device
        self.n_pos, self.n_neg = n_pos, n_neg
        self.batch_size = batch_size
        self.max_example_tokens = max_example_tokens
        self.prompt_id = template_id(HEADER, ITEM, QUERY, NULL_DESCRIPTION, *(a + b for a, b in FEW_SHOT))
        self._null: dict[str, _Prefix] = {}  # scorer LM name -> placeholder prefix (same for every latent)

    @staticmethod
    def prefix_text(description: str) -> str:
        shots = "".join(ITEM.format(description=d, text=t) for d, t in FEW_SHOT)
        return HEADER + shots + QUERY.format(description=description)

    def _losses(self, explanation: str, texts: list[str]) -> dict[str, Any]:
        lm = load_causal_lm(self.model_name, self.device)
        with lm.lock:
            null = self._null.get(lm.name)
            processed = 0
            if null is None:
                null = self._null[lm.name] = _run_prefix(lm, self.prefix_text(NULL_DESCRIPTION))
                processed += len(null.ids)
            with_expl = _run_prefix(lm, self.prefix_text(explanation))
            processed += len(with_expl.ids)
            loss_with, n1 = example_losses(lm, with_expl, texts, self.batch_size, self.max_example_tokens)
            loss_without, n2 = example_losses(lm, null, texts, self.batch_size, self.max_example_tokens)
        processed += n1 + n2
        without_cache = n1 + n2 + len(texts) * (len(with_expl.ids) + len(null.ids))
        return {
            "with": loss_with,
            "without": loss_without,
            "tokens_processed": processed,
            "tokens_without_cache": without_cache,
            "lm": lm.name,
        }

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        start = time.perf_counter()
        text, rendered, labels = graded_examples(self.name, self.n_pos, self.n_neg, sample, explanation, ctx)
        res = await asyncio.to_thread(self._losses, text, [r.text for r in rendered])
        reduction = [wo - w for w, wo in zip(res["with"], res["without"])]
        metrics = auc_metrics(labels, reduction, latent_rng(ctx.seed, sample.latent, self.name + "/ci"))
        record_usage(ctx, res["lm"], self.name, sample.latent, res["tokens_processed"])
        predictions = [
            {
                "token_id": r.token_id,
                "label": r.label,
                "quantile": r.quantile,
                "loss_with": finite(w),
                "loss_without": finite(wo),
                "reduction": finite(d),
                "error": None if np.isfinite(d) else "no tokens",
            }
            for r, w, wo, d in zip(rendered, res["with"], res["without"], reduction)
        ]
        n_failed = sum(p["error"] is not None for p in predictions)
        metrics.update(
            {
                "mean_reduction_pos": _mean([d for d, y in zip(reduction, labels) if y]),
                "mean_reduction_neg": _mean([d for d, y in zip(reduction, labels) if not y]),
                "scorer_model": res["lm"],
                "tokens_processed": res["tokens_processed"],
                "tokens_generated": 0,
                "tokens_without_cache": res["tokens_without_cache"],
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        return auc_output(self.name, metrics, len(rendered), n_failed, predictions, self.prompt_id)


def _mean(values: list[float]) -> float | None:
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else None
