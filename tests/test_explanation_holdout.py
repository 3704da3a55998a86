"""The hold-out of every explanation: what its explainer was shown travels with it (``Explanation.shown_spans``),
so ``score()`` in a later call, on this store or another store of the same corpus, never tests on it; an
explanation nobody recorded that for is scored with ``holdout="unknown"``, never presented as held out."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sae_lens_autointerp.report import load
from sae_lens_autointerp.sampling import (
    HELD_OUT,
    UNKNOWN,
    HeldOut,
    SamplingConfig,
    corpus_key,
    sample_latent,
    text_hash,
)

EXPLAIN = SamplingConfig(n_explain=30, n_test_pos=10, n_test_neg=10, seed=0)
SCORE = SamplingConfig(n_explain=10, n_test_pos=30, n_test_neg=30, seed=7)  # another draw than the explainer's


@pytest.fixture(scope="module")
def small_planted_store(planted, bridge_model, tmp_path_factory):
    """A second harvest of the planted corpus (fewer tokens): another store, the same corpus."""
    from sae_lens_autointerp.planted import planted_corpus

    return planted.sae.autointerp.harvest(
        bridge_model,
        planted_corpus(),
        n_tokens=12_000,
        ctx_len=64,
        store_dir=tmp_path_factory.mktemp("planted-small"),
        progress=False,
    )


@pytest.fixture(scope="module")
def explained(planted, planted_store, bridge_model):
    """``explain()`` on the planted store with the no-LLM top-tokens explainer: one call."""
    out = planted.sae.autointerp.explain(
        bridge_model, store=planted_store, explainer="top-tokens", llm=None, sampling=EXPLAIN, progress=False
    )
    assert out and all(not e.failed for e in out.values()), out
    return out


def _score(planted, model, store, explanations, out_dir, sampling=SCORE):
    return planted.sae.score(
        model,
        store=store,
        explanations=explanations,
        scorers=["embedding"],
        llm=None,
        sampling=sampling,
        controls=False,
        out_dir=out_dir,
        progress=False,
    )


def _windows(store, ids):
    """(lo, hi, text hashes) of the stored windows a record names by token id (a firing example's peak, a pool
    window's start: both lie in the window's chunk)."""
    ids = np.asarray(ids, dtype=np.int64)
    lo, hi = store.window_spans(ids)
    return lo, hi, {text_hash(t) for t in store.windows_tokens(store.window_starts(ids), ids)}


def _shares_token(shown, lo, hi) -> bool:
    spans = np.asarray(shown["spans"], dtype=np.int64).reshape(-1, 2)
    a_lo, a_hi = spans[:, 0], spans[:, 0] + spans[:, 1]
    return bool(((a_lo[:, None] < hi[None, :]) & (lo[None, :] < a_hi[:, None])).any())


def _check_held_out(result, store, explanations):
    """Every scored latent: held out, and no test or negative window shares a token or a text with what its
    explainer was shown; returns the pool windows the hold-out left out (positives, negatives)."""
    left_out = [0, 0]
    for r in result.records:
        if r.get("skipped"):
            continue
        shown = explanations[r["latent"]].shown_spans
        assert r["holdout"] == HELD_OUT, r["latent"]
        assert r["explanation"]["shown_spans"] == shown  # the record keeps what the explainer saw
        assert r["examples"]["explain"] == []  # this run's own explainer windows were shown to nobody
        for kind in ("test_pos", "test_neg"):
            lo, hi, texts = _windows(store, r["examples"][kind])
            assert len(lo) > 0, (r["latent"], kind)
            assert not _shares_token(shown, lo, hi), (r["latent"], kind)
            assert not texts & set(shown["texts"]), (r["latent"], kind)
        left_out[0] += r["examples"]["excluded_overlap"]["shown_pos"]
        left_out[1] += r["examples"]["excluded_overlap"]["shown_neg"]
    return left_out


def _would_leak(store, explanations) -> int:
    """Latents whose test, drawn as before this fix (no hold-out of the given explanation), shares a token with
    what the explainer was shown: the leak the hold-out closes (so the checks above can fail)."""
    leaks = 0
    for latent, e in explanations.items():
        s = sample_latent(store, latent, SCORE)
        if s.skipped:
            continue
        lo, hi, _ = _windows(store, [x.token_id for x in s.test_pos])
        leaks += _shares_token(e.shown_spans, lo, hi)
    return leaks


def test_explain_records_the_spans_it_was_shown(explained, planted_store):
    for latent, e in explained.items():
        shown = e.shown_spans
        assert shown["corpus"] == corpus_key(planted_store)
        assert len(shown["spans"]) == len(shown["texts"]) == len(e.examples_shown) > 0
        lo, hi, texts = _windows(planted_store, e.examples_shown)
        assert shown["spans"] == [[int(a), int(b - a)] for a, b in zip(lo, hi)], latent
        assert set(shown["texts"]) == texts, latent


def test_explain_then_score_on_the_same_store_holds_out(planted, explained, planted_store, bridge_model, tmp_path):
    assert _would_leak(planted_store, explained) > 0
    result = _score(planted, bridge_model, planted_store, explained, tmp_path / "same")
    pos, neg = _check_held_out(result, planted_store, explained)
    assert pos > 0 and neg > 0, (pos, neg)
    assert set(result.table["holdout"]) == {HELD_OUT}
    assert set(result.summary()["holdout"]) == {HELD_OUT}


def test_explain_then_score_on_another_store_of_the_corpus(
    planted, explained, planted_store, small_planted_store, bridge_model, tmp_path
):
    store = small_planted_store
    assert store.key != planted_store.key and corpus_key(store) == corpus_key(planted_store)
    assert _would_leak(store, explained) > 0
    result = _score(planted, bridge_model, store, explained, tmp_path / "other-store")
    pos, _ = _check_held_out(result, store, explained)
    assert pos > 0


def test_shown_spans_survive_results_jsonl(planted, explained, planted_store, bridge_model, tmp_path):
    """explain() -> results.jsonl -> load() -> score() in a later call: the hold-out still applies."""
    from sae_lens_autointerp.pipeline import run

    first = run(
        planted.sae,
        bridge_model,
        store=planted_store,
        explainer="top-tokens",
        scorers=(),
        llm=None,
        sampling=EXPLAIN,
        out_dir=str(tmp_path / "explain"),
        progress=False,
    )
    loaded = load(first.path).explanations
    assert loaded and {k: v.shown_spans for k, v in loaded.items()} == {
        k: v.shown_spans for k, v in explained.items() if k in loaded
    }
    result = _score(planted, bridge_model, planted_store, loaded, tmp_path / "later")
    _check_held_out(result, planted_store, loaded)


def test_plain_strings_are_unknown(planted, planted_store, bridge_model, tmp_path):
    result = _score(planted, bridge_model, planted_store, planted.explanations, tmp_path / "given")
    scored = [r for r in result.records if not r.get("skipped")]
    assert scored and all(r["holdout"] == UNKNOWN for r in scored)
    assert all(r["examples"]["explain"] == [] for r in scored)  # not listed as if shown to its explainer
    assert all("shown_pos" not in r["examples"]["excluded_overlap"] for r in scored)
    assert set(result.table["holdout"]) == {UNKNOWN}
    assert list(result.summary()["holdout"]) == [UNKNOWN]
    again = load(result.path)  # from results.jsonl and its index
    assert set(again.table["holdout"]) == {UNKNOWN} and list(again.summary()["holdout"]) == [UNKNOWN]


def test_another_corpus_says_so(planted, explained, planted_store, bridge_model, tmp_path):
    # fault injection: the explanations' record names another corpus (as a store of other texts would)
    elsewhere = {k: replace(e, shown_spans={**e.shown_spans, "corpus": "0" * 16}) for k, e in explained.items()}
    assert HeldOut.of(next(iter(elsewhere.values())).shown_spans, planted_store) is None
    result = _score(planted, bridge_model, planted_store, elsewhere, tmp_path / "elsewhere")
    assert set(result.table["holdout"]) == {"other corpus"}
    assert list(result.summary()["holdout"]) == ["other corpus"]


def test_mixed_summary_counts_each_status(planted, explained, planted_store, bridge_model, tmp_path):
    latents = sorted(explained)
    mixed = {latents[0]: explained[latents[0]].text, **{k: explained[k] for k in latents[1:]}}
    result = _score(planted, bridge_model, planted_store, mixed, tmp_path / "mixed")
    n = sum(1 for r in result.records if not r.get("skipped")) - 1
    assert list(result.summary()["holdout"]) == [f"held out {n}, unknown 1"]


def test_the_site_says_unknown(planted, planted_store, bridge_model, tmp_path):
    result = _score(planted, bridge_model, planted_store, planted.explanations, tmp_path / "given")
    index = result.to_html(tmp_path / "site").read_text()
    n = len(set(result.table["latent"]))
    assert f"not held out: {n} unknown" in index and "<th>holdout</th>" in index
    latent = int(result.table["latent"].iloc[0])
    page = next((tmp_path / "site").rglob(f"*{latent}.html")).read_text()
    assert "hold-out unknown" in page
