"""Hold-out by token position: explainer, activating test and non-activating examples never share a token."""

from __future__ import annotations

import numpy as np
import pytest

from sae_lens_autointerp.harvest.store import Example
from sae_lens_autointerp.sampling import SamplingConfig, activating_spans, sample_latent
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
    token with an explainer window, 0 negatives sharing a token with any activating window of the latent
    (explainer, test or stored) or with another negative."""
    store, ctx = embedded_store, embedded_store.settings.ctx_len
    cfg = SamplingConfig(explain_strategy=strategy)
    n_sampled = excluded_pos = excluded_neg = n_pos = n_neg = 0
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
        assert not _any_overlap(negatives, shown + tested + known), latent
        assert not _any_overlap(negatives, negatives, skip_diagonal=True), latent
        excluded_pos += s.holdout["test_pos"]
        excluded_neg += s.holdout["test_neg"]
        n_pos, n_neg = n_pos + len(s.test_pos), n_neg + len(s.test_neg)
    assert n_sampled > 1000 // step
    # the exclusions happen (adjacent chunks' windows overlap) and are counted, and most latents keep full sets
    assert excluded_pos > 0 and excluded_neg > 0
    assert n_neg / n_sampled > 45


def test_holdout_counts_what_it_excludes(embedded_store):
    """``holdout["test_pos"]`` is exactly the number of reservoir examples left out for sharing tokens."""
    store, ctx = embedded_store, embedded_store.settings.ctx_len
    checked = 0
    for latent in range(store.d_sae):
        s = sample_latent(store, latent, SamplingConfig())
        if s.skipped or not s.holdout["test_pos"]:
            continue
        shown = SpanSet(e.span(ctx) for e in s.explain)
        ids = {e.token_id for e in s.explain}
        overlapping = [
            e for e in store.stratified_examples(latent) if e.token_id not in ids and shown.overlaps(*e.span(ctx))
        ]
        assert len(overlapping) == s.holdout["test_pos"]
        assert not {e.token_id for e in overlapping} & {e.token_id for e in s.test_pos}
        avoid = activating_spans(store, latent)
        assert all(avoid.overlaps(*e.span(ctx)) for e in overlapping)
        checked += 1
        if checked == 20:
            break
    assert checked == 20
