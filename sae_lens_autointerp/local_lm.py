"""Local language models shared by explainers and scorers: loading, token log-probabilities, usage.

A neutral home for what the surprisal and intervention scorers, the embedding scorer and the output-side
explainers all use, so that no explainer imports a scorer and no scorer imports another scorer's module:

* :func:`load_causal_lm` / :class:`CausalLM`: a Hugging Face causal LM (default: the embedded
  SmolLM2-135M-Instruct, offline), loaded once per process under :data:`LOAD_LOCK`;
* :func:`continuation_logprobs`: ``log P(continuation | context)`` for (context, continuation) pairs;
* :func:`record_usage`: local torch work counted in the run's usage accounting.

The AUC summary shared by the local scorers is :func:`sae_lens_autointerp.metrics.auc_metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .records import Context

__all__ = [
    "LOAD_LOCK",
    "CausalLM",
    "context_ids",
    "continuation_logprobs",
    "load_causal_lm",
    "piece_ids",
    "record_usage",
]


@dataclass
class CausalLM:
    """A Hugging Face causal LM, its tokenizer, and the lock that serialises its use across threads."""

    name: str
    model: Any  # a transformers PreTrainedModel (transformers is imported on first load only)
    tokenizer: Any  # its PreTrainedTokenizerBase
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def pad_id(self) -> int:
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if value is not None:
                return int(value)
        return 0


#: Serialises model loading: transformers' loading patches process-global state (meta-device init, skipped
#: weight init), so two threads loading at once break each other. Sentence-transformers loads take it too.
LOAD_LOCK = threading.Lock()


def load_causal_lm(name: str | None = None, device: str = "cpu") -> CausalLM:
    """``None`` / ``"local"`` / ``"embedded"``: the embedded SmolLM2-135M-Instruct (offline); otherwise any
    ``transformers`` causal LM name or local path. Loaded once per process, float32, eval mode; thread-safe."""
    with LOAD_LOCK:
        return _load_causal_lm(name, device)


@lru_cache(maxsize=2)
def _load_causal_lm(name: str | None, device: str) -> CausalLM:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import embedded

    if name in (None, "local", "embedded", embedded.MODEL_NAME):
        path, label = str(embedded.model_dir()), embedded.MODEL_NAME
    else:
        assert name is not None  # (narrowing for the type checker: None took the first branch)
        path, label = name, name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # as an nn.Module: transformers wraps PreTrainedModel.to in a decorator whose type reads as unbound
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = model.to(device)
    except OSError as exc:
        raise ConfigError(f"could not load the causal LM {name!r}: {exc}") from exc
    model.eval()
    return CausalLM(label, model, tokenizer)


def context_ids(lm: CausalLM, text: str) -> list[int]:
    """Token ids of a prefix, with the tokenizer's own BOS if it adds one."""
    return list(lm.tokenizer(text, add_special_tokens=True)["input_ids"])


def piece_ids(lm: CausalLM, text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids of a piece of text that follows a prefix (no special tokens), at most ``max_tokens``."""
    ids = list(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[:max_tokens] if max_tokens else ids


@torch.no_grad()
def continuation_logprobs(
    lm: CausalLM, contexts: Sequence[str], continuations: Sequence[str], batch_size: int = 8
) -> tuple[list[float], list[int], int]:
    """``log P(continuation | context)`` (summed over the continuation's tokens) for each pair.

    Returns (log-probabilities, continuation lengths in tokens, tokens processed). Sequences are
    context ids + continuation ids (tokenized apart, so the boundary is exact), right-padded in batches."""
    rows = [(context_ids(lm, c), piece_ids(lm, x)) for c, x in zip(contexts, continuations)]
    out: list[float] = []
    processed = 0
    with lm.lock:
        for i in range(0, len(rows), batch_size):
            batch = rows[i : i + batch_size]
            seqs = [c + x for c, x in batch]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), lm.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for j, s in enumerate(seqs):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
            processed += sum(len(s) for s in seqs)
            for j, (c, x) in enumerate(batch):
                if not x:
                    out.append(0.0)
                    continue
                span = logits[j, len(c) - 1 : len(c) + len(x) - 1].float()
                target = span.gather(-1, torch.tensor(x, device=span.device).unsqueeze(-1)).squeeze(-1)
                out.append(float((target - torch.logsumexp(span, -1)).sum()))
    return out, [len(x) for _, x in rows], processed


def record_usage(
    ctx: Context, model: str, stage: str, latent: int, prompt_tokens: int, completion_tokens: int = 0
) -> None:
    """Count local torch work in the run's usage accounting: the LLM client's tracker, else a ``usage``
    tracker on the context (if the pipeline gives one); without either the counts live in the metrics only."""
    tracker = getattr(ctx.llm, "usage", None) if ctx.llm is not None else None
    if tracker is None:
        tracker = getattr(ctx, "usage", None)
    if tracker is None:
        return
    from .llm.usage import Usage

    tracker.record(
        model, stage, latent, Usage(prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens))
    )
