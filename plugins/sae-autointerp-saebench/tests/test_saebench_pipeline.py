"""The "saebench" explainer and scorer through sae.explain / sae.score, resolved by name from the registry
(this module never imports the plugin to use it)."""

from __future__ import annotations

import re

import pytest
from saebench_fake_llm import FakeClient

SMALL = {"n_explain": 10, "n_test_pos": 4, "n_test_neg": 4}


def numbered(user: str) -> int:
    return len(re.findall(r"^\d+\. ", user, flags=re.M))


def test_registered_by_entry_point():
    from sae_lens_autointerp import get_registry

    registry = get_registry()
    assert registry.get("scorers", "saebench").plugin == "saebench"
    assert registry.get("explainers", "saebench").plugin == "saebench"
    info = {p.name: p for p in registry.plugins()}["saebench"]
    assert registry.get("scorers", "saebench-clean").plugin == "saebench"
    both = ["saebench", "saebench-clean"]
    assert info.provides == {"scorers": both, "explainers": both} and info.error is None


def test_explainer_then_scorer(model, sae, store, latents, tmp_path):
    def answer(system: str, user: str) -> str:
        if "summarize in a single sentence" in system:
            return "This neuron activates on Python keywords."
        return "None"

    client = FakeClient(answer)
    result = sae.autointerp.run(
        model,
        store=store,
        latents=latents[:2],
        explainer="saebench-clean",
        scorers=["saebench-clean"],
        llm=client,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    explain_prompts = [r for r in client.requests if r.stage == "explain"]
    assert len(explain_prompts) == 2 and all(numbered(r.messages[-1][1]) == 15 for r in explain_prompts)
    assert all("<<" in r.messages[-1][1] for r in explain_prompts)
    assert all(r.max_tokens == 30 for r in explain_prompts)
    score_prompts = [r for r in client.requests if r.stage == "saebench-clean"]
    assert all(r.temperature == 0.0 for r in client.requests)
    assert all(numbered(r.messages[-1][1]) == 14 and "<<" not in r.messages[-1][1] for r in score_prompts)
    assert all("this neuron fires on Python keywords." in r.messages[-1][1] for r in score_prompts)
    settings = store.settings
    for record in result.records:
        explanation = record["explanation"]
        assert explanation["text"] == "Python keywords" and len(explanation["examples_shown"]) == 15
        out = record["scores"]["saebench-clean"]
        shown = {
            (t // settings.ctx_len, t % settings.ctx_len // settings.example_len) for t in explanation["examples_shown"]
        }
        tested = {
            (p["token_id"] // settings.ctx_len, p["token_id"] % settings.ctx_len // settings.example_len)
            for p in out["predictions"]
            if p["kind"] != "random"
        }
        assert len(tested) == 4 and not shown & tested
        # "None" is the trivial answer: 10/14 accuracy, chance-level balanced accuracy.
        assert out["score"] == pytest.approx(10 / 14) == out["metrics"]["trivial_none_accuracy"]
        assert out["metrics"]["balanced_accuracy"] == 0.5 and out["metrics"]["saebench_score"] == out["score"]
        assert out["metrics"]["chance_accuracy"] == pytest.approx(10 / 14)
        assert out["n_examples"] == 14 and out["n_failed"] == 0
    # the table shows SAEBench's own headline: accuracy, with its Wilson interval and the answer-"None" chance
    # (not balanced accuracy's 0.5-0.5 interval, which would not even contain the score)
    for row in result.table.itertuples():
        assert row.scorer == "saebench-clean" and row.metric == "accuracy" and row.chance == pytest.approx(10 / 14)
        assert row.score == pytest.approx(10 / 14) and row.low < row.score < row.high and row.high - row.low > 0.3
    summary = result.summary().set_index("scorer").loc["saebench-clean"]
    assert summary["chance"] == pytest.approx(10 / 14) and summary["n_scored"] == 2


def test_perfect_answers_and_balanced_headline(model, sae, store, latents, tmp_path):
    latent = latents[3]
    first = sae.score(
        model,
        store=store,
        explanations={latent: "words"},
        scorers=["saebench"],
        llm=FakeClient(lambda s, u: "None"),
        sampling=SMALL,
        out_dir=tmp_path / "a",
        progress=False,
    )
    truth = [p["index"] for p in first.records[0]["scores"]["saebench"]["predictions"] if p["label"]]
    perfect = FakeClient(lambda s, u: ", ".join(map(str, truth)))
    result = sae.score(
        model,
        store=store,
        explanations={latent: "words"},
        scorers=["saebench"],
        llm=perfect,
        scorer_kwargs={"saebench": {"headline": "balanced_accuracy"}},
        sampling=SMALL,
        out_dir=tmp_path / "b",
        progress=False,
    )
    out = result.records[0]["scores"]["saebench"]
    assert out["metrics"]["accuracy"] == 1.0 and out["score"] == out["metrics"]["balanced_accuracy"] == 1.0
    assert result.table.iloc[0]["score"] == 1.0


def test_unparseable_answers_are_counted_not_scored(model, sae, store, latents, tmp_path):
    result = sae.score(
        model,
        store=store,
        explanations={latents[4]: "words"},
        scorers=["saebench", "detection"],
        llm=FakeClient(lambda s, u: "The neuron fires on excerpts two and five." if "comma-separated" in s else "1"),
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    out = result.records[0]["scores"]["saebench"]
    assert out["score"] is None and out["n_failed"] == out["n_examples"] == 14
    assert all(p["prediction"] is None and "unparseable" in p["error"] for p in out["predictions"])
    assert result.records[0]["scores"]["detection"]["score"] is not None  # the built-in in the same run


def test_summary_like_saebench(model, sae, store, latents, tmp_path):
    from sae_autointerp_saebench import saebench_summary

    result = sae.score(
        model,
        store=store,
        explanations={lat: "words" for lat in latents[:3]},
        scorers=["saebench"],
        llm=FakeClient(lambda s, u: "None"),
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    summary = saebench_summary(result)
    assert summary["n_latents"] == 3 and summary["n_failed_latents"] == 0
    assert summary["autointerp_score"] == pytest.approx(10 / 14) == summary["trivial_none_accuracy"]
    assert summary["autointerp_std_dev"] == pytest.approx(0.0) and summary["balanced_accuracy"] == 0.5


def test_real_local_llm(model, sae, store, latents, tmp_path):
    """The embedded llama.cpp model explains and scores with the SAEBench prompts (quality not asserted)."""
    result = sae.autointerp.run(
        model,
        store=store,
        latents=latents[:1],
        explainer="saebench",
        scorers=["saebench"],
        llm="local",
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    record = result.records[0]
    assert record["explanation"]["explainer"] == "saebench"
    out = record["scores"]["saebench"]
    print(record["explanation"], {k: out["metrics"].get(k) for k in ("answer", "accuracy", "balanced_accuracy")})
    if not record["explanation"]["failed"]:
        assert out["n_examples"] == 14 and out["n_failed"] in (0, 14)
        assert out["n_failed"] == 14 or 0 <= out["score"] <= 1
    assert record["explanation"]["raw"]  # the model's answer is kept (it may come from the response cache)
