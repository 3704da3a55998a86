"""Sources of non-activating examples for scoring.

- ``random``: windows of the harvest's random pool on which the latent is exactly zero, drawn without
  replacement (the default; what delphi and SAEBench call random negatives, minus their duplicates).
- ``similar``: the same silent pool windows, ranked by sentence-embedding similarity to the latent's
  activating examples: hard negatives that share topic and style but not the feature.
- ``neighbours``: examples on which the latent's decoder-cosine neighbours fire, kept only where this latent
  is verified to be zero by recomputing its activations on the sequence (no assumption that neighbours are
  exclusive).

Every source takes ``avoid``, the spans of the latent's known activating windows and of the examples already
chosen, and never returns a window that shares a token with them (nor two windows that share tokens); it
returns the examples and how many otherwise eligible candidates it left out for overlapping.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np
import torch

from .errors import ConfigError
from .harvest.store import Example, LatentStore, RandomWindow, new_example
from .spans import SpanSet


class NegativeSource(Protocol):
    """A source of non-activating examples. An optional class attribute ``inline = True`` says its draws are
    light enough to run on the event loop's thread; otherwise the pipeline samples on a worker thread."""

    name: str

    def draw(
        self, store: LatentStore, latent: int, n: int, rng: np.random.Generator, avoid: SpanSet
    ) -> tuple[list[Example], int]: ...


def silent_windows(store: LatentStore, latent: int, avoid: SpanSet) -> tuple[list[RandomWindow], int]:
    """Random-pool windows where ``latent`` is exactly zero and that touch nothing in ``avoid`` (the pool's
    windows are disjoint chunks, so they never overlap each other); and how many were left out for overlap."""
    windows = store.random_windows()
    kept, excluded = silent_window_ids(store, latent, avoid)
    return [windows[i] for i in kept.tolist()], excluded


def silent_window_ids(store: LatentStore, latent: int, avoid: SpanSet) -> tuple[np.ndarray, int]:
    """:func:`silent_windows` as indices into ``store.random_windows()`` (in the same order)."""
    silent = store.silent_window_indices(latent)
    lo, hi = store.random_window_spans()
    near = avoid.overlaps_many(lo[silent], hi[silent])  # one vectorised query, not one per pool window
    return silent[~near], int(near.sum())


def _silent(latent: int, window: Any, source: str) -> Example:
    return new_example(
        latent, window.tokens, np.zeros(len(window.tokens), dtype=np.float32), 0.0, window.start_id, source
    )


class RandomNegatives:
    name = "random"
    #: sampled on the event loop's thread: a millisecond of array work that holds the GIL, which a worker
    #: thread would only add its hand-off to (sources that run torch models are sampled on a thread)
    inline = True

    def draw(
        self, store: LatentStore, latent: int, n: int, rng: np.random.Generator, avoid: SpanSet
    ) -> tuple[list[Example], int]:
        if n == 0:
            return [], 0
        candidates, excluded = silent_window_ids(store, latent, avoid)  # ids: only the chosen windows are read
        chosen = rng.permutation(len(candidates))[:n]
        windows = store.random_windows()
        return [_silent(latent, windows[candidates[i]], "random") for i in sorted(chosen)], excluded


class SimilarNegatives:
    """Silent pool windows closest (cosine of sentence embeddings) to the mean of the activating examples."""

    name = "similar"

    def __init__(self, renderer: Any, embedder: str | None = None) -> None:
        from .embedders import DEFAULT_EMBEDDER

        self.renderer = renderer
        self.embedder = embedder or DEFAULT_EMBEDDER
        self._pool: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _text(self, tokens: np.ndarray) -> str:
        return "".join(self.renderer.piece(int(t)) for t in tokens if t >= 0)

    def pool_embeddings(self, store: LatentStore) -> np.ndarray:
        from .embedders import embed

        with self._lock:  # computed once per store, shared by every latent
            if store.key not in self._pool:
                self._pool[store.key] = embed([self._text(w.tokens) for w in store.random_windows()], self.embedder)
            return self._pool[store.key]

    def draw(
        self,
        store: LatentStore,
        latent: int,
        n: int,
        rng: np.random.Generator,
        avoid: SpanSet,
        positives: list[Example] | None = None,
    ) -> tuple[list[Example], int]:
        """``positives``: the examples to be similar to (default: the latent's stored firing examples)."""
        from .embedders import embed

        if n == 0:
            return [], 0
        windows = store.random_windows()
        index = {w.start_id: i for i, w in enumerate(windows)}
        candidates, excluded = silent_windows(store, latent, avoid)
        if positives is None:
            positives = store.stratified_examples(latent) or store.top_examples(latent)
        if not candidates or not positives:
            return [], excluded
        silent = [index[w.start_id] for w in candidates]
        query = embed([self._text(e.tokens) for e in positives], self.embedder).mean(axis=0)
        sims = self.pool_embeddings(store)[silent] @ (query / max(np.linalg.norm(query), 1e-12))
        order = np.lexsort((np.array([windows[i].start_id for i in silent]), -sims))[:n]
        return [_silent(latent, windows[silent[j]], "similar") for j in order], excluded


class NeighbourNegatives:
    """Examples of the ``n_neighbours`` latents with the most similar decoder directions, where this latent
    is verified silent by re-running model + SAE on the example's sequence."""

    name = "neighbours"

    def __init__(self, sae: Any, model: Any, n_neighbours: int = 10, batch_size: int = 8) -> None:
        if sae is None or model is None:
            raise ConfigError("neighbour negatives need the SAE and the model (to verify the latent is silent)")
        from .harvest.model import ModelAdapter

        self.sae = sae
        self.adapter = ModelAdapter(model, sae)
        self.n_neighbours = n_neighbours
        self.batch_size = batch_size
        w = sae.W_dec.detach().float()
        self._w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def neighbours(self, latent: int) -> list[int]:
        sims = self._w @ self._w[latent]
        sims[latent] = -2.0
        return sims.topk(min(self.n_neighbours, len(sims) - 1)).indices.tolist()

    @torch.no_grad()
    def _latent_acts(self, store: LatentStore, latent: int, seqs: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        pad = self.adapter.pad_token_id()
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i : i + self.batch_size]
            tokens = torch.from_numpy(np.asarray(store.tokens[chunk])).long()
            tokens = torch.where(tokens >= 0, tokens, pad)
            # capture() holds the model's one hook lock (harvest.model.model_lock), shared with steering
            acts = self.sae.encode(self.adapter.capture(tokens))[..., latent].float().cpu().numpy()
            out.update(zip(chunk, acts))
        return out

    def draw(
        self, store: LatentStore, latent: int, n: int, rng: np.random.Generator, avoid: SpanSet
    ) -> tuple[list[Example], int]:
        if n == 0:
            return [], 0
        ctx, w = store.settings.ctx_len, store.settings.example_len
        candidates: list[Example] = []
        for j in self.neighbours(latent):
            pool = store.top_examples(j) + store.stratified_examples(j)
            candidates.extend(pool[k] for k in rng.permutation(len(pool)))
        taken = SpanSet()
        seen, unique, excluded = set(), [], 0
        full = store.full_windows(np.array([e.token_id - (e.peak_index or 0) for e in candidates], dtype=np.int64))
        for e, is_full in zip(candidates, full.tolist()):
            if e.token_id in seen or not is_full:  # a window with padding would be shorter than the others
                continue
            seen.add(e.token_id)
            span = e.span(ctx)
            if avoid.overlaps(*span):
                excluded += 1
            elif not taken.overlaps(*span):
                taken.add(*span)
                unique.append(e)
        unique = unique[: 3 * n]  # enough to survive verification, bounded work
        acts = self._latent_acts(store, latent, sorted({e.token_id // ctx for e in unique}))
        out = []
        for e in unique:
            seq, pos = divmod(e.token_id, ctx)
            lo = pos - (e.peak_index or 0)
            window = acts[seq][max(lo, 0) : max(lo + w, 0)]
            if window.size and np.all(window <= store.settings.threshold):
                out.append(
                    Example(
                        latent=latent,
                        tokens=e.tokens,
                        activations=np.zeros(w, dtype=np.float32),
                        value=0.0,
                        token_id=e.token_id,
                        source="neighbour",
                        peak_index=e.peak_index,
                        extra={"neighbour": e.latent},
                    )
                )
            if len(out) == n:
                break
        return out, excluded


def make_source(
    kind: str, *, renderer: Any = None, sae: Any = None, model: Any = None, embedder: str | None = None
) -> NegativeSource:
    if kind == "random":
        return RandomNegatives()
    if kind == "similar":
        return SimilarNegatives(renderer, embedder)
    if kind == "neighbours":
        return NeighbourNegatives(sae, model)
    raise ConfigError(f"negatives must be 'random', 'similar' or 'neighbours', got {kind!r}")
