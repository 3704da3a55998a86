"""Correlations of two SAEs' activations over the same tokens, accumulated batch by batch in float64 (from
the model, or from two activation stores that read the same windows): what ``match_latents(method="activations")``
maximises."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError
from ..harvest.corpus import batched, iter_sequences, resolve_corpus
from ..harvest.model import ModelAdapter
from ..harvest.store import PAD_TOKEN, LatentStore, RandomWindow

if TYPE_CHECKING:
    from sae_lens import SAE

    from ..harvest.corpus import CorpusLike
    from ..harvest.model import SubjectModel

log = logging.getLogger("sae_lens_autointerp.similarity")


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
