"""Hold-out by token position: explainer, activating test and non-activating examples never share a token."""

from __future__ import annotations

import numpy as np
import pytest

from sae_lens_autointerp.harvest.store import Example
from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
from sae_lens_autointerp.spans import SpanSet


def _shared(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _any_overlap(a: list[tuple[int, int]], b: list[tuple[int, int]], *, skip_diagonal: bool = False) -> bool:
    """Brute force, vectorised: does any span of ``a`` share a position with any span of ``b``?"""
    if not a or not b:
        return False
    x, y = np.asarray(a), np.asarray(b)
    hit = (x[:, None, 0] < y[None, :, 1]) & (y[None, :, 0] < x[:, None, 1])
    if skip_diagonal:
        np.fill_diagonal(hit, False)
    return bool(hit.any())


def test_span_set_matches_brute_force():
    rng = np.random.default_rng(0)
    spans = [(int(lo), int(lo + rng.integers(1, 40))) for lo in rng.integers(0, 2000, 200)]
    s = SpanSet(spans)
    for lo in range(0, 2100, 7):
        for width in (1, 5, 32):
            brute = any(_shared((lo, lo + width), sp) > 0 for sp in spans)
            assert s.overlaps(lo, lo + width) == brute, (lo, width)
    assert not SpanSet().overlaps(0, 10) and not s.overlaps(5, 5)


def test_example_span_is_clipped_to_its_sequence():
    tokens = np.zeros(32, dtype=np.int32)
    ex = Example(
        latent=0,
        tokens=tokens,
        activations=np.zeros(32, np.float32),
        value=1.0,
        token_id=128 * 5 + 3,
        source="top",
        peak_index=24,
    )
    assert ex.span(128) == (128 * 5, 128 * 5 + 11)  # 24 tokens before the peak would reach into sequence 4
    late = Example(
        latent=0,
        tokens=tokens,
        activations=tokens.astype(np.float32),
        value=1.0,
        token_id=128 * 5 + 125,
        source="top",
        peak_index=24,
    )
    assert late.span(128) == (128 * 5 + 101, 128 * 6)


@pytest.mark.parametrize("strategy,step", [("quantiles", 1), ("top", 5), ("random", 5)])
def test_no_shared_token_on_the_embedded_store(embedded_store, strategy, step):
    """Every sampled latent of the shipped SAE (every 5th for the other strategies): 0 test positives sharing a
    token with an explainer window or with each other, 0 negatives sharing a token with any activating window of
    the latent (explainer, test or stored) or with another negative; every window is a whole chunk (full length,
    no padding), and no test window repeats the text of an explainer window."""
    store, ctx, w = embedded_store, embedded_store.settings.ctx_len, embedded_store.settings.example_len
    cfg = SamplingConfig(explain_strategy=strategy)
    n_sampled = n_neg = 0
    for latent in range(0, store.d_sae, step):
        s = sample_latent(store, latent, cfg)
        if s.skipped:
            continue
        n_sampled += 1
        shown = [e.span(ctx) for e in s.explain]
        tested = [e.span(ctx) for e in s.test_pos]
        negatives = [e.span(ctx) for e in s.test_neg]
        known = [e.span(ctx) for e in store.top_examples(latent) + store.stratified_examples(latent)]
        assert not _any_overlap(tested, shown), latent
        assert not _any_overlap(tested, tested, skip_diagonal=True), latent
        assert not _any_overlap(negatives, shown + tested + known), latent
        assert not _any_overlap(negatives, negatives, skip_diagonal=True), latent
        for e in s.explain + s.test:
            assert len(e.tokens) == w and (e.tokens >= 0).all(), (latent, e.token_id)
            lo, hi = e.span(ctx)
            assert hi - lo == w and lo % w == 0, (latent, e.token_id)  # the example's own chunk
        assert not {e.tokens.tobytes() for e in s.explain} & {e.tokens.tobytes() for e in s.test_pos}, latent
        n_neg += len(s.test_neg)
    assert n_sampled > 1000 // step
    assert n_neg / n_sampled > 45


def test_holdout_counts_what_it_excludes(repeats_store):
    """A corpus with repeated passages and a short last sequence: windows that run into padding (``cut``) and
    repeats of a text already kept (``repeated``) are never sampled, and each is counted exactly."""
    from sae_lens_autointerp.harvest.store import PAD_TOKEN

    store = repeats_store
    assert (store.tokens[-1] == PAD_TOKEN).sum() == 24  # the last sequence holds 40 tokens
    checked = {"cut": 0, "repeated": 0}
    for latent in range(store.d_sae):
        s = sample_latent(store, latent, SamplingConfig(n_explain=10, n_test_pos=10, n_test_neg=10, min_activating=5))
        if s.skipped:
            continue
        pool = store.stratified_examples(latent)
        cut = [e for e in pool if (e.tokens == PAD_TOKEN).any()]
        texts = [e.tokens.tobytes() for e in pool if not (e.tokens == PAD_TOKEN).any()]
        assert s.holdout["cut"] == len(cut), latent
        assert s.holdout["repeated"] == len(texts) - len(set(texts)), latent
        used = [e.tokens.tobytes() for e in s.explain + s.test_pos]
        assert len(used) == len(set(used)), latent  # no text twice
        assert all((e.tokens != PAD_TOKEN).all() for e in s.explain + s.test), latent
        checked["cut"] += s.holdout["cut"]
        checked["repeated"] += s.holdout["repeated"]
    assert checked["cut"] > 0 and checked["repeated"] > 0, checked


def test_pages_show_a_repeated_passage_once(repeats_store):
    """A latent page's top examples: each text once (the strongest copy), where the store's top list repeats."""
    from sae_lens_autointerp.runviews import RunViews

    views = RunViews(folder=None, store=repeats_store)
    checked = 0
    for latent in range(repeats_store.d_sae):
        top = repeats_store.top_examples(latent)
        texts = [e.tokens.tobytes() for e in top]
        if len(set(texts)) == len(texts):
            continue
        shown = views.examples(latent)["top"]
        shown_texts = [e.tokens.tobytes() for e in shown]
        assert len(shown_texts) == len(set(shown_texts)), latent
        first = {}
        for e in top:  # the strongest copy of each text, in the store's order
            first.setdefault(e.tokens.tobytes(), e)
        assert [e.token_id for e in shown] == [e.token_id for e in first.values()][: len(shown)], latent
        checked += 1
    assert checked > 0
