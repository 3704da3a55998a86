"""explain / score end to end: sampling, prompts, parse failures, resume, budget, table, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from sae_factories import make_sae
from sae_lens_autointerp.errors import ConfigError, UnknownPluginItemError
from sae_lens_autointerp.llm import UsageTracker
from sae_lens_autointerp.sampling import SamplingConfig, activating_spans, chunk_key, sample_latent
from sae_lens_autointerp.text import Renderer
from scripted_llm import ScriptedClient, distinct, sensible

SMALL = SamplingConfig(n_explain=10, n_test_pos=10, n_test_neg=10, min_activating=10)


@pytest.fixture(scope="module")
def store(bridge_model, bridge_sae, corpus_texts, tmp_path_factory):
    return bridge_sae.autointerp.harvest(
        bridge_model,
        corpus_texts,
        n_tokens=120 * 64,
        ctx_len=64,
        batch_size=8,
        store_dir=tmp_path_factory.mktemp("s"),
        progress=False,
    )


@pytest.fixture(scope="module")
def live_latents(store):
    counts = store.stats["n_fire_examples"]
    # Sparse enough that the random pool holds windows where they are silent (negatives).
    return sorted((i for i in range(store.d_sae) if counts[i] >= 60), key=lambda i: float(store.frequency[i]))[:6]


def test_explain_and_test_examples_are_disjoint_and_stratified(store, live_latents):
    cfg = SamplingConfig()  # the defaults: 40 explain, 50 + 50 test, 10 quantiles
    for latent in live_latents:
        s = sample_latent(store, latent, cfg)
        assert s.skipped is None
        shown = {chunk_key(e, store.settings) for e in s.explain}
        tested = {chunk_key(e, store.settings) for e in s.test_pos}
        assert not shown & tested
        assert len(shown) == len(s.explain) and len(tested) == len(s.test_pos)
        n_pool = len(store.stratified_examples(latent))
        if n_pool >= 90:
            assert len(s.explain) == 40 and len(s.test_pos) >= 50 - s.holdout["test_pos"]
            per_quantile = np.bincount([e.extra["quantile"] for e in s.test_pos], minlength=10)
            assert per_quantile.max() <= 5 and per_quantile.sum() == len(s.test_pos)
            assert np.bincount([e.extra["quantile"] for e in s.explain], minlength=10).tolist() == [4] * 10
        assert all(e.extra["label"] is True for e in s.test_pos) and all(e.extra["label"] is False for e in s.test_neg)
        assert len({e.token_id for e in s.test_neg}) == len(s.test_neg)
        windows = {w.start_id: w for w in store.random_windows()}
        assert all(not np.any(windows[e.token_id].latents == latent) for e in s.test_neg)
        again = sample_latent(store, latent, cfg)
        assert [e.token_id for e in again.explain + again.test] == [e.token_id for e in s.explain + s.test]


def test_rare_latents_keep_test_examples(store):
    counts = store.stats["n_fire_examples"]
    rare = next(i for i in range(store.d_sae) if 12 <= counts[i] <= 30)
    s = sample_latent(store, rare, SamplingConfig())  # wants 40 + 50 from a pool of at most 30
    assert s.skipped is None and len(s.test_pos) >= len(s.explain) // 2 > 0
    # every firing example is shown, tested, or left out for sharing tokens with a shown one (counted)
    assert len(s.explain) + len(s.test_pos) + s.holdout["test_pos"] == int(counts[rare])


def test_dead_rare_and_dense_latents_are_skipped_with_a_reason(bridge_model, corpus_texts, tmp_path):
    sae = make_sae(576, 8, seed=2)
    with torch.no_grad():
        sae.W_enc.mul_(0.5)
        sae.b_enc[0] = -1e6  # dead
        sae.b_enc[1] = 1e6  # fires everywhere
        sae.W_enc[:, 2] = 0
        sae.b_enc[2] = -1.0  # dead too, but let's make 3 rare instead:
    store = sae.autointerp.harvest(
        bridge_model, corpus_texts[:20], n_tokens=20 * 64, ctx_len=64, store_dir=tmp_path, progress=False
    )
    reasons = {i: sample_latent(store, i, SamplingConfig(min_activating=10**6)).skipped for i in range(3)}
    assert reasons[0].startswith("dead") and reasons[2].startswith("dead")
    assert reasons[1].startswith("too dense")
    live = next(i for i in range(3, 8) if store.stats["n_fire_examples"][i] > 0 and store.frequency[i] < 0.25)
    assert sample_latent(store, live, SamplingConfig(min_activating=10**6)).skipped.startswith("too rare")


def _prompts(client: ScriptedClient) -> str:
    return hashlib.sha256(repr([(r.messages, r.params()) for r in client.requests]).encode()).hexdigest()


def test_same_seed_gives_byte_identical_prompts(bridge_model, bridge_sae, store, live_latents, tmp_path):
    digests = []
    for seed, folder in [(0, "a"), (0, "b"), (1, "c")]:
        client = ScriptedClient(sensible)
        bridge_sae.autointerp.run(
            bridge_model,
            store=store,
            latents=live_latents[:2],
            llm=client,
            explainer="contrastive",
            scorers=["detection", "fuzzing", "simulation", "intruder"],
            sampling=SamplingConfig(seed=seed),
            seed=seed,
            out_dir=tmp_path / folder,
            progress=False,
            concurrency=2,
        )
        client.requests.sort(key=lambda r: repr(r.messages))  # concurrency reorders requests, not their content
        digests.append(_prompts(client))
    assert digests[0] == digests[1] != digests[2]


def test_parse_failures_are_counted_not_scored(bridge_model, bridge_sae, store, live_latents, tmp_path):
    def flaky(request):
        user = request.messages[-1][1]
        if "Excerpt:" in user and int(hashlib.md5(user.encode()).hexdigest(), 16) % 3 == 0:
            return "I cannot tell."  # neither 0 nor 1: a failed answer
        return sensible(request)

    client = ScriptedClient(flaky)
    result = bridge_sae.score(
        bridge_model,
        store=store,
        explanations={live_latents[0]: "common English words"},
        scorers=["detection"],
        llm=client,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    out = result.records[0]["scores"]["detection"]
    failed = [p for p in out["predictions"] if p["prediction"] is None]
    assert out["n_failed"] == len(failed) > 0
    assert out["metrics"]["n_answered"] == out["n_examples"] - out["n_failed"]
    assert all(p["error"] for p in failed)
    row = result.table.iloc[0]
    expected = len(sample_latent(store, live_latents[0], SMALL).test)
    assert row["n_failed"] == len(failed) and row["n_examples"] == expected == len(out["predictions"])


def test_batched_prompts_with_a_short_last_batch(bridge_model, bridge_sae, store, live_latents, tmp_path):
    client = ScriptedClient(sensible)
    result = bridge_sae.score(
        bridge_model,
        store=store,
        explanations={live_latents[0]: "words"},
        scorers=["detection"],
        scorer_kwargs={"detection": {"examples_per_prompt": 7}},
        llm=client,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    out = result.records[0]["scores"]["detection"]
    n = len(sample_latent(store, live_latents[0], SMALL).test)
    assert n % 7 != 0, "the test needs a short last batch"
    assert out["n_examples"] == n and out["n_failed"] == 0
    assert len(client.requests) == -(-n // 7)


def _detection_requests(store, latent, sampling, fraction=0.2):
    """Detection judgments of one latent: its test examples, plus its control's subset (one-hot scripted
    answers: no calibration request)."""
    from sae_lens_autointerp.controls import control_sample

    s = sample_latent(store, latent, sampling)
    return len(s.test) + len(control_sample(s, fraction, 0).test)


def test_killed_run_resumes_without_redoing_finished_latents(bridge_model, bridge_sae, store, live_latents, tmp_path):
    latents = live_latents[:4]
    scoring = [_detection_requests(store, lat, SMALL) for lat in latents]
    # a block is explained first (4 requests), then scored latent by latent: killed inside the third latent
    killer = ScriptedClient(distinct, fail_after=4 + sum(scoring[:2]) + 3)
    with pytest.raises(KeyboardInterrupt):
        bridge_sae.autointerp.run(
            bridge_model,
            store=store,
            latents=latents,
            llm=killer,
            scorers=["detection"],
            sampling=SMALL,
            out_dir=tmp_path,
            progress=False,
            concurrency=1,
        )
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2
    client = ScriptedClient(distinct)
    result = bridge_sae.autointerp.run(
        bridge_model,
        store=store,
        latents=latents,
        llm=client,
        scorers=["detection"],
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
        concurrency=1,
    )
    assert len(client.requests) == 2 + sum(scoring[2:])  # the two unfinished latents only (this client caches nothing)
    assert [r["latent"] for r in result.records] == latents
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4


def test_budget_stops_new_requests_and_keeps_finished(bridge_model, bridge_sae, store, live_latents, tmp_path):
    client = ScriptedClient(sensible, usage=UsageTracker(budget_tokens=6000))
    result = bridge_sae.autointerp.run(
        bridge_model,
        store=store,
        latents=live_latents,
        llm=client,
        scorers=["detection"],
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
        concurrency=1,
    )
    assert result.stopped and "budget" in result.stopped.lower()
    assert 0 < len(result.records) < len(live_latents)
    assert client.usage.total().total_tokens <= 6000


def test_a_crashing_scorer_does_not_take_the_others_down(
    bridge_model, bridge_sae, store, live_latents, tmp_path, monkeypatch
):
    from sae_lens_autointerp.scorers import FuzzingScorer

    async def boom(self, sample, explanation, ctx):
        raise RuntimeError("scorer bug")

    monkeypatch.setattr(FuzzingScorer, "score", boom)
    result = bridge_sae.score(
        bridge_model,
        store=store,
        explanations={live_latents[0]: "words"},
        scorers=["detection", "fuzzing"],
        llm=ScriptedClient(sensible),
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    scores = result.records[0]["scores"]
    assert scores["detection"]["score"] is not None
    assert "plugin 'builtin', scorer 'fuzzing' crashed: RuntimeError: scorer bug" in scores["fuzzing"]["error"]


def test_table_columns_and_string_explanations(bridge_model, bridge_sae, store, live_latents, tmp_path):
    result = bridge_sae.score(
        bridge_model,
        store=store,
        explanations={live_latents[0]: "words", live_latents[1]: "more words"},
        scorers=["detection", "fuzzing"],
        llm=ScriptedClient(sensible),
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    table = result.table
    assert {"latent", "scorer", "score", "n_examples", "n_failed"} <= set(table.columns)
    assert len(table) == 4 and set(table["latent"]) == set(live_latents[:2])
    assert table["score"].between(0, 1).all()
    assert set(result.summary()["scorer"]) == {"detection", "fuzzing"}
    reloaded = bridge_sae.autointerp.results(tmp_path)
    by = ["latent", "scorer"]
    assert reloaded.table.sort_values(by).reset_index(drop=True).equals(table.sort_values(by).reset_index(drop=True))


class TestBadInput:
    def test_unknown_scorer_fails_before_harvest(self, bridge_model, bridge_sae, corpus_texts, monkeypatch):
        import sys

        monkeypatch.setattr(
            sys.modules["sae_lens_autointerp.harvest"], "harvest", lambda *a, **k: pytest.fail("harvest ran")
        )
        with pytest.raises(UnknownPluginItemError, match=r"unknown scorer 'detecton'\. Available: detection, "):
            bridge_sae.score(bridge_model, corpus_texts, explanations={0: "x"}, scorers=["detecton"])

    def test_latent_out_of_range(self, bridge_model, bridge_sae, corpus_texts):
        with pytest.raises(ConfigError, match=r"latent 999 is out of range: this SAE has d_sae=256"):
            bridge_sae.explain(bridge_model, corpus_texts, latents=[1, 999])

    def test_empty_explanation(self, bridge_model, bridge_sae, corpus_texts):
        with pytest.raises(ConfigError, match="explanation of latent 3 is empty"):
            bridge_sae.score(bridge_model, corpus_texts, explanations={3: "  "})


def test_real_local_llm_end_to_end(bridge_model, bridge_sae, store, live_latents, tmp_path):
    """The embedded llama.cpp model explains and scores for real (quality is not asserted here)."""
    small = SamplingConfig(n_explain=10, n_test_pos=4, n_test_neg=4, min_activating=10)
    fresh = {"cache": tmp_path / "llm-cache"}  # a cold response cache: every request really reaches llama.cpp
    explanations = bridge_sae.explain(
        bridge_model,
        store=store,
        latents=live_latents[:1],
        llm="local",
        sampling=small,
        llm_kwargs=fresh,
        out_dir=tmp_path / "e",
        progress=False,
    )
    ((latent, explanation),) = explanations.items()
    assert explanation.latent == latent and explanation.prompt_id
    # a usable explanation, or a failed one with its reason and both attempts kept (never an empty success)
    if explanation.failed:
        assert explanation.error and explanation.n_attempts == 2 and explanation.raw and not explanation.text
    else:
        assert explanation.text and explanation.parse in ("labelled", "first-sentence")
    result = bridge_sae.score(
        bridge_model,
        store=store,
        explanations={latent: explanation.text or "Python keywords"},
        scorers=["detection"],
        llm="local",
        llm_kwargs=fresh,
        sampling=small,
        out_dir=tmp_path / "s",
        progress=False,
    )
    out = result.records[0]["scores"]["detection"]
    assert out["n_examples"] == len(sample_latent(store, latent, small).test)
    answered = [p for p in out["predictions"] if p["prediction"] is not None]
    assert len(answered) == out["n_examples"] - out["n_failed"]
    assert all(p["prob_source"] == "exact" and 0 <= p["probability"] <= 1 for p in answered)  # llama.cpp logits
    # every example once, plus one content-free request for the calibrated threshold (graded probabilities);
    # no control: a single latent has no other latent's explanation
    assert result.usage["total"]["requests"] == out["n_examples"] + 1
    assert out["metrics"]["calibration_threshold"] is not None and result.records[0]["controls"]["detection"]["error"]
    again = bridge_sae.score(
        bridge_model,
        store=store,
        explanations={latent: explanation.text or "Python keywords"},
        scorers=["detection"],
        llm="local",
        llm_kwargs=fresh,
        sampling=small,
        out_dir=tmp_path / "s2",
        progress=False,
    )
    assert again.usage["total"]["requests"] == 0 and again.usage["total"]["cache_hits"] == out["n_examples"] + 1
    assert again.records[0]["scores"]["detection"]["predictions"] == out["predictions"]


def test_hard_negatives_are_silent_and_harder(bridge_model, bridge_sae, store, live_latents):
    from sae_lens_autointerp.embedders import embed
    from sae_lens_autointerp.negatives import NeighbourNegatives, RandomNegatives, SimilarNegatives

    renderer = Renderer(bridge_model.tokenizer)
    latent = live_latents[0]
    base = sample_latent(store, latent, SMALL)
    positives = list(base.explain + base.test_pos)
    rng = np.random.default_rng(0)
    avoid = activating_spans(store, latent)
    similar, _ = SimilarNegatives(renderer).draw(store, latent, 10, rng, avoid, positives=positives)
    random_, _ = RandomNegatives().draw(store, latent, 10, np.random.default_rng(0), avoid)
    windows = {w.start_id: w for w in store.random_windows()}
    assert len(similar) == 10 == len({e.token_id for e in similar})
    assert all(not np.any(windows[e.token_id].latents == latent) for e in similar)

    def text(e):
        return "".join(renderer.piece(int(t)) for t in e.tokens if t >= 0)

    query = embed([text(e) for e in positives]).mean(0)
    sim = lambda exs: float(np.mean(embed([text(e) for e in exs]) @ query))  # noqa: E731
    assert sim(similar) > sim(random_)

    source = NeighbourNegatives(bridge_sae, bridge_model, n_neighbours=5)
    neigh, _ = source.draw(store, latent, 6, np.random.default_rng(0), avoid)
    assert neigh, "the fixture SAE has neighbours that fire where this latent does not"
    ctx, w = store.settings.ctx_len, store.settings.example_len
    for e in neigh:
        assert e.extra["neighbour"] in source.neighbours(latent)
        seq, pos = divmod(e.token_id, ctx)
        tokens = torch.from_numpy(np.asarray(store.tokens[seq : seq + 1])).long().clamp_min(0)
        _, cache = bridge_model.run_with_cache(tokens, names_filter=["blocks.3.hook_resid_post"], stop_at_layer=4)
        acts = bridge_sae.encode(cache["blocks.3.hook_resid_post"])[0, :, latent]
        lo = max(pos - e.peak_index, 0)
        assert float(acts[lo : pos - e.peak_index + w].max()) <= 0  # verified silent, independently
