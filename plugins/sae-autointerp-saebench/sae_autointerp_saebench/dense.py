"""Dense activations of one latent over a store's sequences, computed the way SAEBench's autointerp does.

SAEBench's ``gather_data`` reads every latent's activation on every token (``collect_sae_activations``:
model up to the hook, ``sae.encode``, BOS / EOS / PAD positions zeroed, cast to bfloat16). A
:class:`~sae_lens_autointerp.harvest.store.LatentStore` keeps only each latent's top and sampled examples,
so the "saebench" selection recomputes them over the store's own tokens (its complete sequences).

The SAE's inputs are computed once per (store, model, SAE, batch size) and kept in memory when they fit in
``max_cached_bytes``; otherwise every latent reruns the model. Each latent's column is then encoded batch by
batch, with the same batches as SAEBench, so the numbers are the same bit for bit on the same device.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import torch

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.model import ModelAdapter
from sae_lens_autointerp.harvest.store import PAD_TOKEN, LatentStore

_guard = threading.Lock()
# store -> {(id(model), id(sae), batch_size): [sae input per batch]}; entries die with the store object
_inputs: weakref.WeakKeyDictionary[LatentStore, dict[tuple[int, int, int], list[torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)
_fill_locks: weakref.WeakKeyDictionary[LatentStore, threading.Lock] = weakref.WeakKeyDictionary()


def saebench_tokens(store: LatentStore) -> tuple[torch.Tensor, np.ndarray]:
    """The store's complete sequences as SAEBench's ``tokenized_dataset`` ([rows, ctx_len], int64) and the
    store sequence index of each row. A last sequence cut short (padded) is left out: SAEBench's rows are full.
    """
    tokens = np.asarray(store.tokens)
    full = np.flatnonzero(~np.any(tokens == PAD_TOKEN, axis=1))
    if full.size == 0:
        raise ConfigError(
            f"the store {store.path} has no complete sequence of {store.settings.ctx_len} tokens; harvest at least "
            "one full sequence (n_tokens >= ctx_len) for the 'saebench' selection"
        )
    return torch.from_numpy(tokens[full].astype(np.int64)), full


def masked_token_ids(tokenizer: Any) -> list[int]:
    """The ids SAEBench zeroes (``get_bos_pad_eos_mask``): the tokenizer's PAD, EOS and BOS, nothing else."""
    ids = (getattr(tokenizer, name, None) for name in ("pad_token_id", "eos_token_id", "bos_token_id"))
    return sorted({int(i) for i in ids if i is not None})


def _sae_inputs(
    adapter: ModelAdapter, tokens: torch.Tensor, batch_size: int, max_cached_bytes: int, store: LatentStore
) -> list[torch.Tensor] | None:
    """The SAE's input for every batch of rows (cached), or None when it would not fit in the cache."""
    d_in = int(adapter.sae.cfg.d_in)
    size = tokens.numel() * d_in * torch.tensor([], dtype=adapter.sae.dtype).element_size()
    if size > max_cached_bytes:
        return None
    key = (id(adapter.model), id(adapter.sae), batch_size)
    with _guard:
        lock = _fill_locks.setdefault(store, threading.Lock())
    with lock:
        cached = _inputs.get(store, {}).get(key)
        if cached is None:
            cached = [adapter.capture(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)]
            with _guard:
                _inputs.setdefault(store, {})[key] = cached
        return cached


@torch.no_grad()
def dense_latent_activations(
    store: LatentStore,
    model: Any,
    sae: Any,
    latent: int,
    *,
    batch_size: int = 32,
    max_cached_bytes: int = 2 << 30,
) -> torch.Tensor:
    """``latent``'s activation on every token of :func:`saebench_tokens` ([rows, ctx_len], bfloat16, on the
    SAE's device), with SAEBench's mask: zero on the tokenizer's BOS, EOS and PAD tokens."""
    if model is None or sae is None:
        raise ConfigError(
            "the 'saebench' selection recomputes activations and needs the model and the SAE (pass model= to "
            "sae.score / sae.autointerp.run), or use the 'saebench-clean' protocol, which reads the store only"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"llm_batch_size must be a positive integer, got {batch_size!r}")
    latent = store.check_latent(latent)
    adapter = ModelAdapter(model, sae)
    tokens, _ = saebench_tokens(store)
    masked = torch.tensor(masked_token_ids(adapter.tokenizer), dtype=torch.long)
    inputs = _sae_inputs(adapter, tokens, batch_size, max_cached_bytes, store)
    out = []
    for b, start in enumerate(range(0, len(tokens), batch_size)):
        batch = tokens[start : start + batch_size]
        x = inputs[b] if inputs is not None else adapter.capture(batch)
        acts = sae.encode(x)[:, :, latent]
        keep = ~torch.isin(batch, masked)
        out.append((acts * keep.to(acts.device)).to(torch.bfloat16))
    return torch.cat(out, dim=0)
