"""Baselines for SAE latents: neurons, top-k neurons, PCA, ICA and random directions, as real SAELens SAEs.

An SAE's scores mean little alone: Cunningham et al. 2023 compare SAE latents with the model's own basis, PCA,
ICA and random directions, and a latent basis that scores no better than these has not been shown to find
features. Every baseline here is a :class:`BaselineSAE`, a ``sae_lens.SAE`` subclass registered as the
architecture ``"autointerp_baseline"``, so harvest, explain, score, every plugin, ``save_model`` and
``SAE.load_from_disk`` treat it like any trained SAE (loading needs this module imported, which registers
the architecture).

Signs. Residual activations, PCA and ICA coordinates are signed, while a latent fires when it is > 0. With
``signs="both"`` (the default) each direction ``d`` gives two latents, ``ReLU(x.d)`` (latent ``i``) and
``ReLU(-x.d)`` (latent ``n + i``), whose decoder rows are ``d`` and ``-d``: both ends of every direction can
be explained, and ``decode(encode(x))`` is exactly ``x`` for a complete basis. ``signs="positive"`` keeps
only ``ReLU(x.d)`` (``n`` latents, what a neuron explainer sees of a post-GELU neuron); the negative half is
then lost, in interpretation and in reconstruction. See ``docs/baselines.md``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from sae_lens import SAE, SAEConfig, register_sae_class
from sae_lens.registry import get_sae_class
from sae_lens.saes.sae import SAEMetadata
from torch import nn

from .errors import ConfigError
from .harvest.corpus import batched, iter_sequences, resolve_corpus
from .harvest.model import ModelAdapter
from .subjects import as_subject

if TYPE_CHECKING:
    from .harvest.corpus import CorpusLike
    from .harvest.model import SubjectModel

log = logging.getLogger(__name__)

ARCHITECTURE = "autointerp_baseline"
Signs = Literal["both", "positive"]
BASES = ("neurons", "pca", "ica", "random")
#: Default tokens a FastICA fit or a random-direction threshold sees at most (see :func:`ica`).
MAX_FIT_TOKENS = 20_000


@dataclass
class BaselineSAEConfig(SAEConfig):
    """A baseline basis: ``basis`` says how its directions were made, ``signs`` whether each direction gives
    one latent or two (``d_sae`` is then twice the number of directions), ``k`` whether only the ``k``
    largest latents per token are kept."""

    basis: str = "neurons"
    signs: str = "both"
    k: int | None = None

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.basis not in BASES:
            raise ConfigError(f"basis must be one of {BASES}, got {self.basis!r}")
        if self.signs not in ("both", "positive"):
            raise ConfigError(f"signs must be 'both' or 'positive', got {self.signs!r}")
        if self.signs == "both" and self.d_sae % 2:
            raise ConfigError(f"signs='both' needs an even d_sae (two latents per direction), got {self.d_sae}")
        if self.k is not None and not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"k must be between 1 and d_sae={self.d_sae}, got {self.k}")

    @property
    def n_directions(self) -> int:
        return self.d_sae // 2 if self.signs == "both" else self.d_sae


class BaselineSAE(SAE[BaselineSAEConfig]):
    """``ReLU((x - b_dec) @ W_enc + b_enc)``, optionally only the ``k`` largest per token, decoded linearly
    (``acts @ W_dec + b_dec``) so that steering and error terms behave as for any SAELens SAE."""

    b_enc: nn.Parameter

    def initialize_weights(self) -> None:
        # Zeros: every builder below sets the weights, and load_from_disk replaces them.
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        like = dict(dtype=self.dtype, device=self.device)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **like))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **like))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **like))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **like))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        acts = torch.relu(hidden_pre)
        if self.cfg.k is not None:
            values, index = acts.topk(self.cfg.k, dim=-1, sorted=False)
            acts = torch.zeros_like(acts).scatter_(-1, index, values)
        return self.hook_sae_acts_post(acts)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        sae_out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)
        return self.reshape_fn_out(sae_out, self.d_head)


def _register() -> None:
    try:
        get_sae_class(ARCHITECTURE)
    except KeyError:
        register_sae_class(ARCHITECTURE, BaselineSAE, BaselineSAEConfig)


_register()


# ------------------------------------------------------------------------------------------------ public API
def neurons(
    model: SubjectModel,
    hook: str | None = None,
    *,
    signs: Signs = "both",
    like: SAE | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> BaselineSAE:
    """The identity basis of ``hook``: residual dimensions at a residual hook, MLP neurons at an MLP hook
    such as ``blocks.L.mlp.hook_post``. ``signs="both"`` gives ``2 * width`` latents (``ReLU(x_i)`` then
    ``ReLU(-x_i)``) and reconstructs exactly. ``like``: a reference SAE whose hook (when ``hook`` is None),
    ``context_size``, ``prepend_bos``, ``seqpos_slice`` and ``model_name`` are copied. ``seed`` is recorded
    only: nothing here is random."""
    md = _metadata(model, hook, like)
    width = _hook_width(model, md)
    eye = torch.eye(width, dtype=torch.float64)
    return _build(md, "neurons", signs, eye, eye, None, None, None, device, {"seed": seed})


def topk_neurons(
    model: SubjectModel,
    hook: str | None = None,
    k: int | None = None,
    *,
    like: SAE | None = None,
    dataset: CorpusLike | None = None,
    signs: Signs = "both",
    n_tokens: int = 4096,
    batch_size: int = 8,
    ctx_len: int | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> BaselineSAE:
    """:func:`neurons`, keeping only the ``k`` largest latents per token (with ``signs="both"``: the ``k``
    coordinates of largest magnitude, each with its sign). ``k`` defaults to the mean L0 of ``like``
    (rounded), measured on ``n_tokens`` tokens of ``dataset`` at ``like``'s hook."""
    md = _metadata(model, hook, like)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    fit: dict[str, Any] = {"seed": seed}
    if k is None:
        if like is None or dataset is None:
            raise ConfigError("topk_neurons needs k=, or like=<SAE> and dataset= to measure that SAE's L0")
        like_l0 = _mean_l0(model, like, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs)
        k = max(1, round(like_l0))
        fit.update(like_l0=like_l0, n_tokens=n_tokens)
    width = _hook_width(model, md)
    eye = torch.eye(width, dtype=torch.float64)
    return _build(md, "neurons", signs, eye, eye, None, None, int(k), device, fit)


def pca(
    model: SubjectModel,
    hook: str | None,
    dataset: CorpusLike,
    n: int,
    *,
    signs: Signs = "both",
    like: SAE | None = None,
    n_tokens: int = 100_000,
    chunk_tokens: int = 2048,
    batch_size: int = 8,
    ctx_len: int | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> BaselineSAE:
    """The top ``n`` principal directions of the activations at ``hook`` over ``n_tokens`` tokens of
    ``dataset``, fitted with scikit-learn's ``IncrementalPCA`` chunk by chunk (memory: a few chunks of
    ``max(n, chunk_tokens)`` tokens, never the whole stream). ``b_dec`` is the mean; decoder rows are the unit
    components; with ``n`` equal to the hook width and ``signs="both"``, reconstruction is exact. ``seed`` is
    recorded only (the fit is deterministic)."""
    from sklearn.decomposition import IncrementalPCA

    md = _metadata(model, hook, like)
    width = _hook_width(model, md)
    _check_n(n, width)
    if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    fitter = IncrementalPCA(n_components=n)
    chunk = max(n, chunk_tokens)
    buffer: list[np.ndarray] = []
    held, seen = 0, 0
    for rows in _stream(model, md, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs):
        buffer.append(rows.double().numpy())
        held += len(rows)
        seen += len(rows)
        # Fit a chunk only once another chunk's worth is waiting, so the last piece is never too small for
        # IncrementalPCA (it needs >= n rows per call) and no token is dropped.
        if held >= 2 * chunk:
            data = np.concatenate(buffer)
            while len(data) >= 2 * chunk:
                fitter.partial_fit(data[:chunk])
                data = data[chunk:]
            buffer, held = [data], len(data)
    if seen < n:
        raise ConfigError(f"pca(n={n}) needs at least {n} tokens, the stream gave {seen}; raise n_tokens")
    fitter.partial_fit(np.concatenate(buffer))
    components = torch.from_numpy(fitter.components_)  # [n, width], orthonormal rows
    mean = torch.from_numpy(fitter.mean_)
    fit = {
        "seed": seed,
        "n_tokens": seen,
        "explained_variance_ratio": float(fitter.explained_variance_ratio_.sum()),
    }
    return _build(md, "pca", signs, components.T, components, mean, None, None, device, fit)


def ica(
    model: SubjectModel,
    hook: str | None,
    dataset: CorpusLike,
    n: int,
    *,
    signs: Signs = "both",
    like: SAE | None = None,
    n_tokens: int = MAX_FIT_TOKENS,
    max_fit_tokens: int = MAX_FIT_TOKENS,
    max_iter: int = 400,
    tol: float = 1e-4,
    batch_size: int = 8,
    ctx_len: int | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> BaselineSAE:
    """``n`` independent components (scikit-learn ``FastICA``, unit-variance whitening) of the activations
    at ``hook``. FastICA needs its data in memory, so it is fitted on a uniform, seeded sample of at most
    ``max_fit_tokens`` (default 20,000) of the ``n_tokens`` streamed tokens: about ``max_fit_tokens * width *
    8`` bytes, times a few for FastICA's copies (~0.3 GB for a 576-wide hook). Decoder rows are the unit mixing
    directions (the encoder absorbs their norms); with ``n`` equal to the width, reconstruction is exact up to
    float error, below it ``decode(encode(x))`` projects onto the top-``n`` principal subspace of the sample.
    Cost grows as ``n**2 * max_fit_tokens`` per iteration: check ``cfg.metadata.baseline_fit["converged"]``."""
    from sklearn.decomposition import FastICA

    md = _metadata(model, hook, like)
    width = _hook_width(model, md)
    _check_n(n, width)
    if not isinstance(max_fit_tokens, int) or max_fit_tokens < n:
        raise ConfigError(f"max_fit_tokens must be an integer >= n={n}, got {max_fit_tokens!r}")
    sample = _Reservoir(min(max_fit_tokens, n_tokens), width, np.random.default_rng(seed))
    for rows in _stream(model, md, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs):
        sample.add(rows.numpy())
    data = sample.rows().astype(np.float64)
    if len(data) < n:
        raise ConfigError(f"ica(n={n}) needs at least {n} tokens, the stream gave {len(data)}; raise n_tokens")
    fitter = FastICA(n_components=n, whiten="unit-variance", max_iter=max_iter, tol=tol, random_state=seed)
    fitter.fit(data)
    unmixing = torch.from_numpy(fitter.components_)  # [n, width]: sources = (x - mean) @ unmixing.T
    mixing = torch.from_numpy(fitter.mixing_)  # [width, n]: x ~ sources @ mixing.T + mean
    norms = mixing.norm(dim=0).clamp_min(1e-12)
    fit = {
        "seed": seed,
        "n_tokens": sample.seen,
        "n_fit_tokens": len(data),
        "n_iter": int(fitter.n_iter_),
        "converged": int(fitter.n_iter_) < max_iter,
    }
    encoder = unmixing.T * norms  # scaled so that each decoder row is a unit vector
    decoder = (mixing / norms).T
    return _build(md, "ica", signs, encoder, decoder, torch.from_numpy(fitter.mean_), None, None, device, fit)


def random_directions(
    model: SubjectModel,
    hook: str | None,
    n: int,
    *,
    dataset: CorpusLike,
    like: SAE | None = None,
    rate: float | None = None,
    n_tokens: int = MAX_FIT_TOKENS,
    max_fit_tokens: int = MAX_FIT_TOKENS,
    batch_size: int = 8,
    ctx_len: int | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> BaselineSAE:
    """``n`` random unit directions (Gaussian, seeded), one latent each: ``ReLU((x - mean).d - t)``. Each
    latent's threshold ``t`` is set so that it fires on the same share of tokens, ``rate``: by default the
    *mean* firing rate of ``like`` (its mean L0 / d_sae, dead latents included), measured on ``n_tokens``
    tokens of ``dataset``. The thresholds are quantiles over a uniform sample of at most ``max_fit_tokens`` of
    those tokens (memory: ``max_fit_tokens * width`` floats, twice); so every random latent fires at that one
    rate (the reference's spread of rates is not copied)."""
    md = _metadata(model, hook, like)
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if not isinstance(max_fit_tokens, int) or max_fit_tokens < 1:
        raise ConfigError(f"max_fit_tokens must be a positive integer, got {max_fit_tokens!r}")
    if rate is None and like is None:
        raise ConfigError("random_directions needs like=<SAE> (to match its firing rate) or rate=")
    width = _hook_width(model, md)
    fit: dict[str, Any] = {"seed": seed}
    stream = (model, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs)
    rate = _target_rate(rate, like, stream, fit)
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, width, generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    data, seen = _fit_sample(md, width, stream, max_fit_tokens, seed)
    mean = data.mean(dim=0)
    centred = data - mean
    thresholds = _rate_thresholds(data, rate, n, lambda lo, hi: centred @ directions[lo:hi].T)
    fit.update(target_firing_rate=rate, n_tokens=seen, n_fit_tokens=len(data))
    return _build(md, "random", "positive", directions.T, directions, mean, -thresholds, None, device, fit)


def match_firing_rate(
    sae: BaselineSAE,
    model: SubjectModel,
    dataset: CorpusLike,
    *,
    like: SAE | None = None,
    rate: float | None = None,
    n_tokens: int = MAX_FIT_TOKENS,
    max_fit_tokens: int = MAX_FIT_TOKENS,
    batch_size: int = 8,
    ctx_len: int | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> BaselineSAE:
    """A copy of a dense baseline (neurons, PCA, ICA: each latent fires on about half of all tokens) in
    which every latent fires on ``rate`` of tokens, by default the mean firing rate of ``like``: its
    threshold is raised to the matching quantile of its pre-activation (``ReLU(pre - t)``, never ``t < 0``).

    Why: a latent firing on half the tokens has almost no silent window, so the scorers that contrast firing
    with silent examples (detection, fuzzing, embedding) cannot test it, and the sampler skips it as too dense.
    At the SAE's firing rate each direction is read where it is strongest, as top-k neurons (Paulo et al. 2024)
    read neurons. The ranking of tokens by each latent is unchanged; reconstruction is no longer exact."""
    if not isinstance(sae, BaselineSAE):
        raise ConfigError(f"match_firing_rate takes a baseline from this module, got {type(sae).__name__}")
    if sae.cfg.k is not None:
        raise ConfigError("a top-k baseline is sparse already (k per token); match_firing_rate is for dense bases")
    if rate is None and like is None:
        raise ConfigError("match_firing_rate needs like=<SAE> (to match its firing rate) or rate=")
    fit = dict(getattr(sae.cfg.metadata, "baseline_fit", None) or {})
    stream = (model, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs)
    rate = _target_rate(rate, like, stream, fit)
    data, _ = _fit_sample(sae, int(sae.cfg.d_in), stream, max_fit_tokens, seed)
    centred = data - sae.b_dec.detach().double()
    w_enc, b_enc = sae.W_enc.detach().double(), sae.b_enc.detach().double()
    thresholds = _rate_thresholds(
        data, rate, sae.cfg.d_sae, lambda lo, hi: centred @ w_enc[:, lo:hi] + b_enc[lo:hi]
    ).clamp(min=0)
    out = copy.deepcopy(sae)
    fit.update(target_firing_rate=rate, rate_matched_on=len(data))
    out.cfg.metadata.baseline_fit = fit
    with torch.no_grad():
        out.b_enc.sub_(thresholds.to(out.b_enc.dtype))
    return out.eval()


_Stream = tuple[
    Any, Any, int, int, "int | None", "Mapping[str, Any] | None"
]  # model, dataset, tokens, batch, ctx, kwargs


def _target_rate(rate: float | None, like: SAE | None, stream: _Stream, fit: dict[str, Any]) -> float:
    """``rate``, or the mean firing rate of ``like`` (its mean L0 / d_sae, recorded in ``fit``)."""
    if rate is None:
        assert like is not None
        like_l0 = _mean_l0(stream[0], like, *stream[1:])
        rate = like_l0 / int(like.cfg.d_sae)
        fit["like_l0"] = like_l0
    if not 0 < rate < 1:
        raise ConfigError(f"the firing rate must be in (0, 1), got {rate!r}")
    return rate


def _fit_sample(sae_like: Any, width: int, stream: _Stream, max_fit_tokens: int, seed: int) -> tuple[torch.Tensor, int]:
    """A uniform sample (float64) of at most ``max_fit_tokens`` of the streamed activations, and how many were
    seen."""
    model, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs = stream
    sample = _Reservoir(min(max_fit_tokens, n_tokens), width, np.random.default_rng(seed))
    for rows in _stream(model, sae_like, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs):
        sample.add(rows.numpy())
    return torch.from_numpy(sample.rows()).double(), sample.seen


def _rate_thresholds(data: torch.Tensor, rate: float, n: int, pre: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """Per latent, the threshold above which exactly ``round(rate * m)`` of the ``m`` sampled tokens lie:
    halfway between the (m - n_fire)-th and the next smallest pre-activation, a margin that float32 rounding
    in encode cannot cross (barring ties). ``pre(lo, hi)`` gives latents lo:hi's pre-activations on ``data``;
    256 at a time, so never more than m x 256 floats."""
    n_fire = round(rate * len(data))
    if n_fire < 1 or n_fire >= len(data):
        raise ConfigError(
            f"a firing rate of {rate:.3g} over {len(data)} sampled tokens leaves {n_fire} firing tokens; raise "
            "max_fit_tokens and n_tokens"
        )
    keep = len(data) - n_fire
    blocks = []
    for lo in range(0, n, 256):
        values = pre(lo, min(lo + 256, n))
        below, above = (values.kthvalue(k, dim=0).values for k in (keep, keep + 1))
        blocks.append((below + above) / 2)
    return torch.cat(blocks)


def mean_l0(model: SubjectModel, sae: SAE, dataset: CorpusLike, n_tokens: int = MAX_FIT_TOKENS) -> float:
    """Mean number of latents of ``sae`` above zero per token, on the tokens a harvest of it would score."""
    return _mean_l0(model, sae, dataset, n_tokens, 8, None, None)


# ------------------------------------------------------------------------------------------------ helpers
def _metadata(model: SubjectModel, hook: str | None, like: SAE | None) -> SAEMetadata:
    """The hook and token-stream settings a harvest reads, copied from ``like`` where one is given."""
    ref = like.cfg.metadata if like is not None else SAEMetadata()
    hook_name = hook or ref.get("hook_name")
    if not hook_name:
        raise ConfigError("pass hook= (e.g. 'blocks.3.hook_resid_post') or like=<SAE> to take its hook")
    subject = as_subject(model)
    n_ctx = subject.n_ctx or 0
    default_ctx = min(128, n_ctx) if n_ctx else 128
    prepend_bos = ref.get("prepend_bos", subject.default_prepend_bos())
    md = SAEMetadata(
        hook_name=hook_name,
        model_name=ref.get("model_name") or subject.name,
        context_size=ref.get("context_size") or default_ctx,
        prepend_bos=bool(True if prepend_bos is None else prepend_bos),
    )
    if ref.get("seqpos_slice") is not None:
        md.seqpos_slice = list(ref.get("seqpos_slice"))
    if ref.get("hook_head_index") is not None and ref.get("hook_name") == hook_name:
        md.hook_head_index = ref.get("hook_head_index")  # a head index only means something at its own hook
    return md


def _reader(md: SAEMetadata) -> Any:
    """What :class:`ModelAdapter` reads of an SAE (its metadata, device and dtype), before the SAE exists:
    the baseline then sees its hook exactly as a later harvest of it will."""
    return SimpleNamespace(cfg=SimpleNamespace(metadata=md, d_in=0), device=torch.device("cpu"), dtype=torch.float32)


def _hook_width(model: SubjectModel, md: SAEMetadata) -> int:
    adapter = ModelAdapter(model, _reader(md))
    probe = torch.full((1, 2), adapter.pad_token_id(), dtype=torch.long)
    return int(adapter.capture(probe).shape[-1])


def _check_n(n: int, width: int) -> None:
    if not isinstance(n, int) or not 1 <= n <= width:
        raise ConfigError(f"n must be an integer between 1 and the hook width {width}, got {n!r}")


def _stream(
    model: SubjectModel,
    sae_like: Any,
    dataset: CorpusLike,
    n_tokens: int,
    batch_size: int,
    ctx_len: int | None,
    dataset_kwargs: Mapping[str, Any] | None,
) -> Iterator[torch.Tensor]:
    """Activations [tokens, width] (float32, CPU) at the hook of ``sae_like`` (an SAE or its metadata), batch
    by batch, for at most ``n_tokens`` of the tokens a harvest would score: the corpus is cut into windows as
    in :func:`~sae_lens_autointerp.harvest.harvest`, and padding, special tokens and positions outside
    ``seqpos_slice`` are left out."""
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ConfigError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    adapter = ModelAdapter(model, _reader(sae_like) if isinstance(sae_like, SAEMetadata) else sae_like)
    spec = adapter.spec
    ctx = ctx_len or int(spec.context_size or 128)
    if adapter.n_ctx:
        ctx = min(ctx, adapter.n_ctx)
    corpus = resolve_corpus(dataset, **dict(dataset_kwargs or {}))
    sequences = iter_sequences(
        corpus,
        adapter.tokenizer,
        ctx_len=ctx,
        prepend_bos=spec.prepend_bos,
        bos_id=adapter.bos_token_id(),
        separator_id=adapter.separator_token_id(),
    )
    special = torch.tensor(adapter.special_token_ids(), dtype=torch.long)
    in_slice = torch.ones(ctx, dtype=torch.bool)
    if spec.seqpos_slice is not None:
        in_slice = torch.zeros(ctx, dtype=torch.bool)
        in_slice[slice(*spec.seqpos_slice)] = True
    seen = 0
    for batch in batched(sequences, batch_size):
        tokens = torch.full((len(batch), ctx), adapter.pad_token_id(), dtype=torch.long)
        real = torch.zeros((len(batch), ctx), dtype=torch.bool)
        for row, seq in enumerate(batch):
            tokens[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            real[row, : len(seq)] = True
        width = int(real.sum(1).max())
        valid = (real & ~torch.isin(tokens, special) & in_slice)[:, :width]
        rows = adapter.capture(tokens[:, :width])[valid].float().cpu()[: n_tokens - seen]
        seen += len(rows)
        yield rows
        if seen >= n_tokens:
            return
    if seen == 0:
        raise ConfigError("the corpus produced no usable tokens; pass non-empty text")
    log.debug("the corpus ran out after %d of %d tokens", seen, n_tokens)


def _mean_l0(
    model: SubjectModel,
    sae: SAE,
    dataset: CorpusLike,
    n_tokens: int,
    batch_size: int,
    ctx_len: int | None,
    dataset_kwargs: Mapping[str, Any] | None,
) -> float:
    """Mean number of latents of ``sae`` above zero per token, on the tokens a harvest of it would score."""
    total, count = 0, 0
    with torch.inference_mode():
        for rows in _stream(model, sae, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs):
            acts = sae.encode(rows.to(device=sae.device, dtype=sae.dtype))
            total += int((acts > 0).sum())
            count += len(rows)
    return total / max(count, 1)


class _Reservoir:
    """A uniform sample of at most ``cap`` rows of a stream of any length (Algorithm R, seeded), in bounded
    memory: the fit sees the whole stream, not just its first documents."""

    def __init__(self, cap: int, width: int, rng: np.random.Generator) -> None:
        self.cap, self.rng, self.seen = cap, rng, 0
        self._rows = np.empty((cap, width), dtype=np.float32)

    def add(self, rows: np.ndarray) -> None:
        fill = min(max(self.cap - self.seen, 0), len(rows))
        self._rows[self.seen : self.seen + fill] = rows[:fill]
        rest = rows[fill:]
        if len(rest):
            # Row t of the stream (0-based) replaces a uniform slot in [0, t] when that slot is < cap.
            index = self.seen + fill + np.arange(len(rest))
            slot = self.rng.integers(0, index + 1)
            chosen = np.flatnonzero(slot < self.cap)
            # Within one batch a later row wins a shared slot, as if the rows had come one by one.
            slots, first = np.unique(slot[chosen][::-1], return_index=True)
            self._rows[slots] = rest[chosen[::-1][first]]
        self.seen += len(rows)

    def rows(self) -> np.ndarray:
        return self._rows[: min(self.seen, self.cap)]


def _build(
    md: SAEMetadata,
    basis: str,
    signs: Signs,
    encoder: torch.Tensor,
    decoder: torch.Tensor,
    mean: torch.Tensor | None,
    b_enc: torch.Tensor | None,
    k: int | None,
    device: str,
    fit: dict[str, Any],
) -> BaselineSAE:
    """A :class:`BaselineSAE` from ``encoder`` [width, n] and ``decoder`` [n, width]; with ``signs="both"``
    every direction is followed, ``n`` latents later, by its negation."""
    if signs not in ("both", "positive"):
        raise ConfigError(f"signs must be 'both' or 'positive', got {signs!r}")
    width, n = encoder.shape
    if signs == "both":
        encoder = torch.cat([encoder, -encoder], dim=1)
        decoder = torch.cat([decoder, -decoder], dim=0)
        b_enc = None if b_enc is None else torch.cat([b_enc, b_enc])
    md.baseline_fit = fit  # how it was made: seed, tokens seen, fit diagnostics
    cfg = BaselineSAEConfig(
        d_in=int(width),
        d_sae=int(encoder.shape[1]),
        dtype="float32",
        device=str(device),
        apply_b_dec_to_input=True,
        basis=basis,
        signs=signs,
        k=k,
        metadata=md,
    )
    sae = BaselineSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(encoder)
        sae.W_dec.copy_(decoder)
        if mean is not None:
            sae.b_dec.copy_(mean)
        if b_enc is not None:
            sae.b_enc.copy_(b_enc)
    return sae.eval()
