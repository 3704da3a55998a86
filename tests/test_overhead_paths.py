"""The pipeline's fast paths give exactly what the plain code they replaced gave.

Each test keeps the straightforward version (one example, one token, one span at a time) as the reference
and compares on a real harvested store: cached rendering, vectorised examples / spans / silent windows, the
merged span set, the bounded fan-out of judge requests, the cached normal quantile.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from sae_lens_autointerp import metrics
from sae_lens_autointerp.harvest.store import PAD_TOKEN, Example
from sae_lens_autointerp.negatives import silent_windows
from sae_lens_autointerp.sampling import activating_spans
from sae_lens_autointerp.scorers.common import map_bounded
from sae_lens_autointerp.spans import SpanSet
from sae_lens_autointerp.text import RenderedExample, Renderer


def reference_render(renderer: Renderer, example: Example) -> RenderedExample:
    """The renderer as it was: token by token, nothing cached but the pieces."""
    special = set(getattr(renderer.tokenizer, "all_special_ids", []) or [])
    keep = [i for i, t in enumerate(example.tokens.tolist()) if t != PAD_TOKEN and t not in special]
    return RenderedExample(
        tokens=tuple(renderer.tokenizer.decode([int(example.tokens[i])]) for i in keep),
        activations=tuple(float(example.activations[i]) for i in keep),
        label=example.extra.get("label"),
        quantile=example.extra.get("quantile"),
        token_id=example.token_id,
    )


def reference_examples(store, latent: int, prefix: str, source: str) -> list[Example]:
    """``LatentStore._examples`` as it was: one window filled at a time."""
    ids, vals = store.stats[f"{prefix}_ids"][latent], store.stats[f"{prefix}_vals"][latent]
    windows = store.stats[f"{prefix}_windows"][latent]
    lead, ctx, w = store.settings.peak_offset, store.settings.ctx_len, store.settings.example_len
    out = []
    for i in range(ids.shape[0]):
        peak = int(ids[i])
        if peak < 0:
            continue
        seq, pos = divmod(peak, ctx)
        tokens = store._fill(np.full(w, PAD_TOKEN, dtype=np.int32), seq, pos - lead)
        out.append(Example(latent, tokens, windows[i].float().numpy(), float(vals[i]), peak, source, lead))
    return out


def same_example(a: Example, b: Example) -> bool:
    return all(
        np.array_equal(getattr(a, f.name), getattr(b, f.name))
        if isinstance(getattr(a, f.name), np.ndarray)
        else getattr(a, f.name) == getattr(b, f.name) and type(getattr(a, f.name)) is type(getattr(b, f.name))
        for f in dataclasses.fields(Example)
    )


def latents_with_examples(store, n: int = 12) -> list[int]:
    counts = store.stats["n_fire_examples"]
    return [int(i) for i in np.flatnonzero(counts.numpy() > 0)[:n]]


def test_vectorised_examples_and_spans_equal_the_plain_loop(planted_store):
    store = planted_store
    latents = latents_with_examples(store)
    assert latents
    for latent in latents:
        for prefix, source in (("top", "top"), ("res", "stratified")):
            fast = store._examples(latent, prefix, source)
            slow = reference_examples(store, latent, prefix, source)
            assert len(fast) == len(slow) > 0
            assert all(same_example(a, b) for a, b in zip(fast, slow))
            assert all(
                a.tokens.dtype == b.tokens.dtype and a.activations.dtype == b.activations.dtype
                for a, b in zip(fast, slow)
            )
        examples = reference_examples(store, latent, "top", "top") + reference_examples(store, latent, "res", "s")
        assert store.example_spans(latent) == [e.span(store.settings.ctx_len) for e in examples]
    # windows that start before their sequence are padded, as before (peaks at position < peak_offset)
    lead = store.settings.peak_offset
    padded = [e for lat in latents for e in store.top_examples(lat) if e.token_id % store.settings.ctx_len < lead]
    assert padded and all((e.tokens == PAD_TOKEN).any() for e in padded)


def test_silent_windows_equal_the_one_by_one_filter(planted_store):
    store = planted_store
    ctx = store.settings.ctx_len
    windows = store.random_windows()
    lo, hi = store.random_window_spans()
    assert [(a, b) for a, b in zip(lo.tolist(), hi.tolist())] == [w.span(ctx) for w in windows]
    excluded_any = False
    for latent in latents_with_examples(store):
        avoid = activating_spans(store, latent)
        kept, excluded = silent_windows(store, latent, avoid)
        silent = [windows[i] for i in store.silent_window_indices(latent)]
        expected = [w for w in silent if not avoid.overlaps(*w.span(ctx))]
        assert [w.start_id for w in kept] == [w.start_id for w in expected]
        assert excluded == len(silent) - len(expected)
        excluded_any |= excluded > 0
    assert excluded_any  # the overlap rule was exercised, not only the empty case


def test_span_set_built_at_once_equals_one_add_per_span_and_overlaps_many_equals_overlaps():
    rng = np.random.default_rng(0)
    for _ in range(200):
        starts = rng.integers(0, 300, size=rng.integers(0, 40))
        spans = [(int(s), int(s + rng.integers(-3, 12))) for s in starts]  # empty and touching spans too
        built = SpanSet(spans)
        added = SpanSet()
        for lo, hi in spans:
            added.add(lo, hi)
        assert (built._starts, built._ends) == (added._starts, added._ends)
        qlo = rng.integers(-5, 320, size=60)
        qhi = qlo + rng.integers(-2, 15, size=60)
        assert built.overlaps_many(qlo, qhi).tolist() == [built.overlaps(int(a), int(b)) for a, b in zip(qlo, qhi)]
    assert SpanSet([(0, 2), (2, 4)])._starts == [0]  # touching spans merge, as add() merges them


def test_cached_rendering_equals_uncached(planted_store, bridge_model):
    store = planted_store
    renderer = Renderer(bridge_model.tokenizer)
    examples = [e for lat in latents_with_examples(store) for e in store.top_examples(lat)]
    examples += [
        Example(None, w.tokens, w.activations_of(lat), 0.0, w.start_id, "random", extra={"label": False})
        for lat in latents_with_examples(store, 3)
        for w in store.random_windows()[:50]
    ]
    special = sorted(renderer._special)
    assert special, "the tokenizer has special tokens: the test must cover dropping them"
    tokens = examples[0].tokens.copy()
    tokens[[1, 3]] = special[0]
    examples.append(dataclasses.replace(examples[0], tokens=tokens, extra={"label": True, "quantile": 3}))
    for _ in range(2):  # the second pass is served from the window cache
        for e in examples:
            assert renderer.render(e) == reference_render(renderer, e)
    assert any((e.tokens == PAD_TOKEN).any() for e in examples)


def test_the_window_cache_starts_over_when_full(planted_store, bridge_model, monkeypatch):
    import sae_lens_autointerp.text as text

    monkeypatch.setattr(text, "WINDOW_CACHE_SIZE", 5)
    renderer = Renderer(bridge_model.tokenizer)
    examples = [e for lat in latents_with_examples(planted_store, 3) for e in planted_store.top_examples(lat)][:23]
    for e in examples:
        assert renderer.render(e) == reference_render(renderer, e)
        assert len(renderer._windows) <= 5


def test_with_extra_is_replace_of_extra():
    ex = Example(7, np.arange(4, dtype=np.int32), np.ones(4, np.float32), 1.5, 99, "top", 2, {"a": 1})
    fast, slow = (
        ex.with_extra(label=True, quantile=None),
        dataclasses.replace(ex, extra={**ex.extra, "label": True, "quantile": None}),
    )
    for f in dataclasses.fields(Example):  # every field, so a new one that with_extra drops fails here
        assert getattr(fast, f.name) is getattr(slow, f.name) or getattr(fast, f.name) == getattr(slow, f.name), f.name
    assert ex.extra == {"a": 1}


def test_map_bounded_keeps_order_bounds_concurrency_and_raises_after_all():
    in_flight, peak, done = 0, 0, []

    async def job(x: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001 * (x % 3))
        in_flight -= 1
        done.append(x)
        if x in (4, 9):
            raise ValueError(f"job {x}")
        return x * x

    assert asyncio.run(map_bounded(list(range(3)), job, 2)) == [0, 1, 4]
    assert peak <= 2
    done.clear()
    with pytest.raises(ValueError, match="job 4"):  # the first failure in item order
        asyncio.run(map_bounded(list(range(12)), job, 3))
    assert sorted(done) == list(range(12)) and peak <= 3  # every job ran to the end first
    assert asyncio.run(map_bounded([], job, 3)) == []


def test_cached_z_equals_scipy_and_bad_levels_still_raise():
    from scipy import stats

    for level in (0.5, 0.9, 0.95, 0.99):
        assert metrics._z(level) == float(stats.norm.ppf(0.5 + level / 2))
        assert metrics._z(level) == float(stats.norm.ppf(0.5 + level / 2))
    for bad in (0.0, 1.0, 1.5):
        for _ in range(2):
            with pytest.raises(ValueError):
                metrics.wilson(3, 10, bad)
