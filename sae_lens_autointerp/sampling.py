"""Choose, per latent, the examples the explainer sees and the (strictly disjoint) examples scorers test.

Every random choice comes from one ``numpy.random.Generator`` derived from ``(seed, latent)``, so a latent's
sample does not depend on which other latents run, in what order, or how many run concurrently.

Activating examples come from the harvest's uniform sample of firing examples, sorted by activation and
cut into ``n_quantiles`` equal groups (rank quantiles, quantile 0 = strongest). "quantiles" explainer
sampling takes ``n_explain / n_quantiles`` from each group; scoring takes ``n_test_pos / n_quantiles`` from
each group, from what the explainer did not see. "top" explainer sampling takes the exact top examples;
"random" a uniform draw.

Hold-out is by token position, not by example identity: a test example whose window shares any token of
the corpus with an explainer example's window is excluded (adjacent chunks' windows overlap by up to 31 of
32 tokens), and a non-activating example never overlaps any known activating window of the latent (its
top and sampled firing examples) nor another chosen example. How many candidates each rule excluded is
recorded in ``LatentSample.holdout``.

An explanation written elsewhere (an earlier ``explain()``, another store) carries the windows its explainer was
shown (:func:`shown_windows`: the corpus's identity, token spans and text hashes). On a store of the same corpus,
:class:`HeldOut` excludes them, windows overlapping them and windows of the same text from the test and the
negatives (``sample_latent(..., held_out=...)``); :func:`holdout_status` says what the record can claim.

Non-activating examples: see ``negatives.py`` ("random", "similar", "neighbours").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import ConfigError
from .harvest.store import Example, LatentStore
from .spans import SpanSet

ExplainStrategy = Literal["quantiles", "top", "random"]


@dataclass(frozen=True)
class SamplingConfig:
    n_explain: int = 40
    explain_strategy: ExplainStrategy = "quantiles"
    n_test_pos: int = 50
    n_test_neg: int = 50
    n_quantiles: int = 10
    negatives: str = "random"  # "random", "similar" or "neighbours" (negatives.py)
    min_activating: int = 10  # fewer firing examples than this: too rare to explain and test
    max_frequency: float = 0.25  # firing on more tokens than this: too dense to explain
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_explain", "n_test_pos", "n_test_neg", "n_quantiles", "min_activating", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"sampling {name} must be an integer, got {value!r}")
        if (
            isinstance(self.max_frequency, bool)
            or not isinstance(self.max_frequency, (int, float))
            or not 0 < self.max_frequency <= 1
        ):
            raise ConfigError(f"sampling max_frequency must be a number in (0, 1], got {self.max_frequency!r}")
        if self.explain_strategy not in ("quantiles", "top", "random"):
            raise ConfigError(f"explain_strategy must be 'quantiles', 'top' or 'random', got {self.explain_strategy!r}")
        if self.negatives not in ("random", "similar", "neighbours"):
            raise ConfigError(f"negatives must be 'random', 'similar' or 'neighbours', got {self.negatives!r}")
        if min(self.n_explain, self.n_quantiles) < 1 or min(self.n_test_pos, self.n_test_neg) < 0:
            raise ConfigError("n_explain and n_quantiles must be >= 1, n_test_pos and n_test_neg >= 0")
        if self.n_quantiles > self.n_explain + self.n_test_pos:
            raise ConfigError(
                f"n_quantiles={self.n_quantiles} is more than the {self.n_explain + self.n_test_pos} "
                "activating examples drawn (n_explain + n_test_pos); use fewer quantiles"
            )

    def check_against(self, n_stratified: int, n_random_windows: int) -> None:
        """Refuse counts the harvest cannot supply (its uniform sample and random pool sizes), before any work."""
        if self.n_explain + self.n_test_pos > n_stratified and self.explain_strategy == "quantiles":
            raise ConfigError(
                f"n_explain + n_test_pos = {self.n_explain + self.n_test_pos} activating examples, but the harvest keeps "
                f"a sample of n_stratified={n_stratified} per latent; lower them or harvest with a larger n_stratified"
            )
        if self.n_test_neg > n_random_windows:
            raise ConfigError(
                f"n_test_neg={self.n_test_neg} is more than the harvest's n_random_windows="
                f"{n_random_windows}; lower it or harvest with more random windows"
            )


@dataclass(frozen=True)
class LatentSample:
    """What one latent's explainer and scorers get. ``skipped`` is the reason when the latent is skipped."""

    latent: int
    explain: tuple[Example, ...] = ()
    test_pos: tuple[Example, ...] = ()
    test_neg: tuple[Example, ...] = ()
    skipped: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    #: candidates left out because their window shares tokens with a held-out window:
    #: ``test_pos`` (overlapping an explainer example), ``test_neg`` (overlapping an activating example).
    holdout: dict[str, int] = field(default_factory=dict)

    @property
    def test(self) -> tuple[Example, ...]:
        return self.test_pos + self.test_neg


def latent_rng(seed: int, latent: int, purpose: str = "sample") -> np.random.Generator:
    """The generator for one latent and one purpose (sampling, a scorer's shuffles, ...)."""
    tag = int.from_bytes(purpose.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([seed, latent, tag])


def chunk_key(example: Example, settings: Any) -> tuple[int, int]:
    seq, pos = divmod(example.token_id, settings.ctx_len)
    return seq, pos // settings.example_len


def sample_latent(
    store: LatentStore, latent: int, config: SamplingConfig, negatives: Any = None, held_out: HeldOut | None = None
) -> LatentSample:
    """``negatives``: a :class:`~sae_lens_autointerp.negatives.NegativeSource` (default: random pool windows);
    ``held_out``: windows an explanation's explainer was shown elsewhere, kept out of the test and negatives
    (counted in ``holdout["shown_pos"]`` / ``["shown_neg"]``)."""
    latent = store.check_latent(latent)
    settings = store.settings
    n_fire_examples = int(store.stats["n_fire_examples"][latent])
    frequency = float(store.frequency[latent])
    stats = {
        "frequency": frequency,
        "max_activation": float(store.max_activation[latent]),
        "n_firing_examples": n_fire_examples,
    }
    if n_fire_examples == 0:
        return LatentSample(latent, skipped="dead: never fired on the harvested tokens", stats=stats)
    if frequency > config.max_frequency:
        return LatentSample(
            latent,
            skipped=f"too dense: fires on {frequency:.1%} of tokens (max_frequency={config.max_frequency})",
            stats=stats,
        )
    if n_fire_examples < config.min_activating:
        return LatentSample(
            latent,
            skipped=f"too rare: {n_fire_examples} firing examples, need {config.min_activating} (harvest more tokens)",
            stats=stats,
        )
    if store.legacy_windows:
        raise ConfigError(
            f"the activation store {store.path} was harvested with windows that put every peak at index "
            f"{settings.peak_offset} (store format {store.meta.get('format_version')}): a judge that never reads "
            "the explanation can score above chance from that alone. Harvest again (the new store gets a new "
            "folder; this one can be deleted)"
        )
    rng = latent_rng(config.seed, latent)
    # The uniform sample as arrays, strongest first (pool index i = rank i); examples are built only for
    # the ones chosen.
    rows, peaks, _ = store.ranked_rows(latent, "res")
    groups = np.array_split(np.arange(len(rows)), config.n_quantiles)
    rank_group = np.repeat(np.arange(config.n_quantiles), [len(g) for g in groups])
    # quantile of a chunk (sequence, position // example_len), as chunk_key gives it
    quantile_of = dict(zip(_chunk_ids(peaks, settings).tolist(), rank_group.tolist()))
    # Shown to nobody: windows that run into padding (shorter than the rest) and repeats of a window's text
    # elsewhere in the corpus (the strongest copy stays), so that no judge reads a length cue and no text is
    # tested that the explainer saw at another place.
    content = _content_keys(store, peaks)
    usable, cut, repeated = _usable(store, peaks, content)

    groups = [idx[usable[idx]] for idx in groups]
    per_explain, per_test = quantile_shares([len(g) for g in groups], config)
    if config.explain_strategy == "top":
        top_rows, top_peaks, _ = store.ranked_rows(latent, "top")
        top_content = _content_keys(store, top_peaks)
        top_usable, _, _ = _usable(store, top_peaks, top_content)
        top_rows, top_peaks, top_content = top_rows[top_usable], top_peaks[top_usable], top_content[top_usable]
        shown_prefix, shown_rows, shown_peaks = "top", top_rows[: config.n_explain], top_peaks[: config.n_explain]
        shown_content = top_content[: config.n_explain]
        is_shown = np.isin(peaks, shown_peaks)  # the same peak in the top list and in the sample
    else:
        if config.explain_strategy == "random":
            pool = np.flatnonzero(usable)
            picked = np.sort(rng.permutation(pool)[: config.n_explain])
        else:
            parts = [np.sort(rng.permutation(idx)[: per_explain[q]]) for q, idx in enumerate(groups)]
            picked = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        shown_prefix, shown_rows, shown_peaks = "res", rows[picked], peaks[picked]
        shown_content = content[picked]
        is_shown = np.zeros(len(rows), dtype=bool)
        is_shown[picked] = True  # (a latent's sampled peaks are distinct: one per chunk)
    shown_spans = SpanSet.from_arrays(*store.window_spans(shown_peaks))
    near_shown = shown_spans.overlaps_many(*store.window_spans(peaks))  # the pool at once
    near_shown |= np.isin(content, shown_content)  # the same text as a shown window
    excluded_pos = int((near_shown & ~is_shown & usable).sum())
    free = ~near_shown & ~is_shown & usable
    counts: dict[str, int] = {}
    if held_out is not None:  # what the explanation's own explainer read, in another call or store
        seen = held_out.hits(store, peaks, content)
        counts["shown_pos"] = int((seen & free).sum())
        free &= ~seen
    chosen: list[np.ndarray] = []
    for q, idx in enumerate(groups):
        candidates = idx[free[idx]]
        if candidates.size:
            chosen.append(np.sort(rng.permutation(candidates)[: per_test[q]]))
    test_idx = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    if negatives is None:
        from .negatives import RandomNegatives

        negatives = RandomNegatives()
    # Every window known to activate the latent, plus the chosen ones: no negative may touch them.
    # (built at once: the same merged set as activating_spans() plus one add() per chosen example)
    known_lo, known_hi = store.example_span_arrays(latent)
    chosen_peaks = np.concatenate([shown_peaks, peaks[test_idx]])
    chosen_lo, chosen_hi = store.window_spans(chosen_peaks)
    if held_out is not None:
        pool_lo, pool_hi = store.random_window_spans()
        counts["shown_neg"] = int(held_out.spans.overlaps_many(pool_lo, pool_hi).sum())
        known_lo, known_hi = np.concatenate([known_lo, held_out.lo]), np.concatenate([known_hi, held_out.hi])
    avoid = SpanSet.from_arrays(np.concatenate([known_lo, chosen_lo]), np.concatenate([known_hi, chosen_hi]))
    test_neg, excluded_neg = negatives.draw(store, latent, config.n_test_neg, rng, avoid)

    def labelled(peak_array: np.ndarray) -> list[dict[str, Any]]:
        return [{"label": True, "quantile": quantile_of.get(c)} for c in _chunk_ids(peak_array, settings).tolist()]

    return LatentSample(
        latent,
        explain=tuple(store.examples_at(latent, shown_prefix, shown_rows, labelled(shown_peaks))),
        test_pos=tuple(store.examples_at(latent, "res", rows[test_idx], labelled(peaks[test_idx]))),
        test_neg=tuple(e.with_extra(label=False, quantile=None) for e in test_neg),
        stats=stats,
        holdout={"test_pos": excluded_pos, "test_neg": excluded_neg, "cut": cut, "repeated": repeated, **counts},
    )


# ---------------------------------------------------------------------- what an explainer was shown

#: ``holdout`` of a record: the explanation's shown windows are kept out of its test and negatives ("held out"),
#: they index another corpus so nothing could be checked ("other corpus"), or nobody recorded them ("unknown").
HELD_OUT, OTHER_CORPUS, UNKNOWN = "held out", "other corpus", "unknown"


def corpus_key(store: LatentStore) -> str:
    """Which token sequence a store's global token ids index: the corpus, the tokenizer, ``ctx_len`` and BOS.
    Two stores of one corpus harvested with other ``n_tokens``, SAEs or sampling settings share it (one is a
    prefix of the other), so their spans compare."""
    meta = store.meta
    identity = {
        "corpus": meta.get("corpus"),
        "tokenizer": (meta.get("model") or {}).get("tokenizer_sha256"),
        "ctx_len": store.settings.ctx_len,
        "prepend_bos": (meta.get("hook") or {}).get("prepend_bos"),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def text_hash(tokens: np.ndarray) -> str:
    """A short hash of a window's token ids (int32): equal windows hash equal, in any store."""
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype=np.int32).tobytes(), digest_size=8).hexdigest()


def shown_windows(store: LatentStore, windows: Iterable[Any]) -> dict[str, Any]:
    """What :attr:`~sae_lens_autointerp.records.Explanation.shown_spans` records of the windows an explainer
    was shown (examples, or pool windows: anything with ``.tokens`` and ``.span(ctx_len)``):
    ``{"corpus": corpus_key, "spans": [[start, length], ...], "texts": [text_hash, ...]}``."""
    ctx_len = store.settings.ctx_len
    spans, texts = [], []
    for w in windows:
        lo, hi = w.span(ctx_len)
        spans.append([int(lo), int(hi - lo)])
        texts.append(text_hash(w.tokens))
    return {"corpus": corpus_key(store), "spans": spans, "texts": texts}


def shown_peaks(store: LatentStore, peaks: Iterable[int]) -> dict[str, Any]:
    """:func:`shown_windows` of the firing windows at global peak ids ``peaks`` (``Explanation.examples_shown``)."""
    peaks = np.asarray(list(peaks), dtype=np.int64)
    lo, hi = store.window_spans(peaks)
    tokens = store.windows_tokens(store.window_starts(peaks), peaks)
    return {
        "corpus": corpus_key(store),
        "spans": [[int(a), int(b - a)] for a, b in zip(lo.tolist(), hi.tolist())],
        "texts": [text_hash(t) for t in tokens],
    }


def holdout_status(shown: Mapping[str, Any] | None, store: LatentStore) -> str:
    """:data:`HELD_OUT`, :data:`OTHER_CORPUS` or :data:`UNKNOWN`: what may be said of an explanation whose
    explainer was shown ``shown`` (``Explanation.shown_spans``; None: nobody recorded it) when scored on
    ``store``."""
    if not isinstance(shown, Mapping) or "corpus" not in shown:
        return UNKNOWN
    return HELD_OUT if shown["corpus"] == corpus_key(store) else OTHER_CORPUS


@dataclass(frozen=True)
class HeldOut:
    """The windows an explainer was shown, as spans of this store's corpus and hashes of their texts."""

    lo: np.ndarray
    hi: np.ndarray
    texts: frozenset[str]
    spans: SpanSet

    @classmethod
    def of(cls, shown: Mapping[str, Any] | None, store: LatentStore) -> HeldOut | None:
        """The hold-out of ``shown`` on ``store``; None unless ``shown`` indexes this store's corpus."""
        if holdout_status(shown, store) != HELD_OUT:
            return None
        assert shown is not None
        pairs = np.asarray(shown.get("spans") or [], dtype=np.int64).reshape(-1, 2)
        lo, hi = pairs[:, 0], pairs[:, 0] + pairs[:, 1]
        return cls(lo, hi, frozenset(str(t) for t in shown.get("texts") or ()), SpanSet.from_arrays(lo, hi))

    def hits(self, store: LatentStore, peaks: np.ndarray, content: np.ndarray) -> np.ndarray:
        """Mask of the firing windows at ``peaks`` (their texts' :func:`text_keys` ``content``) that share a
        token with a shown window or have a shown window's text."""
        hit = self.spans.overlaps_many(*store.window_spans(peaks))
        if self.texts and len(content):
            width = content.dtype.itemsize // 4  # int32 tokens per window
            rows = np.frombuffer(content.tobytes(), dtype=np.int32).reshape(len(content), width)
            hit |= np.array([text_hash(r) in self.texts for r in rows], dtype=bool)
        return hit


def text_keys(token_rows: np.ndarray) -> np.ndarray:
    """One comparable value per row of token ids ``[n, window]``: its bytes (equal exactly when the texts are)."""
    rows = np.ascontiguousarray(token_rows)
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).reshape(-1)


def first_of_text(keys: np.ndarray) -> np.ndarray:
    """Mask of the first of each text among :func:`text_keys` ``keys`` (the same passage at several places of
    the corpus counts once: the strongest copy, when they are ranked strongest first)."""
    first = np.zeros(len(keys), dtype=bool)
    if len(keys):
        first[np.unique(keys, return_index=True)[1]] = True
    return first


def _content_keys(store: LatentStore, peaks: np.ndarray) -> np.ndarray:
    return text_keys(store.windows_tokens(store.window_starts(peaks)))


def _usable(store: LatentStore, peaks: np.ndarray, content: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Mask of the windows of ``peaks`` (ranked strongest first) that may be shown: full (no padding) and the
    first of their text; and how many were left out for each reason."""
    full = store.full_windows(store.window_starts(peaks))
    first = first_of_text(content)
    return full & first, int((~full).sum()), int((full & ~first).sum())


def _chunk_ids(peaks: np.ndarray, settings: Any) -> np.ndarray:
    """:func:`chunk_key` of each peak as one integer (``sequence * ctx_len + chunk``; a chunk is < ctx_len)."""
    seq, pos = np.divmod(peaks, settings.ctx_len)
    return seq * settings.ctx_len + pos // settings.example_len


def activating_spans(store: LatentStore, latent: int) -> SpanSet:
    """The spans of every stored firing example of ``latent`` (its exact top list and its uniform sample)."""
    return SpanSet(store.example_spans(latent))


def quantile_shares(sizes: list[int], config: SamplingConfig) -> tuple[list[int], list[int]]:
    """How many examples of each quantile (of ``sizes``) the explainer and the test take. A small quantile
    cannot give both sides their share: it is split in proportion, so that rare latents still get test
    examples (and the explainer never takes all of them). When the explainer does not draw from the
    quantiles ("top", "random") it takes no share here, and the test may take a whole quantile."""
    per_test = _spread(config.n_test_pos, config.n_quantiles)
    if config.explain_strategy != "quantiles":
        # the explainer's windows come from elsewhere; the hold-out removes any that overlap afterwards
        return [0] * config.n_quantiles, [min(want, size) for want, size in zip(per_test, sizes)]
    per_explain = _spread(config.n_explain, config.n_quantiles)
    for q, size in enumerate(sizes):
        want = per_explain[q] + per_test[q]
        if size < want and want > 0:
            per_test[q] = round(size * per_test[q] / want)
            per_explain[q] = size - per_test[q]
    return per_explain, per_test


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible, the remainder to the strongest quantiles."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
