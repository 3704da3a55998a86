"""The "saebench" (comparable) and "saebench-clean" protocols through the pipeline: what a perfect answer
scores under each, SAEBench's temperature, and the sampling that scores every latent SAEBench scores."""

from __future__ import annotations

import re

import pytest
from saebench_fake_llm import FakeClient

from sae_autointerp_saebench import SAEBENCH_SAMPLING, SAEBenchConfig, select_saebench
from sae_lens_autointerp.errors import ConfigError

SMALL = {"n_explain": 10, "n_test_pos": 4, "n_test_neg": 4}


def answer_key(model, sae, store, latent, scorer, tmp_path, sampling=SMALL):
    """Score ``latent`` with a FAKE LLM that names exactly the windows where the latent really fires."""
    probe = sae.score(
        model,
        store=store,
        explanations={latent: "words"},
        scorers=[scorer],
        llm=FakeClient(lambda s, u: "None"),
        sampling=sampling,
        out_dir=tmp_path / f"{scorer}-probe",
        progress=False,
    )
    truth = [p["index"] for p in probe.records[0]["scores"][scorer]["predictions"] if p["fires"]]
    result = sae.score(
        model,
        store=store,
        explanations={latent: "words"},
        scorers=[scorer],
        llm=FakeClient(lambda s, u: ", ".join(map(str, truth)) or "None"),
        sampling=sampling,
        out_dir=tmp_path / scorer,
        progress=False,
    )
    return result.records[0]["scores"][scorer]


def test_perfect_answer_under_each_protocol(model, sae, store, latents, tmp_path):
    """SAEBench labels its random windows negative unchecked: where the latent fires on some, the perfect
    answer loses them; the clean protocol's negatives are silent, so the perfect answer scores 1."""
    cfg = SAEBenchConfig()
    firing = {
        lat: sum(b.fires for b in select_saebench(store, model, sae, lat, 0, cfg).scoring if b.kind == "random")
        for lat in latents
    }
    latent = max(firing, key=lambda lat: (firing[lat], -lat))
    assert firing[latent] >= 1  # the premise: one of these latents fires on a "negative"
    out = answer_key(model, sae, store, latent, "saebench", tmp_path)
    assert out["metrics"]["n_random_firing"] == firing[latent] and out["n_failed"] == 0
    assert out["score"] == pytest.approx(1 - firing[latent] / 14) == out["metrics"]["ceiling_accuracy"]
    clean = answer_key(model, sae, store, latent, "saebench-clean", tmp_path)
    assert clean["score"] == 1.0 == clean["metrics"]["ceiling_accuracy"] and clean["metrics"]["n_random_firing"] == 0


def test_saebench_run_uses_saebench_windows_and_temperature(model, sae, store, latents, tmp_path):
    client = FakeClient(lambda s, u: "This neuron activates on words." if "summarize" in s else "1, 2")
    latent = latents[5]
    result = sae.autointerp.run(
        model,
        store=store,
        latents=[latent],
        explainer="saebench",
        scorers=["saebench"],
        llm=client,
        sampling=SMALL,
        out_dir=tmp_path,
        progress=False,
    )
    assert [r.temperature for r in client.requests] == [1.0, 1.0]  # SAEBench leaves OpenAI's default
    bench = select_saebench(store, model, sae, latent, 0, SAEBenchConfig())
    record = result.records[0]
    assert record["explanation"]["examples_shown"] == [b.token_id for b in bench.generation]
    out = record["scores"]["saebench"]
    assert sorted(p["token_id"] for p in out["predictions"]) == sorted(b.token_id for b in bench.scoring)
    assert out["metrics"]["selection"] == "saebench" and out["metrics"]["n_scoring_near_shown"] == 0
    prompt = client.requests[0].messages[-1][1]
    assert len(re.findall(r"^\d+\. ", prompt, flags=re.M)) == 15


def test_saebench_sampling_scores_dense_and_rare_latents(model, sae, store, tmp_path):
    freq, counts = store.frequency, store.stats["n_fire_examples"]
    dense = next(i for i in range(store.d_sae) if float(freq[i]) > 0.25)
    rare = next(i for i in range(store.d_sae) if 0 < int(counts[i]) < 10)
    kwargs = dict(store=store, llm=FakeClient(lambda s, u: "None"), progress=False)
    explanations = {dense: "everything", rare: "something rare"}
    clean = sae.score(
        model, explanations=explanations, scorers=["saebench-clean"], sampling=SMALL, out_dir=tmp_path / "a", **kwargs
    )
    assert all(r.get("skipped") for r in clean.records)  # the core's density / rarity filters
    # the user's own filter wins over the protocol's (with a warning)
    mine = sae.score(
        model,
        explanations=explanations,
        scorers=["saebench"],
        sampling={**SMALL, "max_frequency": 0.2},
        out_dir=tmp_path / "c",
        **kwargs,
    )
    assert next(r for r in mine.records if r["latent"] == dense).get("skipped")
    # the saebench protocol switches the filters off itself (latent_filters); passing them is the same run
    runs = [
        sae.score(
            model, explanations=explanations, scorers=["saebench"], sampling=sampling, out_dir=tmp_path / n, **kwargs
        )
        for n, sampling in (("b", SMALL), ("d", {**SMALL, **SAEBENCH_SAMPLING}))
    ]
    assert runs[0].run_key == runs[1].run_key
    both = runs[0]
    outs = {r["latent"]: r["scores"]["saebench"] for r in both.records}
    assert set(outs) == {dense, rare} and outs[dense]["n_examples"] == 14 and outs[dense]["score"] is not None
    # the rare latent reaches the scorer, which skips it for SAEBench's own reason (nothing below its top 12)
    why = select_saebench(store, model, sae, rare, 0, SAEBenchConfig()).skipped
    assert why is not None and outs[rare]["error"] == f"SAEBench skips this latent: {why}"
    assert outs[rare]["score"] is None and outs[rare]["n_examples"] == 0


def test_saebench_selection_needs_the_model(sae, store, latents):
    with pytest.raises(ConfigError, match="saebench-clean"):
        select_saebench(store, None, sae, latents[0], 0, SAEBenchConfig())
    with pytest.raises(ConfigError, match="selection='saebench'"):
        select_saebench(store, None, sae, latents[0], 0, SAEBenchConfig(selection="clean"))
