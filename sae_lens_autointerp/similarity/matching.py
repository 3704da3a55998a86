"""Step 1: match the latents of two SAEs one to one (the Hungarian algorithm) by decoder cosine or by the
correlation of their activations."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError
from ..harvest.store import LatentStore
from .correlations import _model_correlations, _open_store, _store_correlations

if TYPE_CHECKING:
    from sae_lens import SAE

    from ..harvest.corpus import CorpusLike
    from ..harvest.model import SubjectModel

Method: TypeAlias = Literal["decoder", "activations"]

#: Largest similarity matrix built (``n_a * n_b`` entries, 8 bytes each in float64: 1 GiB).
MAX_MATRIX_ENTRIES = 1 << 27
DEFAULT_N_TOKENS = 8192


@dataclass(frozen=True, eq=False)
class Matching:
    """A one-to-one matching of latents of SAE A with latents of SAE B.

    ``pairs`` [n_pairs, 2] holds (latent of A, latent of B), sorted by A; ``similarity`` [n_pairs] the
    similarity of each pair (decoder cosine or activation correlation, see ``method``); ``baseline`` the
    similarity of ``n_random`` uniformly random (A, B) pairs among the candidates, the level of a pairing that
    carries no information. The Hungarian step *maximises*, so matched pairs beat random pairs even between
    unrelated SAEs; the null for the matched mean is ``null``: the matched similarities of A's live candidates
    against as many seeded Gaussian random directions (decoder method only; empty for activations, where a
    matching against a random SAE's activations is the comparable null). With different numbers of candidates (a rectangular problem) ``min(n_a, n_b)``
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
    null: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

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
    def null_mean(self) -> float:
        """Mean similarity of a matching against random directions (NaN without one): the matched mean's null."""
        return float(self.null.mean()) if len(self.null) else math.nan

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
        """Sizes, the mean matched similarity, its null (a matching against random directions), the random-pair
        level and how many pairs clear its 99th percentile."""
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
            "null_mean": self.null_mean,
            "baseline_mean": self.baseline_mean,
            "baseline_q99": q99,
            "frac_above_baseline_q99": float((self.similarity > q99).mean()) if len(self.similarity) else math.nan,
        }

    def __repr__(self) -> str:
        return (
            f"Matching({self.method}, {self.n_pairs} pairs, mean {self.mean:.3f}, matched null "
            f"{self.null_mean:.3f}, random pairs {self.baseline_mean:.3f})"
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
    matched_null: bool = True,
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
        matched_null: for ``"decoder"``, also match A against seeded Gaussian random directions
            (:attr:`Matching.null`; a second Hungarian step of the same size).
        seed: seeds the random pairs and directions.
    """
    if method not in ("decoder", "activations"):
        raise ConfigError(f"method must be 'decoder' or 'activations', got {method!r}")
    if not isinstance(n_random, int) or n_random < 0:
        raise ConfigError(f"n_random must be a non-negative integer, got {n_random!r}")
    if not isinstance(min_active, int) or min_active < 1:
        raise ConfigError(f"min_active must be a positive integer, got {min_active!r}")
    stores = store_a is not None or store_b is not None
    null = np.zeros(0, dtype=np.float64)  # the decoder method's matched null (activations: none)
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
        if matched_null:
            null = _decoder_null(sae_a, la[~dead_a], int((~dead_b).sum()), seed)
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
    matching = _assign(method, sim, la, lb, dead_a, dead_b, d_a, d_b, n_random, seed, n_tok)
    return dataclasses.replace(matching, null=null)


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


def _decoder_null(sae_a: SAE, live_a: np.ndarray, n_b: int, seed: int) -> np.ndarray:
    """Matched cosines of A's live decoder rows against ``n_b`` seeded Gaussian directions in the same space:
    what the Hungarian step finds where nothing corresponds (0.137 for the embedded SAE, 2048 x 2048)."""
    from scipy.optimize import linear_sum_assignment

    if not len(live_a) or n_b < 1:
        return np.zeros(0, dtype=np.float64)
    wa = sae_a.W_dec.detach()[torch.as_tensor(live_a)].to("cpu", torch.float64)
    wa = wa / wa.norm(dim=1, keepdim=True)
    rng = np.random.default_rng([seed, 0x6E756C6C])  # apart from the random pairs' stream
    wb = torch.from_numpy(rng.standard_normal((n_b, wa.shape[1])))
    wb = wb / wb.norm(dim=1, keepdim=True)
    sim = (wa @ wb.T).numpy()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return np.clip(sim[rows, cols], -1.0, 1.0).astype(np.float64)


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
