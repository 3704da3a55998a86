"""Semantic similarity across SAEs: match latents one to one, then compare their explanations.

Paulo et al. (2024, "Automatically Interpreting Millions of Features in Large Language Models") ask whether
latents that correspond across SAEs (adjacent layers, other widths, other seeds) are explained alike. Two steps:

1. :func:`match_latents` pairs the latents of SAE A with those of SAE B one to one (the Hungarian algorithm,
   :func:`scipy.optimize.linear_sum_assignment`) by maximising either the cosine of their decoder directions
   (``method="decoder"``: both SAEs must write into the same space, i.e. the same ``d_in``) or the Pearson
   correlation of their activations over the same tokens (``method="activations"``: works across layers, widths
   and models that share a tokenizer). The :class:`Matching` keeps the similarity of each pair and the
   similarity of uniformly random pairs, the level a pairing carries no information at.
2. :func:`explanation_similarity` embeds the explanations of both sides (sentence embeddings, the project's
   offline MiniLM by default) and compares the cosine of matched pairs with that of random pairs of the same
   latents, each with a 95% bootstrap interval, and their difference with its interval. A cross-score hook
   (any callable scoring an explanation of A on B's examples) adds the behavioural version of the question.

:func:`similarity_matrix` runs either step over a list of SAEs (e.g. adjacent layers) and :func:`heatmap`
draws it. See ``docs/similarity.md``.

Memory: the activation method reads the model in batches and folds each batch into float64 sums, sums of
squares and cross-products (one ``[n_a, n_b]`` matrix), so the number of tokens does not change what is held.
The matrix itself grows as ``n_a * n_b``: restrict wide SAEs with ``latents_a`` / ``latents_b``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import torch

from .embedders import DEFAULT_EMBEDDER, embed
from .errors import ConfigError
from .harvest.corpus import batched, iter_sequences, resolve_corpus
from .harvest.model import ModelAdapter
from .harvest.store import PAD_TOKEN, LatentStore, RandomWindow
from .metrics import UNDEFINED, Estimate
from .results import ScoreResult

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE

    from .harvest.corpus import CorpusLike
    from .harvest.model import SubjectModel

log = logging.getLogger(__name__)

Method: TypeAlias = Literal["decoder", "activations"]
#: Explanations as ``{latent: text}`` (or ``{latent: Explanation}``), or a whole :class:`ScoreResult`.
ExplanationsLike: TypeAlias = "Mapping[int, Any] | ScoreResult"
#: ``embedder=``: a sentence-transformers name / path (see :mod:`sae_lens_autointerp.embedders`), or a callable
#: mapping a list of texts to an array ``[n_texts, dim]`` (normalised here).
EmbedderLike: TypeAlias = "str | Callable[[list[str]], Any]"
#: ``cross_score=``: ``(latent_b, explanation_text) -> score`` of an explanation on latent ``latent_b`` of SAE B
#: (NaN = the judge failed; the pair is counted and left out).
CrossScorer: TypeAlias = Callable[[int, str], float]

#: Largest similarity matrix built (``n_a * n_b`` entries, 8 bytes each in float64: 1 GiB).
MAX_MATRIX_ENTRIES = 1 << 27
DEFAULT_N_TOKENS = 8192


# ---------------------------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Matching:
    """A one-to-one matching of latents of SAE A with latents of SAE B.

    ``pairs`` [n_pairs, 2] holds (latent of A, latent of B), sorted by A; ``similarity`` [n_pairs] the
    similarity of each pair (decoder cosine or activation correlation, see ``method``); ``baseline`` the
    similarity of ``n_random`` uniformly random (A, B) pairs among the candidates, the level of a pairing that
    carries no information. With different numbers of candidates (a rectangular problem) ``min(n_a, n_b)``
    pairs are formed; the other side's leftovers are in :attr:`unmatched_b` / :attr:`unmatched_a`.
    ``dead_a`` / ``dead_b``: candidates left out because the similarity is undefined for them (a latent that
    never fires on the shared tokens or on fewer than ``min_active`` of them, a zero decoder row). ``n_tokens``: tokens the correlations are over
    (0 for the decoder method).
    """

    method: str
    pairs: np.ndarray
    similarity: np.ndarray
    baseline: np.ndarray
    d_sae_a: int
    d_sae_b: int
    candidates_a: np.ndarray
    candidates_b: np.ndarray
    dead_a: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dead_b: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_tokens: int = 0

    @property
    def n_pairs(self) -> int:
        return int(len(self.pairs))

    @property
    def mean(self) -> float:
        """Mean similarity of the matched pairs (NaN if none)."""
        return float(self.similarity.mean()) if len(self.similarity) else math.nan

    @property
    def baseline_mean(self) -> float:
        return float(self.baseline.mean()) if len(self.baseline) else math.nan

    @property
    def mapping(self) -> dict[int, int]:
        """Latent of A -> its match in B."""
        return {int(a): int(b) for a, b in self.pairs}

    @property
    def inverse(self) -> dict[int, int]:
        """Latent of B -> its match in A."""
        return {int(b): int(a) for a, b in self.pairs}

    @property
    def unmatched_a(self) -> np.ndarray:
        """Live candidates of A without a partner (more candidates in A than in B)."""
        live = np.setdiff1d(self.candidates_a, self.dead_a)
        return np.setdiff1d(live, self.pairs[:, 0])

    @property
    def unmatched_b(self) -> np.ndarray:
        live = np.setdiff1d(self.candidates_b, self.dead_b)
        return np.setdiff1d(live, self.pairs[:, 1])

    def baseline_quantile(self, q: float = 0.99) -> float:
        """The ``q`` quantile of the random-pair similarities."""
        return float(np.quantile(self.baseline, q)) if len(self.baseline) else math.nan

    @property
    def table(self) -> pd.DataFrame:
        """One row per pair: ``latent_a``, ``latent_b``, ``similarity``."""
        return pd.DataFrame({"latent_a": self.pairs[:, 0], "latent_b": self.pairs[:, 1], "similarity": self.similarity})

    def summary(self) -> dict[str, Any]:
        """Sizes, the mean matched similarity, the random-pair level and how many pairs clear its 99th
        percentile."""
        q99 = self.baseline_quantile(0.99)
        return {
            "method": self.method,
            "n_pairs": self.n_pairs,
            "n_candidates_a": int(len(self.candidates_a)),
            "n_candidates_b": int(len(self.candidates_b)),
            "n_dead_a": int(len(self.dead_a)),
            "n_dead_b": int(len(self.dead_b)),
            "n_tokens": self.n_tokens,
            "mean": self.mean,
            "median": float(np.median(self.similarity)) if len(self.similarity) else math.nan,
            "baseline_mean": self.baseline_mean,
            "baseline_q99": q99,
            "frac_above_baseline_q99": float((self.similarity > q99).mean()) if len(self.similarity) else math.nan,
        }

    def __repr__(self) -> str:
        return (
            f"Matching({self.method}, {self.n_pairs} pairs, mean {self.mean:.3f}, random pairs "
            f"{self.baseline_mean:.3f})"
        )


def match_latents(
    sae_a: SAE | None,
    sae_b: SAE | None,
    *,
    method: Method = "decoder",
    model: SubjectModel | None = None,
    dataset: CorpusLike | None = None,
    model_b: SubjectModel | None = None,
    store_a: LatentStore | str | os.PathLike[str] | None = None,
    store_b: LatentStore | str | os.PathLike[str] | None = None,
    latents_a: Sequence[int] | np.ndarray | None = None,
    latents_b: Sequence[int] | np.ndarray | None = None,
    n_tokens: int = DEFAULT_N_TOKENS,
    min_active: int = 1,
    ctx_len: int | None = None,
    batch_size: int = 8,
    text_column: str = "text",
    split: str = "train",
    streaming: bool = True,
    dataset_config: str | None = None,
    n_random: int = 10_000,
    seed: int = 0,
    progress: bool = True,
) -> Matching:
    """Match the latents of ``sae_a`` with those of ``sae_b`` one to one (Hungarian algorithm).

    Args:
        method: ``"decoder"``: cosine of the decoder directions (rows of ``W_dec``); needs one ``d_in``.
            ``"activations"``: Pearson correlation of the activations on the same tokens, read either through
            ``model`` (and ``model_b`` for B, default ``model``; both must share a tokenizer) on ``dataset``,
            or from two stores harvested alike (``store_a`` / ``store_b``: their shared random windows).
        latents_a / latents_b: candidates (default: every latent); restrict wide SAEs to bound the
            ``n_a * n_b`` matrix (at most :data:`MAX_MATRIX_ENTRIES`).
        n_tokens: valid tokens read for ``"activations"`` through a model (BOS, padding, special tokens and
            positions outside either SAE's ``seqpos_slice`` are left out).
        min_active: for ``"activations"``, a latent non-zero on fewer tokens is left out like a dead one (in
            ``dead_a`` / ``dead_b``). Two latents that each fire on one and the same token correlate exactly 1
            with each other's copies, a tie no matching can break; ``min_active=2`` removes such latents.
        ctx_len / batch_size / text_column / split / streaming / dataset_config: how ``dataset`` is read (as in
            :func:`~sae_lens_autointerp.harvest.harvest`); sequences follow A's ``prepend_bos``.
        n_random: random (A, B) pairs in :attr:`Matching.baseline`.
        seed: seeds the random pairs.
    """
    if method not in ("decoder", "activations"):
        raise ConfigError(f"method must be 'decoder' or 'activations', got {method!r}")
    if not isinstance(n_random, int) or n_random < 0:
        raise ConfigError(f"n_random must be a non-negative integer, got {n_random!r}")
    if not isinstance(min_active, int) or min_active < 1:
        raise ConfigError(f"min_active must be a positive integer, got {min_active!r}")
    stores = store_a is not None or store_b is not None
    if method == "decoder":
        if stores or dataset is not None:
            raise ConfigError(
                "method='decoder' reads only the SAEs' weights; drop dataset= / store_a= / store_b=, or pass "
                "method='activations' to correlate activations"
            )
        if sae_a is None or sae_b is None:
            raise ConfigError("method='decoder' needs both SAEs: match_latents(sae_a, sae_b)")
        d_a, d_b = int(sae_a.cfg.d_sae), int(sae_b.cfg.d_sae)
        la, lb = _candidates(latents_a, d_a, "latents_a"), _candidates(latents_b, d_b, "latents_b")
        _check_size(len(la), len(lb))
        sim, dead_a, dead_b = _decoder_similarity(sae_a, sae_b, la, lb)
        n_tok = 0
    elif stores:
        if store_a is None or store_b is None:
            raise ConfigError("pass both store_a= and store_b= (stores harvested on the same corpus), or neither")
        if model is not None or dataset is not None:
            raise ConfigError("pass either store_a= / store_b= or model= / dataset=, not both")
        sa, sb = _open_store(store_a), _open_store(store_b)
        d_a, d_b = sa.d_sae, sb.d_sae
        for sae, d, name in ((sae_a, d_a, "a"), (sae_b, d_b, "b")):
            if sae is not None and int(sae.cfg.d_sae) != d:
                raise ConfigError(
                    f"sae_{name} has d_sae={int(sae.cfg.d_sae)} but store_{name} holds {d} latents; pass the "
                    f"store harvested from sae_{name}"
                )
        la, lb = _candidates(latents_a, d_a, "latents_a"), _candidates(latents_b, d_b, "latents_b")
        _check_size(len(la), len(lb))
        acc = _store_correlations(sa, sb, la, lb)
        sim, dead_a, dead_b = acc.correlation(min_active)
        n_tok = acc.n
    else:
        if sae_a is None or sae_b is None:
            raise ConfigError("method='activations' needs both SAEs (or store_a= and store_b=)")
        if model is None or dataset is None:
            raise ConfigError(
                "method='activations' needs model= and dataset= (the tokens both SAEs are read on), or "
                "store_a= and store_b=; method='decoder' needs neither"
            )
        d_a, d_b = int(sae_a.cfg.d_sae), int(sae_b.cfg.d_sae)
        la, lb = _candidates(latents_a, d_a, "latents_a"), _candidates(latents_b, d_b, "latents_b")
        _check_size(len(la), len(lb))
        acc = _model_correlations(
            sae_a,
            sae_b,
            model,
            model_b if model_b is not None else model,
            dataset,
            la,
            lb,
            n_tokens=n_tokens,
            ctx_len=ctx_len,
            batch_size=batch_size,
            corpus_options=dict(
                text_column=text_column, split=split, streaming=streaming, dataset_config=dataset_config
            ),
            progress=progress,
        )
        sim, dead_a, dead_b = acc.correlation(min_active)
        n_tok = acc.n
    return _assign(method, sim, la, lb, dead_a, dead_b, d_a, d_b, n_random, seed, n_tok)


def _candidates(latents: Sequence[int] | np.ndarray | None, d_sae: int, name: str) -> np.ndarray:
    if latents is None:
        return np.arange(d_sae, dtype=np.int64)
    arr = np.asarray(latents)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(f"{name} must be a list of integer latent indices, got {latents!r:.80}")
    arr = arr.astype(np.int64)
    if arr.size == 0:
        raise ConfigError(f"{name} is empty; pass at least one latent (or None for all)")
    if arr.min() < 0 or arr.max() >= d_sae:
        raise ConfigError(f"{name} holds indices outside 0..{d_sae - 1} (this SAE has d_sae={d_sae})")
    if len(np.unique(arr)) != len(arr):
        raise ConfigError(f"{name} holds duplicate latents; a one-to-one matching needs each latent once")
    return arr


def _check_size(n_a: int, n_b: int) -> None:
    if n_a * n_b > MAX_MATRIX_ENTRIES:
        raise ConfigError(
            f"matching {n_a} x {n_b} latents needs a {n_a * n_b:,}-entry similarity matrix (more than "
            f"{MAX_MATRIX_ENTRIES:,}); restrict the candidates with latents_a= / latents_b= (e.g. a random subset)"
        )


def _decoder_similarity(
    sae_a: SAE, sae_b: SAE, la: np.ndarray, lb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    wa, wb = sae_a.W_dec.detach(), sae_b.W_dec.detach()
    if wa.shape[-1] != wb.shape[-1]:
        raise ConfigError(
            f"method='decoder' compares decoder directions, but SAE A writes {wa.shape[-1]}-dimensional and SAE B "
            f"{wb.shape[-1]}-dimensional vectors (d_in differs: another hook or model). Use "
            "method='activations' with model= and dataset= (it works across layers, widths and models with one "
            "tokenizer)"
        )
    wa = wa[torch.as_tensor(la)].to("cpu", torch.float64)
    wb = wb[torch.as_tensor(lb)].to("cpu", torch.float64)
    na, nb = wa.norm(dim=1), wb.norm(dim=1)
    sim = ((wa / na.clamp_min(1e-30).unsqueeze(1)) @ (wb / nb.clamp_min(1e-30).unsqueeze(1)).T).numpy()
    return np.clip(sim, -1.0, 1.0), (na == 0).numpy(), (nb == 0).numpy()


def _assign(
    method: str,
    sim: np.ndarray,
    la: np.ndarray,
    lb: np.ndarray,
    dead_a: np.ndarray,
    dead_b: np.ndarray,
    d_a: int,
    d_b: int,
    n_random: int,
    seed: int,
    n_tokens: int,
) -> Matching:
    """Hungarian assignment over the live candidates; ``dead_*`` are boolean masks over the candidates."""
    from scipy.optimize import linear_sum_assignment

    live_a, live_b = np.flatnonzero(~dead_a), np.flatnonzero(~dead_b)
    if not len(live_a) or not len(live_b):
        side = "A" if not len(live_a) else "B"
        raise ConfigError(
            f"no candidate latent of SAE {side} has a defined similarity (all dead on the shared tokens, or zero "
            "decoder rows); read more tokens (n_tokens=) or pass other latents"
        )
    live = sim[np.ix_(live_a, live_b)]
    rows, cols = linear_sum_assignment(live, maximize=True)
    pairs = np.stack([la[live_a[rows]], lb[live_b[cols]]], axis=1).astype(np.int64)
    similarity = live[rows, cols].astype(np.float64)
    order = np.argsort(pairs[:, 0], kind="stable")
    rng = np.random.default_rng(seed)
    baseline = live[rng.integers(0, len(live_a), n_random), rng.integers(0, len(live_b), n_random)]
    return Matching(
        method=method,
        pairs=pairs[order],
        similarity=similarity[order],
        baseline=baseline.astype(np.float64),
        d_sae_a=d_a,
        d_sae_b=d_b,
        candidates_a=la,
        candidates_b=lb,
        dead_a=la[dead_a],
        dead_b=lb[dead_b],
        n_tokens=n_tokens,
    )


# ---------------------------------------------------------------------------------------------------------------
# Correlations of activations, accumulated batch by batch
# ---------------------------------------------------------------------------------------------------------------


class _Correlations:
    """Running float64 sums, sums of squares and cross-products of two sets of activations."""

    #: below this fraction of non-zeros a batch is multiplied as a sparse matrix
    SPARSE_BELOW = 0.2

    def __init__(self, n_a: int, n_b: int) -> None:
        self.n = 0
        self.sum_a, self.sum_b = np.zeros(n_a), np.zeros(n_b)
        self.sq_a, self.sq_b = np.zeros(n_a), np.zeros(n_b)
        self.cross = np.zeros((n_a, n_b))
        self.active_a, self.active_b = np.zeros(n_a, dtype=np.int64), np.zeros(n_b, dtype=np.int64)

    def update(self, acts_a: np.ndarray, acts_b: np.ndarray) -> None:
        """acts_a [tokens, n_a], acts_b [tokens, n_b]: the same tokens, in the same order."""
        from scipy import sparse

        a, b = np.asarray(acts_a, dtype=np.float64), np.asarray(acts_b, dtype=np.float64)
        if len(a) != len(b):
            raise AssertionError(f"{len(a)} != {len(b)} tokens")
        if not len(a):
            return
        self.n += len(a)
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.sq_a += np.einsum("ij,ij->j", a, a)
        self.sq_b += np.einsum("ij,ij->j", b, b)
        self.active_a += np.count_nonzero(a, axis=0)
        self.active_b += np.count_nonzero(b, axis=0)
        dens_a, dens_b = np.count_nonzero(a) / a.size, np.count_nonzero(b) / b.size
        if min(dens_a, dens_b) < self.SPARSE_BELOW:
            if dens_a <= dens_b:
                self.cross += np.asarray(sparse.csr_matrix(a).T @ b)
            else:
                self.cross += np.asarray(sparse.csr_matrix(b).T @ a).T
        else:
            self.cross += a.T @ b

    def correlation(self, min_active: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(r [n_a, n_b], dead_a, dead_b): Pearson r, with rows / columns of latents constant on the tokens
        (undefined r) or non-zero on fewer than ``min_active`` tokens set to NaN and flagged."""
        if self.n < 2:
            raise ConfigError(f"only {self.n} usable tokens were read; correlations need many (raise n_tokens=)")
        n = self.n
        mean_a, mean_b = self.sum_a / n, self.sum_b / n
        var_a = np.maximum(self.sq_a / n - mean_a**2, 0.0)
        var_b = np.maximum(self.sq_b / n - mean_b**2, 0.0)
        const_a = var_a <= 1e-12 * np.maximum(self.sq_a / n, np.finfo(float).tiny)
        const_b = var_b <= 1e-12 * np.maximum(self.sq_b / n, np.finfo(float).tiny)
        const_a |= self.active_a < min_active
        const_b |= self.active_b < min_active
        cov = self.cross / n - np.outer(mean_a, mean_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = cov / np.sqrt(np.outer(var_a, var_b))
        r = np.clip(r, -1.0, 1.0)
        r[const_a, :] = np.nan
        r[:, const_b] = np.nan
        return r, const_a, const_b


def _model_correlations(
    sae_a: SAE,
    sae_b: SAE,
    model_a: SubjectModel,
    model_b: SubjectModel,
    dataset: CorpusLike,
    la: np.ndarray,
    lb: np.ndarray,
    *,
    n_tokens: int,
    ctx_len: int | None,
    batch_size: int,
    corpus_options: dict[str, Any],
    progress: bool,
) -> _Correlations:
    from tqdm.auto import tqdm

    if not isinstance(n_tokens, int) or n_tokens < 2:
        raise ConfigError(f"n_tokens must be an integer >= 2, got {n_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    ad_a, ad_b = ModelAdapter(model_a, sae_a), ModelAdapter(model_b, sae_b)
    if model_b is not model_a:
        _check_same_tokenizer(ad_a, ad_b)
    ad_a.check_width()
    ad_b.check_width()
    ctx = _ctx_len(ctx_len, ad_a, ad_b)
    corpus = resolve_corpus(dataset, **corpus_options)
    if corpus.kind == "tokens":
        vocab = min(_vocab_size(ad_a), _vocab_size(ad_b))
        low, high = int(corpus.source.min()), int(corpus.source.max())
        if low < 0 or high >= vocab:
            raise ConfigError(
                f"the token tensor holds ids from {low} to {high}, but the vocabulary is 0..{vocab - 1}; tokenize "
                "with the models' own tokenizer"
            )
    special = torch.tensor(sorted(set(ad_a.special_token_ids()) | set(ad_b.special_token_ids())), dtype=torch.long)
    in_slice = torch.ones(ctx, dtype=torch.bool)
    for spec in (ad_a.spec, ad_b.spec):
        if spec.seqpos_slice is not None:
            mask = torch.zeros(ctx, dtype=torch.bool)
            mask[slice(*spec.seqpos_slice)] = True
            in_slice &= mask
    same_input = (
        model_b is model_a and ad_a.hook_point == ad_b.hook_point and ad_a.spec.head_index == ad_b.spec.head_index
    )
    idx_a, idx_b = torch.as_tensor(la), torch.as_tensor(lb)
    full_a, full_b = len(la) == int(sae_a.cfg.d_sae), len(lb) == int(sae_b.cfg.d_sae)
    sequences = iter_sequences(
        corpus,
        ad_a.tokenizer,
        ctx_len=ctx,
        prepend_bos=ad_a.spec.prepend_bos,
        bos_id=ad_a.bos_token_id(),
        separator_id=ad_a.separator_token_id(),
    )
    acc = _Correlations(len(la), len(lb))
    pad_id = ad_a.pad_token_id()
    bar = tqdm(total=n_tokens, unit="tok", desc="correlate", disable=not progress)
    with torch.inference_mode():
        for batch in batched(sequences, batch_size):
            tokens = torch.full((len(batch), ctx), pad_id, dtype=torch.long)
            real = torch.zeros((len(batch), ctx), dtype=torch.bool)
            for row, seq in enumerate(batch):
                tokens[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
                real[row, : len(seq)] = True
            width = int(real.sum(1).max())
            tokens = tokens[:, :width]
            valid = real[:, :width] & ~torch.isin(tokens, special) & in_slice[:width]
            x_a = ad_a.capture(tokens)
            x_b = x_a.to(sae_b.device, sae_b.dtype) if same_input else ad_b.capture(tokens)
            acts_a = _dense(sae_a.encode(x_a))[valid.to(x_a.device)]
            acts_b = _dense(sae_b.encode(x_b))[valid.to(x_b.device)]
            keep = min(len(acts_a), n_tokens - acc.n)
            acts_a, acts_b = acts_a[:keep], acts_b[:keep]
            if not full_a:
                acts_a = acts_a[:, idx_a.to(acts_a.device)]
            if not full_b:
                acts_b = acts_b[:, idx_b.to(acts_b.device)]
            acc.update(acts_a.double().cpu().numpy(), acts_b.double().cpu().numpy())
            bar.update(keep)
            if acc.n >= n_tokens:
                break
    bar.close()
    if acc.n < n_tokens:
        log.info("the corpus ran out after %d of %d tokens", acc.n, n_tokens)
    return acc


def _dense(acts: torch.Tensor) -> torch.Tensor:
    return acts.to_dense() if acts.is_sparse else acts


def _vocab_size(adapter: ModelAdapter) -> int:
    return adapter.subject.d_vocab


def _ctx_len(ctx_len: int | None, ad_a: ModelAdapter, ad_b: ModelAdapter) -> int:
    limits = [n for n in (ad_a.n_ctx, ad_b.n_ctx) if n]
    if ctx_len is None:
        sizes = [int(s) for s in (ad_a.spec.context_size, ad_b.spec.context_size) if s]
        ctx_len = min(sizes) if sizes else 128
        if limits:
            ctx_len = min([ctx_len, *limits])
    if not isinstance(ctx_len, int) or ctx_len < 2:
        raise ConfigError(f"ctx_len must be an integer >= 2, got {ctx_len!r}")
    if limits and ctx_len > min(limits):
        raise ConfigError(f"ctx_len={ctx_len} is longer than a model's context window ({min(limits)} tokens)")
    return ctx_len


def _check_same_tokenizer(ad_a: ModelAdapter, ad_b: ModelAdapter) -> None:
    get_a, get_b = getattr(ad_a.tokenizer, "get_vocab", None), getattr(ad_b.tokenizer, "get_vocab", None)
    same = callable(get_a) and callable(get_b) and get_a() == get_b()
    if not same:
        raise ConfigError(
            "model and model_b have different tokenizers, so the same token ids are different text; correlations "
            "over tokens need one tokenizer. Compare SAEs of models that share it, or use method='decoder' for "
            "SAEs on one model"
        )


def _open_store(store: LatentStore | str | os.PathLike[str]) -> LatentStore:
    return store if isinstance(store, LatentStore) else LatentStore(store)


def _store_correlations(sa: LatentStore, sb: LatentStore, la: np.ndarray, lb: np.ndarray) -> _Correlations:
    """Correlations over the random windows both stores hold (same start and same tokens). A token at which
    neither SAE has any active latent is taken as masked (BOS, special token): masked positions are stored as
    zeros, and a real token activates some latent of a trained SAE."""
    if sa.meta.get("corpus") != sb.meta.get("corpus"):
        raise ConfigError(
            "store_a and store_b were harvested on different corpora; correlations need the same tokens. Harvest "
            "both on one corpus, or pass model= and dataset="
        )
    windows_a = {w.start_id: w for w in sa.random_windows()}
    shared: list[tuple[RandomWindow, RandomWindow]] = []
    for wb in sb.random_windows():
        wa = windows_a.get(wb.start_id)
        if wa is not None and np.array_equal(wa.tokens, wb.tokens):
            shared.append((wa, wb))
    if not shared:
        raise ConfigError(
            "store_a and store_b share no random window. Their pools match when both are harvested with the same "
            "corpus, n_tokens, ctx_len, batch_size, example_len, seed and d_sae; otherwise pass model= and dataset="
        )
    pos_a, pos_b = np.full(sa.d_sae, -1, dtype=np.int64), np.full(sb.d_sae, -1, dtype=np.int64)
    pos_a[la], pos_b[lb] = np.arange(len(la)), np.arange(len(lb))
    acc = _Correlations(len(la), len(lb))
    for start in range(0, len(shared), 256):
        rows_a, rows_b, masks = [], [], []
        for wa, wb in shared[start : start + 256]:
            w = len(wa.tokens)
            dense_a, dense_b = np.zeros((w, len(la))), np.zeros((w, len(lb)))
            live = np.zeros(w, dtype=bool)
            live[wa.positions] = True
            live[wb.positions] = True
            for win, pos, dense in ((wa, pos_a, dense_a), (wb, pos_b, dense_b)):
                cols = pos[win.latents]
                ok = cols >= 0
                dense[win.positions[ok], cols[ok]] = win.values[ok]
            rows_a.append(dense_a)
            rows_b.append(dense_b)
            masks.append(live & (wa.tokens != PAD_TOKEN))
        mask = np.concatenate(masks)
        acc.update(np.concatenate(rows_a)[mask], np.concatenate(rows_b)[mask])
    return acc


# ---------------------------------------------------------------------------------------------------------------
# Explanation similarity
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SimilarityResult:
    """Explanation similarity of matched latents against random pairs of the same latents.

    ``matched`` / ``random``: mean embedding cosine of the matched pairs and of ``n_random`` random pairs
    (an A latent with the B partner of another pair), each with a percentile bootstrap interval;
    ``difference`` = matched - random with its interval (``signal``: the interval excludes 0, above).
    ``pairs``: one row per usable pair (``latent_a``, ``latent_b``, ``match_similarity``, ``text_a``,
    ``text_b``, ``similarity``, and ``cross_score`` with a cross-scorer). Failed or empty explanations are
    left out and counted: ``n_failed_a`` / ``n_failed_b`` matched latents had one, and ``n_missing`` matched
    pairs were left out for want of a usable explanation on either side (failed or not given), so
    ``n_pairs + n_missing`` is the matching's size. ``cross`` / ``cross_random`` / ``cross_difference``: the
    same for the cross-score hook (``None`` without one), over ``n_cross`` matched and ``n_cross_random``
    random pairs that got a score; ``n_cross_failed`` counts its NaN answers (both kinds).
    """

    matched: Estimate
    random: Estimate
    difference: Estimate
    n_pairs: int
    n_random: int
    n_failed_a: int
    n_failed_b: int
    n_missing: int
    pairs: pd.DataFrame
    random_similarity: np.ndarray
    embedder: str
    confidence: float = 0.95
    cross: Estimate | None = None
    cross_random: Estimate | None = None
    cross_difference: Estimate | None = None
    n_cross_failed: int = 0
    n_cross: int = 0
    n_cross_random: int = 0

    @property
    def signal(self) -> bool:
        """Matched explanations are more alike than random pairs (the difference's interval is above 0)."""
        return bool(self.difference.low > 0)

    def summary(self) -> pd.DataFrame:
        """One row per statistic: ``statistic``, ``n``, ``mean``, ``low``, ``high``."""
        rows = [
            ("matched", self.n_pairs, self.matched),
            ("random", self.n_random, self.random),
            ("difference", self.n_pairs, self.difference),
        ]
        if self.cross is not None and self.cross_random is not None and self.cross_difference is not None:
            rows += [
                ("cross_matched", self.n_cross, self.cross),
                ("cross_random", self.n_cross_random, self.cross_random),
                ("cross_difference", self.n_cross, self.cross_difference),
            ]
        return pd.DataFrame(
            [{"statistic": s, "n": n, "mean": e.value, "low": e.low, "high": e.high} for s, n, e in rows],
            columns=["statistic", "n", "mean", "low", "high"],
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "matched": self.matched.to_dict(),
            "random": self.random.to_dict(),
            "difference": self.difference.to_dict(),
            "n_pairs": self.n_pairs,
            "n_random": self.n_random,
            "n_failed_a": self.n_failed_a,
            "n_failed_b": self.n_failed_b,
            "n_missing": self.n_missing,
            "embedder": self.embedder,
            "confidence": self.confidence,
        }
        if self.cross is not None:
            out["cross"] = self.cross.to_dict()
            out["cross_random"] = self.cross_random.to_dict() if self.cross_random else None
            out["cross_difference"] = self.cross_difference.to_dict() if self.cross_difference else None
            out["n_cross_failed"] = self.n_cross_failed
            out["n_cross"] = self.n_cross
            out["n_cross_random"] = self.n_cross_random
        return out

    def __repr__(self) -> str:
        return (
            f"SimilarityResult({self.n_pairs} pairs: matched {self.matched.value:.3f} "
            f"[{self.matched.low:.3f}, {self.matched.high:.3f}], random {self.random.value:.3f}, difference "
            f"{self.difference.value:.3f} [{self.difference.low:.3f}, {self.difference.high:.3f}])"
        )


def explanation_texts(explanations: ExplanationsLike) -> tuple[dict[int, str], dict[int, str]]:
    """``({latent: text}, {latent: why it is unusable})`` of ``{latent: str | Explanation}`` or a
    :class:`ScoreResult`. Failed explanations (``failed=True``), ``None`` and empty texts are unusable."""
    items: Mapping[int, Any]
    if isinstance(explanations, ScoreResult):
        items = explanations.explanations
    elif isinstance(explanations, Mapping):
        items = explanations
    else:
        raise ConfigError(
            f"explanations must be a dict {{latent: text}} (or {{latent: Explanation}}) or a ScoreResult, got "
            f"{type(explanations).__name__}"
        )
    usable: dict[int, str] = {}
    failed: dict[int, str] = {}
    for key, value in items.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise ConfigError(f"explanation keys must be latent indices (int), got {key!r}")
        latent = int(key)
        if value is None:
            failed[latent] = "no explanation"
            continue
        if getattr(value, "failed", False):
            failed[latent] = str(getattr(value, "error", None) or "the explainer failed")
            continue
        text = value if isinstance(value, str) else getattr(value, "text", None)
        if not isinstance(text, str):
            raise ConfigError(f"explanation of latent {latent} is a {type(value).__name__}, not a string")
        if not text.strip():
            failed[latent] = "empty explanation"
            continue
        usable[latent] = text.strip()
    return usable, failed


def _embed(texts: list[str], embedder: EmbedderLike) -> np.ndarray:
    if isinstance(embedder, str):
        return embed(texts, embedder)
    if not callable(embedder):
        raise ConfigError(f"embedder must be a model name or a callable texts -> array, got {type(embedder).__name__}")
    vectors = np.asarray(embedder(texts), dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ConfigError(
            f"the embedder returned shape {vectors.shape} for {len(texts)} texts; expected [n_texts, dim]"
        )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _bootstrap_mean(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """``n_boot`` means of resamples (with replacement) of ``values``."""
    out = np.empty(n_boot)
    step = max(1, (1 << 22) // max(len(values), 1))  # bounded memory for long inputs
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        out[start : start + k] = values[rng.integers(0, len(values), (k, len(values)))].mean(1)
    return out


def _interval(value: float, boot: np.ndarray, confidence: float) -> Estimate:
    alpha = 1 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(value), min(float(low), float(value)), max(float(high), float(value)))


def _compare_means(
    matched: np.ndarray, random: np.ndarray, rng: np.random.Generator, n_boot: int, confidence: float
) -> tuple[Estimate, Estimate, Estimate]:
    """Means of both samples and their difference, with independent percentile bootstraps."""
    if not len(matched) or not len(random):
        return UNDEFINED, UNDEFINED, UNDEFINED
    boot_m = _bootstrap_mean(matched, rng, n_boot)
    boot_r = _bootstrap_mean(random, rng, n_boot)
    m, r = float(matched.mean()), float(random.mean())
    return (
        _interval(m, boot_m, confidence),
        _interval(r, boot_r, confidence),
        _interval(m - r, boot_m - boot_r, confidence),
    )


def _random_partners(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``k`` index pairs (i, j), i != j, uniform over the ``n * (n - 1)`` off-diagonal pairs."""
    i = rng.integers(0, n, k)
    j = (i + rng.integers(1, n, k)) % n
    return i, j


def explanation_similarity(
    matching: Matching,
    explanations_a: ExplanationsLike,
    explanations_b: ExplanationsLike,
    *,
    embedder: EmbedderLike = DEFAULT_EMBEDDER,
    n_random: int = 2000,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    cross_score: CrossScorer | None = None,
    n_cross_random: int | None = None,
) -> SimilarityResult:
    """How alike are the explanations of matched latents, against random pairs of the same latents?

    A pair is usable when both of its latents have a usable explanation. Random pairs join the A latent of one
    usable pair with the B latent of another (uniformly, ``n_random`` draws), so both sides keep the same
    latents and only the pairing is broken. Similarity is the cosine of sentence embeddings (``embedder``).

    ``cross_score(latent_b, text_a)`` (optional) scores A's explanation on B's latent, e.g. a detection score
    on B's examples; it is called for every usable pair and for ``n_cross_random`` random pairs (default: as
    many as usable pairs), and gives ``cross`` / ``cross_random`` / ``cross_difference``. A NaN answer is a
    failed judgment: counted in ``n_cross_failed`` and left out. Exceptions propagate.
    """
    if not isinstance(matching, Matching):
        raise ConfigError(f"matching must be the Matching from match_latents(), got {type(matching).__name__}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    if not isinstance(n_random, int) or n_random < 1 or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError("n_random and n_boot must be positive integers")
    texts_a, failed_a = explanation_texts(explanations_a)
    texts_b, failed_b = explanation_texts(explanations_b)
    matched_a, matched_b = set(matching.pairs[:, 0].tolist()), set(matching.pairs[:, 1].tolist())
    usable = [
        (int(a), int(b), float(s))
        for (a, b), s in zip(matching.pairs.tolist(), matching.similarity.tolist())
        if a in texts_a and b in texts_b
    ]
    n_missing = matching.n_pairs - len(usable)
    if len(usable) < 2:
        raise ConfigError(
            f"only {len(usable)} of {matching.n_pairs} matched pairs have a usable explanation on both sides "
            f"({len(failed_a)} failed in A, {len(failed_b)} in B); explanation similarity needs at least 2. "
            "Explain both latents of more matched pairs (Matching.pairs)"
        )
    lat_a = np.array([p[0] for p in usable])
    lat_b = np.array([p[1] for p in usable])
    strings = sorted({texts_a[a] for a in lat_a} | {texts_b[b] for b in lat_b})
    index = {s: i for i, s in enumerate(strings)}
    vectors = _embed(strings, embedder).astype(np.float64)
    va = vectors[[index[texts_a[a]] for a in lat_a]]
    vb = vectors[[index[texts_b[b]] for b in lat_b]]
    cos = np.clip(np.einsum("ij,ij->i", va, vb), -1.0, 1.0)
    rng = np.random.default_rng(seed)
    i, j = _random_partners(len(usable), n_random, rng)
    cos_random = np.clip(np.einsum("ij,ij->i", va[i], vb[j]), -1.0, 1.0)
    matched, random, difference = _compare_means(cos, cos_random, rng, n_boot, confidence)
    pairs = pd.DataFrame(
        {
            "latent_a": lat_a,
            "latent_b": lat_b,
            "match_similarity": [p[2] for p in usable],
            "text_a": [texts_a[a] for a in lat_a],
            "text_b": [texts_b[b] for b in lat_b],
            "similarity": cos,
        }
    )
    cross = cross_random = cross_difference = None
    n_cross_failed = n_cross = n_cross_random_ok = 0
    if cross_score is not None:
        if not callable(cross_score):
            raise ConfigError("cross_score must be a callable (latent_b, explanation_text) -> float")
        own = np.array([_call_score(cross_score, int(b), texts_a[int(a)]) for a, b in zip(lat_a, lat_b)])
        k = len(usable) if n_cross_random is None else int(n_cross_random)
        ci, cj = _random_partners(len(usable), k, rng)
        other = np.array([_call_score(cross_score, int(lat_b[q]), texts_a[int(lat_a[p])]) for p, q in zip(ci, cj)])
        n_cross, n_cross_random_ok = int(np.isfinite(own).sum()), int(np.isfinite(other).sum())
        n_cross_failed = len(own) + len(other) - n_cross - n_cross_random_ok
        pairs["cross_score"] = own
        cross, cross_random, cross_difference = _compare_means(
            own[np.isfinite(own)], other[np.isfinite(other)], rng, n_boot, confidence
        )
    return SimilarityResult(
        matched=matched,
        random=random,
        difference=difference,
        n_pairs=len(usable),
        n_random=n_random,
        n_failed_a=len(matched_a.intersection(failed_a)),
        n_failed_b=len(matched_b.intersection(failed_b)),
        n_missing=n_missing,
        pairs=pairs,
        random_similarity=cos_random,
        embedder=embedder if isinstance(embedder, str) else getattr(embedder, "__name__", type(embedder).__name__),
        confidence=confidence,
        cross=cross,
        cross_random=cross_random,
        cross_difference=cross_difference,
        n_cross_failed=n_cross_failed,
        n_cross=n_cross,
        n_cross_random=n_cross_random_ok,
    )


def _call_score(fn: CrossScorer, latent_b: int, text: str) -> float:
    value = fn(latent_b, text)
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cross_score returned {value!r} for latent {latent_b}; it must return a number") from exc


# ---------------------------------------------------------------------------------------------------------------
# Two SAEs in one call; many SAEs as a matrix
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PairSimilarity:
    """What :func:`similarity` returns: the latent matching and, with explanations, their similarity."""

    matching: Matching
    explanations: SimilarityResult | None = None

    def summary(self) -> dict[str, Any]:
        out = dict(self.matching.summary())
        if self.explanations is not None:
            out.update({f"explanation_{k}": v for k, v in self.explanations.to_dict().items()})
        return out


def similarity(
    sae_a: SAE | None,
    sae_b: SAE | None,
    explanations_a: ExplanationsLike | None = None,
    explanations_b: ExplanationsLike | None = None,
    *,
    embedder: EmbedderLike = DEFAULT_EMBEDDER,
    n_random_explanations: int = 2000,
    cross_score: CrossScorer | None = None,
    seed: int = 0,
    **match_kwargs: Any,
) -> PairSimilarity:
    """:func:`match_latents` (``match_kwargs``: ``method``, ``model``, ``dataset``, ``latents_a``, ...) and, when
    both explanation sets are given, :func:`explanation_similarity` on the matching."""
    if (explanations_a is None) != (explanations_b is None):
        raise ConfigError("pass explanations for both SAEs (explanations_a and explanations_b), or for neither")
    matching = match_latents(sae_a, sae_b, seed=seed, **match_kwargs)
    result = None
    if explanations_a is not None and explanations_b is not None:
        result = explanation_similarity(
            matching,
            explanations_a,
            explanations_b,
            embedder=embedder,
            n_random=n_random_explanations,
            seed=seed,
            cross_score=cross_score,
        )
    return PairSimilarity(matching, result)


Statistic: TypeAlias = Literal["matched", "random", "difference"]


def _labelled(items: Sequence[Any] | Mapping[str, Any], what: str) -> tuple[list[str], list[Any]]:
    if isinstance(items, Mapping):
        return [str(k) for k in items], list(items.values())
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ConfigError(f"{what} must be a list or a dict of SAEs, got {type(items).__name__}")
    values = list(items)
    hooks = [getattr(getattr(getattr(s, "cfg", None), "metadata", None), "hook_name", None) for s in values]
    if all(isinstance(h, str) and h for h in hooks) and len(set(hooks)) == len(hooks):
        return [str(h) for h in hooks], values
    return [str(i) for i in range(len(values))], values


def _aligned(items: Sequence[Any] | Mapping[str, Any] | None, labels: list[str], what: str) -> list[Any]:
    if items is None:
        return [None] * len(labels)
    if isinstance(items, Mapping):
        missing = [name for name in labels if name not in items]
        if missing:
            raise ConfigError(f"{what} has no entry for {missing}; give one per SAE, keyed like the SAEs")
        return [items[name] for name in labels]
    values = list(items)
    if len(values) != len(labels):
        raise ConfigError(f"{what} has {len(values)} entries for {len(labels)} SAEs; give one per SAE, in order")
    return values


def similarity_matrix(
    saes: Sequence[SAE] | Mapping[str, SAE],
    *,
    method: Method = "decoder",
    explanations: Sequence[ExplanationsLike] | Mapping[str, ExplanationsLike] | None = None,
    stores: Sequence[LatentStore | str | os.PathLike[str]] | Mapping[str, Any] | None = None,
    statistic: Statistic = "matched",
    adjacent_only: bool = False,
    embedder: EmbedderLike = DEFAULT_EMBEDDER,
    seed: int = 0,
    **match_kwargs: Any,
) -> pd.DataFrame:
    """A square DataFrame over ``saes`` (a list, e.g. adjacent layers, or ``{name: sae}``).

    Without ``explanations`` an entry is the latent similarity of the matching (``statistic="matched"``: mean
    over matched pairs; ``"random"``: the random-pair level; ``"difference"``: their difference); with
    ``explanations`` (one set per SAE, aligned with ``saes``) it is the explanation similarity of
    :func:`explanation_similarity` (the same three statistics). Both are symmetric, so each pair is computed
    once; the diagonal is 1 for ``"matched"`` (a latent matches itself with similarity 1, and its explanation
    is its own). ``adjacent_only`` computes only neighbours in the given order (the rest stays NaN).
    ``stores``: one store per SAE for ``method="activations"`` without a model. ``match_kwargs`` go to
    :func:`match_latents` (``model``, ``dataset``, ``n_tokens``, ``latents_a``, ...). Labels: the dict keys,
    else the hook names when they differ, else positions.
    """
    if statistic not in ("matched", "random", "difference"):
        raise ConfigError(f"statistic must be 'matched', 'random' or 'difference', got {statistic!r}")
    labels, values = _labelled(saes, "saes")
    if len(values) < 2:
        raise ConfigError("similarity_matrix needs at least two SAEs")
    expl = _aligned(explanations, labels, "explanations")
    store_list = _aligned(stores, labels, "stores")
    n = len(values)
    matrix = np.full((n, n), np.nan)
    for i in range(n):
        if statistic == "matched":
            matrix[i, i] = 1.0
        for j in range(i + 1, n):
            if adjacent_only and j != i + 1:
                continue
            kwargs = dict(match_kwargs)
            if stores is not None:
                kwargs.update(store_a=store_list[i], store_b=store_list[j])
            matching = match_latents(values[i], values[j], method=method, seed=seed, **kwargs)
            if explanations is None:
                stats = {"matched": matching.mean, "random": matching.baseline_mean}
                stats["difference"] = stats["matched"] - stats["random"]
                value = stats[statistic]
            else:
                result = explanation_similarity(matching, expl[i], expl[j], embedder=embedder, seed=seed)
                value = {"matched": result.matched, "random": result.random, "difference": result.difference}[
                    statistic
                ].value
            matrix[i, j] = matrix[j, i] = value
    frame = pd.DataFrame(matrix, index=labels, columns=labels)
    frame.attrs.update(
        method=method, statistic=statistic, value="explanation" if explanations is not None else "latent"
    )
    return frame


def heatmap(
    matrix: pd.DataFrame, *, title: str | None = None, zmin: float | None = None, zmax: float | None = None
) -> go.Figure:
    """A plotly heatmap of a :func:`similarity_matrix` (values printed in the cells)."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise ConfigError("heatmap() needs plotly: `pip install plotly`") from exc
    if not isinstance(matrix, pd.DataFrame):
        raise ConfigError(f"heatmap() takes the DataFrame from similarity_matrix(), got {type(matrix).__name__}")
    values = matrix.to_numpy(dtype=float)
    text = [["" if not np.isfinite(v) else f"{v:.2f}" for v in row] for row in values]
    if title is None:
        what = matrix.attrs.get("value", "latent")
        title = f"{what} similarity ({matrix.attrs.get('statistic', 'matched')}, {matrix.attrs.get('method', '')})"
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=[str(c) for c in matrix.columns],
            y=[str(i) for i in matrix.index],
            text=text,
            texttemplate="%{text}",
            zmin=zmin,
            zmax=zmax,
            colorscale="Viridis",
            colorbar={"title": "similarity"},
        )
    )
    fig.update_layout(title=title, yaxis={"autorange": "reversed"})
    return fig
