"""The pipeline's fast paths give exactly what the plain code they replaced gave.

Each test keeps the straightforward version (one example, one token, one span at a time) as the reference
and compares on a real harvested store: cached rendering, vectorised examples / spans / silent windows, the
merged span set, the bounded fan-out of judge requests, the cached normal quantile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from answer_key import AnswerKey, AnswerKeyClient
from sae_lens_autointerp import metrics
from sae_lens_autointerp.harvest.store import PAD_TOKEN, Example, example_spans_of
from sae_lens_autointerp.llm import BaseClient, ChatRequest, ClassifyResult, LLMConnectionError, LLMError, Usage
from sae_lens_autointerp.llm.cache import ResponseCache
from sae_lens_autointerp.negatives import _silent, silent_window_ids, silent_windows
from sae_lens_autointerp.sampling import SamplingConfig, activating_spans
from sae_lens_autointerp.scorers.common import map_bounded
from sae_lens_autointerp.spans import SpanSet
from sae_lens_autointerp.text import RenderedExample, Renderer


def reference_render(renderer: Renderer, example: Example) -> RenderedExample:
    """The renderer as it was: token by token, nothing cached but the pieces (padding dropped; special tokens
    too where the renderer drops them)."""
    keep = [i for i, t in enumerate(example.tokens.tolist()) if t != PAD_TOKEN and t not in renderer._special]
    return RenderedExample(
        tokens=tuple(renderer.tokenizer.decode([int(example.tokens[i])]) for i in keep),
        activations=tuple(float(example.activations[i]) for i in keep),
        label=example.extra.get("label"),
        quantile=example.extra.get("quantile"),
        token_id=example.token_id,
    )


def reference_examples(store, latent: int, prefix: str, source: str) -> list[Example]:
    """``LatentStore._examples`` as it was: one window filled at a time (the peak's chunk)."""
    ids, vals = store.stats[f"{prefix}_ids"][latent], store.stats[f"{prefix}_vals"][latent]
    windows = store.stats[f"{prefix}_windows"][latent]
    ctx, w = store.settings.ctx_len, store.settings.example_len
    out = []
    for i in range(ids.shape[0]):
        peak = int(ids[i])
        if peak < 0:
            continue
        seq, pos = divmod(peak, ctx)
        start = pos - pos % w
        tokens = np.full(w, PAD_TOKEN, dtype=np.int32)
        tokens[: min(w, ctx - start)] = store.tokens[seq, start : start + w]
        out.append(Example(latent, tokens, windows[i].float().numpy(), float(vals[i]), peak, source, pos - start))
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
            fast = store.examples_at(latent, prefix, store.ranked_rows(latent, prefix)[0])
            slow = sorted(reference_examples(store, latent, prefix, source), key=lambda e: (-e.value, e.token_id))
            assert len(fast) == len(slow) > 0
            assert all(same_example(a, b) for a, b in zip(fast, slow))
            assert all(
                a.tokens.dtype == b.tokens.dtype and a.activations.dtype == b.activations.dtype
                for a, b in zip(fast, slow)
            )
            public = store.top_examples(latent) if prefix == "top" else store.stratified_examples(latent)
            assert len(public) == len(fast) and all(same_example(a, b) for a, b in zip(public, fast))
            rows, peaks, values = store.ranked_rows(latent, prefix)
            assert peaks.tolist() == [e.token_id for e in slow] and values.tolist() == [e.value for e in slow]
            extras = [{"label": True, "quantile": i % 3} for i in range(2)]
            tagged = store.examples_at(latent, prefix, rows[[1, 0]], extras)  # any rows, in the order given
            assert [e.token_id for e in tagged] == [slow[1].token_id, slow[0].token_id]
            assert [e.extra for e in tagged] == extras and fast[0].extra == {}
        examples = reference_examples(store, latent, "top", "top") + reference_examples(store, latent, "res", "s")
        assert store.example_spans(latent) == [e.span(store.settings.ctx_len) for e in examples]
        lo, hi = store.example_span_arrays(latent)
        assert list(zip(lo.tolist(), hi.tolist())) == store.example_spans(latent)
        ctx = store.settings.ctx_len
        examples += [_silent(latent, w, "random") for w in store.random_windows()[:20]]  # peak_index None
        examples.append(dataclasses.replace(examples[0], tokens=examples[0].tokens[:3]))  # a short window
        lo, hi = example_spans_of(examples, ctx)
        assert lo.dtype == hi.dtype == np.int64
        assert list(zip(lo.tolist(), hi.tolist())) == [e.span(ctx) for e in examples]
    assert all(a.size == 0 for a in example_spans_of([], 8))
    # every window is its peak's chunk, the peak anywhere in it
    w = store.settings.example_len
    shown = [e for lat in latents for e in store.top_examples(lat) + store.stratified_examples(lat)]
    assert all(e.span(ctx)[0] % w == 0 and e.span(ctx)[0] == e.token_id - e.peak_index for e in shown)
    assert len({e.peak_index for e in shown}) > w // 2


def test_silent_windows_equal_the_one_by_one_filter(planted_store):
    store = planted_store
    ctx = store.settings.ctx_len
    windows = store.random_windows()
    lo, hi = store.random_window_spans()
    assert [(a, b) for a, b in zip(lo.tolist(), hi.tolist())] == [w.span(ctx) for w in windows]
    excluded_any = False
    for latent in latents_with_examples(store):
        # chunk windows never overlap another chunk: spans across some pool windows exercise the overlap rule
        avoid = activating_spans(store, latent)
        for w in windows[latent % 5 :: 7]:
            avoid.add(w.start_id + 5, w.start_id + 9)
        kept, excluded = silent_windows(store, latent, avoid)
        ids, excluded_ids = silent_window_ids(store, latent, avoid)
        assert [windows[i] for i in ids.tolist()] == kept and excluded_ids == excluded
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


def test_span_set_from_arrays_equals_the_merging_loop():
    rng = np.random.default_rng(1)
    for _ in range(300):
        lo = rng.integers(0, 200, size=rng.integers(0, 50))
        hi = lo + rng.integers(-3, 30, size=lo.size)  # empty, nested, touching and overlapping spans
        fast, slow = SpanSet.from_arrays(lo, hi), SpanSet(zip(lo.tolist(), hi.tolist()))
        assert (fast._starts, fast._ends) == (slow._starts, slow._ends)
        assert all(type(x) is int for x in fast._starts + fast._ends)
        qlo = rng.integers(-5, 240, size=40)
        qhi = qlo + rng.integers(-2, 15, size=40)
        assert fast.overlaps_many(qlo, qhi).tolist() == slow.overlaps_many(qlo, qhi).tolist()
        fast.add(5, 9)  # the cached arrays follow an add
        slow.add(5, 9)
        assert fast.overlaps_many(qlo, qhi).tolist() == slow.overlaps_many(qlo, qhi).tolist()


def reference_sample(store, latent: int, config: SamplingConfig):
    """``sample_latent`` as it was: every example of the pool built, then filtered one by one."""
    from sae_lens_autointerp.negatives import RandomNegatives
    from sae_lens_autointerp.sampling import LatentSample, chunk_key, latent_rng, quantile_shares

    settings, ctx_len = store.settings, store.settings.ctx_len
    rng = latent_rng(config.seed, latent)
    pool = store.stratified_examples(latent)
    groups = [g.tolist() for g in np.array_split(np.arange(len(pool)), config.n_quantiles)]
    quantile_of = {chunk_key(pool[i], settings): q for q, idx in enumerate(groups) for i in idx}

    def tag(ex: Example, label: bool) -> Example:
        return ex.with_extra(label=label, quantile=quantile_of.get(chunk_key(ex, settings)) if label else None)

    def usable(examples: list[Example]) -> tuple[list[bool], int, int]:
        """Strongest first: full windows, each text once."""
        seen: set[bytes] = set()
        keep, cut, repeated = [], 0, 0
        for e in examples:
            first = e.tokens.tobytes() not in seen
            seen.add(e.tokens.tobytes())
            full = not (e.tokens == PAD_TOKEN).any()
            cut, repeated = cut + (not full), repeated + (full and not first)
            keep.append(full and first)
        return keep, cut, repeated

    ok, cut, repeated = usable(pool)
    groups = [[i for i in idx if ok[i]] for idx in groups]
    per_explain, per_test = quantile_shares([len(g) for g in groups], config)  # the split is not what changed
    if config.explain_strategy == "top":
        top = store.top_examples(latent)
        shown = [e for e, k in zip(top, usable(top)[0]) if k][: config.n_explain]
    elif config.explain_strategy == "random":
        candidates = np.array([i for i in range(len(pool)) if ok[i]], dtype=np.int64)
        shown = [pool[i] for i in sorted(rng.permutation(candidates)[: config.n_explain])]
    else:
        shown = [pool[i] for q, idx in enumerate(groups) for i in sorted(rng.permutation(idx)[: per_explain[q]])]
    shown_ids = {e.token_id for e in shown}
    shown_texts = {e.tokens.tobytes() for e in shown}
    shown_spans = SpanSet()
    for e in shown:
        shown_spans.add(*e.span(ctx_len))
    test_pos, excluded_pos = [], 0
    for q, idx in enumerate(groups):
        free = []
        for i in idx:
            if pool[i].token_id in shown_ids:
                continue
            if shown_spans.overlaps(*pool[i].span(ctx_len)) or pool[i].tokens.tobytes() in shown_texts:
                excluded_pos += 1
                continue
            free.append(i)
        take = rng.permutation(free)[: per_test[q]] if free else []
        test_pos.extend(pool[i] for i in sorted(take))
    avoid = activating_spans(store, latent)
    for e in [*shown, *test_pos]:
        avoid.add(*e.span(ctx_len))
    test_neg, excluded_neg = RandomNegatives().draw(store, latent, config.n_test_neg, rng, avoid)
    return LatentSample(
        latent,
        explain=tuple(tag(e, True) for e in shown),
        test_pos=tuple(tag(e, True) for e in test_pos),
        test_neg=tuple(tag(e, False) for e in test_neg),
        holdout={"test_pos": excluded_pos, "test_neg": excluded_neg, "cut": cut, "repeated": repeated},
    )


@pytest.mark.parametrize("strategy", ["quantiles", "top", "random"])
@pytest.mark.parametrize("which", ["embedded_store", "repeats_store"])
def test_sampling_on_arrays_equals_the_example_by_example_sampler(request, which, strategy):
    from sae_lens_autointerp.sampling import sample_latent

    store = request.getfixturevalue(which)
    counts = store.stats["n_fire_examples"].numpy()
    latents = [int(i) for i in np.flatnonzero(counts >= 10)[:40]]
    assert len(latents) >= 10
    excluded = {"test_pos": 0, "cut": 0, "repeated": 0}
    for config in (
        SamplingConfig(explain_strategy=strategy, min_activating=1, max_frequency=1.0),
        SamplingConfig(
            explain_strategy=strategy,
            n_explain=5,
            n_test_pos=3,
            n_test_neg=7,
            n_quantiles=3,
            min_activating=1,
            max_frequency=1.0,
            seed=4,
        ),
    ):
        for latent in latents:
            fast, slow = sample_latent(store, latent, config), reference_sample(store, latent, config)
            assert fast.skipped is None and fast.holdout == slow.holdout
            for part in ("explain", "test_pos", "test_neg"):
                a, b = getattr(fast, part), getattr(slow, part)
                assert len(a) == len(b) and all(same_example(x, y) for x, y in zip(a, b)), (latent, part)
            excluded = {k: v + fast.holdout[k] for k, v in excluded.items()}
    if which == "repeats_store":  # the rules were exercised: padding, repeats, and (top list vs sample) a test
        # window with a shown window's text (other strategies draw both from texts already made distinct)
        assert excluded["cut"] > 0 and excluded["repeated"] > 0, excluded
        if strategy == "top":
            assert excluded["test_pos"] > 0, excluded


def test_new_example_equals_the_dataclass_init():
    from sae_lens_autointerp.harvest.store import new_example

    args = (7, np.arange(4, dtype=np.int32), np.ones(4, np.float32), 1.5, 99, "top", 2, {"a": 1})
    fast, slow = new_example(*args), Example(*args)
    assert same_example(fast, slow) and fast.__dict__.keys() == slow.__dict__.keys()
    assert [f.name for f in dataclasses.fields(Example)] == list(fast.__dict__)  # a new field fails here
    assert new_example(*args[:6]).extra == {} and new_example(*args[:6]).peak_index is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("drop_special", [False, True])
def test_cached_rendering_equals_uncached(planted_store, bridge_model, drop_special):
    store = planted_store
    renderer = Renderer(bridge_model.tokenizer, drop_special=drop_special)
    examples = [e for lat in latents_with_examples(store) for e in store.top_examples(lat)]
    examples += [
        Example(None, w.tokens, w.activations_of(lat), 0.0, w.start_id, "random", extra={"label": False})
        for lat in latents_with_examples(store, 3)
        for w in store.random_windows()[:50]
    ]
    special = sorted(bridge_model.tokenizer.all_special_ids)
    assert special, "the tokenizer has special tokens: the test must cover showing and dropping them"
    tokens = examples[0].tokens.copy()
    tokens[[1, 3]] = special[0]
    examples.append(dataclasses.replace(examples[0], tokens=tokens, extra={"label": True, "quantile": 3}))
    padded = examples[1].tokens.copy()
    padded[-5:] = PAD_TOKEN  # the end of a short sequence
    examples.append(dataclasses.replace(examples[1], tokens=padded))
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


@pytest.mark.parametrize("cache_size", [5, 16_384])
@pytest.mark.parametrize("drop_special", [False, True])
def test_rendering_many_at_once_equals_one_by_one(planted_store, bridge_model, monkeypatch, cache_size, drop_special):
    import sae_lens_autointerp.text as text

    monkeypatch.setattr(text, "WINDOW_CACHE_SIZE", cache_size)
    examples = [e for lat in latents_with_examples(planted_store, 4) for e in planted_store.top_examples(lat)]
    tokens = examples[0].tokens.copy()
    tokens[[0, 2]] = sorted(bridge_model.tokenizer.all_special_ids)[0]
    examples += [
        dataclasses.replace(examples[0], tokens=tokens),  # special tokens shown or dropped
        dataclasses.replace(examples[1], tokens=examples[1].tokens.astype(np.int64)),  # another dtype, same ids
        dataclasses.replace(examples[2], tokens=examples[2].tokens[:7], activations=examples[2].activations[:7]),
        dataclasses.replace(examples[3], tokens=np.full(5, PAD_TOKEN, dtype=np.int32), activations=np.zeros(5)),
        examples[4],  # a repeat inside the batch
    ]
    assert any((e.tokens == PAD_TOKEN).any() for e in examples)
    one_by_one = Renderer(bridge_model.tokenizer, drop_special=drop_special)
    many = Renderer(bridge_model.tokenizer, drop_special=drop_special)
    many.render(examples[5])  # one window cached before the batch
    for _ in range(2):  # the second pass is served from the window cache
        assert many.render_many(examples) == [one_by_one.render(e) for e in examples]
        assert many.texts(examples) == [one_by_one.text(e) for e in examples]
        assert len(many._windows) <= cache_size
    for e, (keep, _, _) in zip(examples, many.windows([e.tokens for e in examples])):
        assert keep.dtype == one_by_one.window(e.tokens)[0].dtype


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
        assert metrics.z_quantile(level) == float(stats.norm.ppf(0.5 + level / 2))
        assert metrics.z_quantile(level) == float(stats.norm.ppf(0.5 + level / 2))
    for bad in (0.0, 1.0, 1.5):
        for _ in range(2):
            with pytest.raises(ValueError):
                metrics.wilson(3, 10, bad)


# -- the batched classification path ---------------------------------------------------------------------


class FaultyKey(AnswerKeyClient):
    """FAKE judge: the answer key, with labelled faults chosen from each request's own text: some answers are
    refusals (a failed judgment), and on latent ``broken`` some requests fail in transport."""

    def __init__(self, key: AnswerKey, broken: int | None = None) -> None:
        super().__init__(key, eps=0.1)
        self.broken = broken
        self.batch_sizes: list[int] = []

    async def _classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        digest = hashlib.sha256(repr(request.messages).encode()).digest()[0]
        if request.latent == self.broken and digest % 4 == 0:
            raise LLMConnectionError("FAKE transport fault")
        if digest % 9 == 0:
            return ClassifyResult(choices, None, {c: None for c in choices}, False, "generation", Usage(7, 1), "no")
        return await super()._classify(request, choices)


class BatchedFaultyKey(FaultyKey):
    """The same judge answering a whole batch in one call (errors in their slots, as a backend returns them)."""

    async def _classify_batch(
        self, requests: Sequence[ChatRequest], choices: tuple[str, ...]
    ) -> list[ClassifyResult | BaseException]:
        self.batch_sizes.append(len(requests))
        out: list[ClassifyResult | BaseException] = []
        for request in requests:
            try:
                out.append(await self._classify(request, choices))
            except LLMError as exc:
                out.append(exc)
        return out


def _records(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("seconds", None)  # wall time, the one field that may differ
    return sorted(records, key=lambda r: (r["latent"], "incomplete" in r))


@pytest.mark.parametrize("broken", [None, 1])
def test_batched_classification_gives_the_per_request_records_usage_and_failures(
    planted, planted_store, bridge_model, tmp_path, broken
):
    key = AnswerKey(planted, planted_store, bridge_model)
    outs = {}
    for name, cls in (("slow", FaultyKey), ("fast", BatchedFaultyKey)):
        client = cls(key, broken)
        result = planted.sae.score(
            bridge_model,
            store=planted_store,
            explanations=planted.explanations,
            scorers=["detection", "fuzzing"],
            llm=client,
            sampling=SamplingConfig(n_explain=10, n_test_pos=30, n_test_neg=30),
            out_dir=tmp_path / name,
            progress=False,
            max_consecutive_failures=100,
        )
        outs[name] = (result, client, _records(tmp_path / name))
    (slow, slow_client, slow_records), (fast, fast_client, fast_records) = outs["slow"], outs["fast"]
    assert not slow_client.batches_classify and fast_client.batches_classify
    assert fast_client.batch_sizes and max(fast_client.batch_sizes) > 1  # the batched path did run
    assert slow_records == fast_records  # every score, prediction, control and per-latent usage
    pd.testing.assert_frame_equal(slow.table, fast.table)
    assert slow_client.usage.by_stage() == fast_client.usage.by_stage()
    assert slow.skipped == fast.skipped and getattr(slow, "incomplete", None) == getattr(fast, "incomplete", None)
    n_failed = sum(int(out["n_failed"]) for r in fast_records for out in (r.get("scores") or {}).values())
    assert n_failed > 0  # the refusals were counted, not dropped
    failures = sum(t.failures for t in fast_client.usage.by_stage().values())
    if broken is None:
        assert all("incomplete" not in r for r in fast_records)
    else:
        assert any(r.get("incomplete") and r["latent"] == broken for r in fast_records)
        assert failures > n_failed  # the transport faults too, one per request


class Echo(BaseClient):
    """FAKE judge: P("1") from the length of the request's text; ``bad`` texts fail in transport."""

    def __init__(self, cache: Any = False) -> None:
        super().__init__("echo", cache=cache)
        self.sent: list[str] = []

    async def _classify(self, request: ChatRequest, choices: tuple[str, ...]) -> ClassifyResult:
        text = request.messages[-1][1]
        self.sent.append(text)
        if "bad" in text:
            raise LLMConnectionError(f"FAKE fault on {text}")
        p = (len(text) % 10) / 10
        probs = {"0": 1 - p, "1": p}
        return ClassifyResult(choices, probs, {c: None for c in choices}, True, "top_logprobs", Usage(len(text), 1))

    async def _batch(self, requests: Sequence[ChatRequest], choices: tuple[str, ...]) -> list[Any]:
        out: list[Any] = []
        for r in requests:
            try:
                out.append(await self._classify(r, choices))
            except LLMError as exc:
                out.append(exc)
        return out


class BatchedEcho(Echo):
    async def _classify_batch(self, requests: Sequence[ChatRequest], choices: tuple[str, ...]) -> list[Any]:
        return await self._batch(requests, choices)


def test_classify_many_counts_cache_hits_usage_and_errors_per_request(tmp_path):
    prompts = [[{"role": "user", "content": t}] for t in ["a", "bb", "bad 1", "ccc", "bad 2", "a"]]

    async def go(client: Echo) -> tuple[list[Any], BaseException | None]:
        ok = await client.classify_many([p for p in prompts if "bad" not in p[0]["content"]], stage="s", latent=3)
        try:
            await client.classify_many(prompts, stage="s", latent=4)
        except LLMError as exc:
            return ok, exc
        return ok, None

    runs = {}
    for name, cls in (("slow", Echo), ("fast", BatchedEcho)):
        client = cls(cache=ResponseCache(tmp_path / name))
        ok, err = asyncio.run(go(client))
        again, _ = asyncio.run(go(client))  # the second time, the good ones come from the cache
        runs[name] = (client, ok, err, again)
    (slow, slow_ok, slow_err, slow_again), (fast, fast_ok, fast_err, fast_again) = runs["slow"], runs["fast"]
    assert fast.batches_classify and not slow.batches_classify
    assert [r.probs for r in fast_ok] == [r.probs for r in slow_ok] == [r.probs for r in fast_again]
    assert [r.probs for r in slow_again] == [r.probs for r in fast_again]
    assert str(fast_err) == str(slow_err) == "FAKE fault on bad 1"  # the first in prompt order, after all ran
    # the same requests reached the backend: the repeated "a" once (then from the cache), the bad ones each time
    assert sorted(fast.sent) == sorted(slow.sent) == ["a", "bad 1", "bad 1", "bad 2", "bad 2", "bb", "ccc"]
    assert fast.usage.by_latent() == slow.usage.by_latent()
    totals = fast.usage.total()
    assert totals.failures == 4 and totals.cache_hits > 0  # 2 bad requests x 2 calls; hits per request
    # the per-request call sees what the batch cached
    assert (
        asyncio.run(BatchedEcho(cache=ResponseCache(tmp_path / "fast")).classify(prompts[1])).probs == slow_ok[1].probs
    )


def test_heuristic_flags_in_chunks_equal_all_at_once(planted_store, monkeypatch):
    from sae_lens_autointerp.config import RunConfig
    from sae_lens_autointerp.pipeline import flags

    latents = list(range(planted_store.d_sae))
    whole, threshold = flags.latent_flags(planted_store, latents, RunConfig())
    monkeypatch.setattr(flags, "HEURISTIC_CHUNK", 3)
    chunked, threshold_c = flags.latent_flags(planted_store, latents, RunConfig())
    assert whole is not None and len(whole) == len(latents) and threshold == threshold_c
    assert json.dumps(chunked, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert any(f["flag"] is not None for f in whole.values()) or planted_store.d_sae < 3


def test_record_many_equals_one_record_per_request():
    from sae_lens_autointerp.llm import UsageTracker

    usages = [Usage(prompt_tokens=3 * i + 1, completion_tokens=i % 3, cached_tokens=i % 2) for i in range(50)]
    one, many = (UsageTracker(prices={"m": (0.15, 0.6, 0.075), "x": (1.1, 2.2)}) for _ in range(2))
    for model in ("m", "nope"):  # a model without a price: its cost is unknown, never added
        for u in usages:
            one.record(model, "s", 7, u)
        for _ in range(4):
            one.record_failure(model, "s", 7)
        many.record_many(model, "s", 7, usages, 4)
    many.record_many("m", "t", 8, [])  # nothing: no row
    assert one.by_latent() == many.by_latent() and one.by_stage() == many.by_stage()
    assert one.by_model() == many.by_model() and one.total() == many.total()


def test_scorer_output_to_dict_equals_asdict_and_copies_nested_containers():
    from collections import OrderedDict

    from sae_lens_autointerp.records import ScorerOutput

    preds = [
        {"token_id": 1, "label": True, "extra": {"a": [1, (2, 3)]}, "t": (4, [5])},
        OrderedDict(b=2, a=[1]),  # a dict subclass: copied as a plain dict, as before
        {"prediction": None},
    ]
    out = ScorerOutput("s", 0.5, 3, 0, metrics={"m": {"x": [1, 2]}, "n": 1}, predictions=preds)
    d = out.to_dict()
    assert d == dataclasses.asdict(out)
    assert [type(p) for p in d["predictions"]] == [dict, dict, dict]
    d["predictions"][0]["extra"]["a"].append(9)
    d["predictions"][0]["t"][1].append(9)
    d["metrics"]["m"]["x"].append(9)
    assert preds[0]["extra"]["a"] == [1, (2, 3)] and preds[0]["t"] == (4, [5]) and out.metrics["m"]["x"] == [1, 2]


def test_batched_classify_requests_equal_one_build_per_prompt():
    from sae_lens_autointerp.llm.base import _classify_request, _classify_requests

    prompts = [[{"role": "system", "content": "s"}, {"role": "user", "content": f"q {i}"}] for i in range(5)]
    fast = _classify_requests(prompts, 3, "detection", 7)
    slow = [_classify_request(m, 3, "detection", 7) for m in prompts]
    assert fast == slow and [type(r) for r in fast] == [ChatRequest] * 5
    assert [vars(r) for r in fast] == [vars(r) for r in slow] and len({id(r) for r in fast}) == 5
    assert _classify_requests([], None, "s", None) == []
    for bad in ([{"role": "robot", "content": "x"}], [{"content": "x"}], []):
        with pytest.raises((TypeError, ValueError)) as slow_error:
            _classify_request(bad, None, "s", None)
        with pytest.raises(slow_error.type, match=re.escape(str(slow_error.value))):
            _classify_requests([prompts[0], bad, prompts[1]], None, "s", None)


def test_a_record_is_encoded_once_and_unwritable_plugin_output_becomes_its_error(tmp_path):
    """The JSON check moved from every scorer output to the one encoding of the record: an entry (or a
    control) that cannot be written becomes an error naming the plugin; the other entries are kept as they are."""
    from sae_lens_autointerp.pipeline import quarantine
    from sae_lens_autointerp.results import ResultsFile, encode_record

    def entry(name: str, plugin: str, **metrics: Any) -> dict[str, Any]:
        return {
            "scorer": name,
            "score": 0.75,
            "n_examples": 4,
            "n_failed": 0,
            "metrics": metrics,
            "predictions": [{"token_id": 3, "label": True, "prediction": True}],
            "provider": {"plugin": plugin, "version": "1.0"},
            "judge_kind": "llm",
            "judge": "fake",
            "needs_explanation": True,
        }

    good = entry("detection", "builtin", balanced_accuracy=0.75, n=np.int64(4))  # numpy scalars are written
    record = {
        "latent": 5,
        "scores": {"detection": good, "nan": entry("nan", "sai_nan", auc=float("nan")), "odd": entry("odd", "sai_odd")},
        "controls": {
            "detection": {"explanation_from": 2, "explanation": "x", "score": 0.5},
            "odd": {"explanation_from": 2, "explanation": "x", "score": 0.5, "predictions": [object()]},
        },
    }
    record["scores"]["odd"]["metrics"]["thing"] = object()
    kept = json.loads(encode_record({"s": good}))["s"]
    with pytest.raises((TypeError, ValueError)):
        encode_record(record)
    quarantine(record)
    line = encode_record(record)
    back = json.loads(line)
    assert back["scores"]["detection"] == kept and back["controls"]["detection"]["score"] == 0.5
    nan, odd = back["scores"]["nan"], back["scores"]["odd"]
    assert nan["score"] is None and nan["error"].startswith(
        "plugin 'sai_nan': scorer 'nan' returned a ScorerOutput that cannot be written to results.jsonl: ValueError"
    )
    assert odd["error"].startswith("plugin 'sai_odd': scorer 'odd' returned a ScorerOutput that cannot be written")
    assert odd["provider"] == {"plugin": "sai_odd", "version": "1.0"} and odd["judge_kind"] == "llm"
    assert back["controls"]["odd"]["score"] is None and "cannot be written" in back["controls"]["odd"]["error"]
    results = ResultsFile(tmp_path / "results.jsonl")
    results.append(back, line)
    results.close()
    assert (tmp_path / "results.jsonl").read_bytes() == line
