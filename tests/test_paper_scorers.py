"""The paper's cheap scorers (embedding, surprisal, intervention) and the output-side explainers, on the
embedded SmolLM2 stack: planted features for true-vs-mismatched explanations, exact steering, and KL
calibration."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
from sae_lens_autointerp.steering import NEUTRAL_PROMPTS, Steerer, model_name, promoted_tokens

SMALL = SamplingConfig(n_explain=10, n_test_pos=10, n_test_neg=10)


@pytest.fixture(scope="module")
def embedded_sae():
    import sae_lens_autointerp as sai

    return sai.embedded.load_sae()


def _true_vs_mismatched(planted, store, model, scorer, tmp_path, scorer_kwargs=None):
    scores, records = {}, {}
    for kind, explanations in (("true", planted.explanations), ("mismatched", planted.mismatched())):
        result = planted.sae.score(
            model,
            store=store,
            explanations=explanations,
            scorers=[scorer],
            llm=None,
            sampling=SMALL,
            scorer_kwargs={scorer: scorer_kwargs or {}},
            out_dir=tmp_path / kind,
            progress=False,
        )
        table = result.table.set_index("latent")
        assert table["error"].isna().all(), table["error"].tolist()
        scores[kind] = table["score"]
        records[kind] = {r["latent"]: r["scores"][scorer] for r in result.records}
    wins = int((scores["true"] > scores["mismatched"]).sum())
    print(f"{scorer}: true {scores['true'].round(3).tolist()} vs mismatched {scores['mismatched'].round(3).tolist()}")
    return wins, scores, records


def _check_auc_output(out):
    m = out["metrics"]
    assert out["score"] == m["auc"] and m["chance_auc"] == 0.5
    assert m["auc_low"] <= m["auc"] <= m["auc_high"]
    assert m["n_pos"] == 10 and m["n_neg"] == 10 and out["n_examples"] == 20 and out["n_failed"] == 0
    assert m["tokens_processed"] > 0 and m["seconds"] > 0
    assert len(out["predictions"]) == 20


def test_embedding_true_explanation_beats_mismatched(planted, planted_store, bridge_model, tmp_path):
    wins, scores, records = _true_vs_mismatched(planted, planted_store, bridge_model, "embedding", tmp_path)
    assert wins >= 2, f"true explanation won on {wins}/3 latents: {scores}"
    for out in records["true"].values():
        _check_auc_output(out)
        assert {"similarity", "label", "token_id"} <= set(out["predictions"][0])


def test_surprisal_true_explanation_beats_mismatched(planted, planted_store, bridge_model, tmp_path):
    wins, scores, records = _true_vs_mismatched(
        planted, planted_store, bridge_model, "surprisal", tmp_path, {"max_example_tokens": 48}
    )
    assert wins >= 2, f"true explanation won on {wins}/3 latents: {scores}"
    for out in records["true"].values():
        _check_auc_output(out)
        assert out["metrics"]["tokens_without_cache"] > out["metrics"]["tokens_processed"]


def test_surprisal_kv_cache_reuse_is_exact():
    """Losses computed on the reused prefix cache equal those of one plain forward over prefix + example."""
    from sae_lens_autointerp.scorers.surprisal import (
        SurprisalScorer,
        _piece_ids,
        _run_prefix,
        example_losses,
        load_causal_lm,
    )

    lm = load_causal_lm()
    prefix = _run_prefix(lm, SurprisalScorer.prefix_text("names of months"))
    texts = ["The meeting was held on 3 March.", "def f(x):\n    return x", "ok"]
    cached, _ = example_losses(lm, prefix, texts, batch_size=2)
    for text, loss in zip(texts, cached):
        piece = _piece_ids(lm, " " + text.strip())
        ids = torch.tensor([prefix.ids + piece])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
        p = len(prefix.ids)
        direct = -logp[torch.arange(p - 1, p + len(piece) - 1), torch.tensor(piece)].mean()
        assert loss == pytest.approx(float(direct), abs=1e-4)


@pytest.mark.parametrize("which", ["bridge", "hooked", "transcoder"])
def test_steering_changes_only_the_chosen_latent(which, bridge_model, embedded_sae, hooked_model):
    """Steered minus clean activation at the hook is alpha * W_dec[i] at every steered position (none at BOS),
    i.e. the SAE reconstruction with latent i shifted by alpha, plus the unchanged error term."""
    from sae_factories import assert_steered_by_alpha_w_dec, make_sae

    if which == "bridge":
        model, sae, latent = bridge_model, embedded_sae, 7
    elif which == "hooked":
        model, sae, latent = hooked_model, make_sae(64, 32, hook="blocks.1.hook_resid_post", seed=3), 5
    else:  # a transcoder writes to its output hook
        from sae_factories import make_transcoder

        model, latent = hooked_model, 2
        sae = make_transcoder(64, 16, "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")
    steerer = Steerer(model, sae)
    rows = steerer.encode(NEUTRAL_PROMPTS[:3])
    alpha = 3.5
    clean, steered = assert_steered_by_alpha_w_dec(steerer, sae, rows, latent, alpha)
    if which != "transcoder":
        # The same statement in SAE terms: decode(f + alpha e_i) + (x - decode(f)), with f = encode(x).
        x = clean[:, 1:]
        with torch.no_grad():
            f = sae.encode(x)
            shifted = f.clone()
            shifted[..., latent] += alpha
            expected = sae.decode(shifted) + (x - sae.decode(f))
        for i, r in enumerate(rows):
            torch.testing.assert_close(steered[i, 1 : len(r)], expected[i, : len(r) - 1], atol=1e-3, rtol=1e-4)
    # and the steering reaches the output
    lp_clean, lp_steered = steerer.log_probs(rows), steerer.log_probs(rows, latent, alpha)
    assert torch.equal(lp_clean[0][0], lp_steered[0][0]) and not torch.allclose(lp_clean[0][1:], lp_steered[0][1:])


def test_calibrated_alpha_reaches_target_kl(bridge_model, embedded_sae):
    steerer = Steerer(bridge_model, embedded_sae)
    rows = steerer.encode(NEUTRAL_PROMPTS)
    clean = steerer.log_probs(rows)
    for latent, target in ((5, 1.0), (11, 0.5)):
        cal = steerer.calibrate(latent, rows, target_kl=target, tolerance=0.1, clean=clean)
        assert cal.converged, cal
        assert abs(cal.kl - target) <= 0.1 and cal.n_evals <= 24
        # independently re-measured at the returned alpha
        kl = steerer.mean_kl(clean, steerer.log_probs(rows, latent, cal.alpha))
        assert abs(kl - target) <= 0.1, (cal, kl)
        assert cal.alpha > 0 and steerer.mean_kl(clean, steerer.log_probs(rows, latent, cal.alpha / 4)) < kl


def test_intervention_scorer_schema_and_usage(planted, planted_store, bridge_model):
    from sae_lens_autointerp.llm import UsageTracker
    from sae_lens_autointerp.records import Context, Explanation
    from sae_lens_autointerp.scorers.intervention import InterventionScorer
    from sae_lens_autointerp.text import Renderer

    class UsageOnly:  # the scorer needs no LLM; a run's client only lends it its usage tracker
        name = "none"
        usage = UsageTracker()

    ctx = Context(
        llm=UsageOnly(),
        renderer=Renderer(bridge_model.tokenizer),
        store=planted_store,
        sae=planted.sae,
        model=bridge_model,
    )
    scorer = InterventionScorer(prompts=NEUTRAL_PROMPTS[:4], max_new_tokens=6)
    sample = sample_latent(planted_store, 0, SMALL)
    out = asyncio.run(scorer.score(sample, Explanation(0, planted.explanations[0]), ctx))
    m = out.metrics
    assert out.n_examples == 4 and len(out.predictions) == 4 and math.isfinite(out.score)
    assert m["mean_diff"] == out.score and m["chance_mean_diff"] == 0.0
    assert m["mean_diff_low"] <= out.score <= m["mean_diff_high"] and m["mean_diff_se"] > 0
    assert m["calibrated"] and abs(m["kl"] - 1.0) <= 0.1
    assert all(p["steered"] != p["clean"] for p in out.predictions)
    assert out.predictions[0]["diff"] == pytest.approx(
        out.predictions[0]["logp_steered"] - out.predictions[0]["logp_clean"]
    )
    usage = UsageOnly.usage.by_latent()[("intervention", 0)]
    # the first latent also pays for the clean continuations (4 prompts x 6 tokens), later ones reuse them
    assert usage.prompt_tokens == m["tokens_processed"] and usage.completion_tokens == m["tokens_generated"] == 48
    assert set(UsageOnly.usage.by_model()) == {m["subject_model"], m["scorer_model"]}
    again = asyncio.run(
        scorer.score(sample_latent(planted_store, 2, SMALL), Explanation(2, planted.explanations[2]), ctx)
    )
    assert again.metrics["tokens_generated"] == UsageOnly.usage.by_latent()[("intervention", 2)].completion_tokens == 24
    assert [p["clean"] for p in again.predictions] == [p["clean"] for p in out.predictions]


def test_output_side_explainers(planted, planted_store, bridge_model):
    from sae_lens_autointerp.plugin import get_registry
    from sae_lens_autointerp.records import Context
    from sae_lens_autointerp.text import Renderer
    from scripted_llm import ScriptedClient

    # The planted decoders point at their token sets' embeddings; SmolLM2 ties W_U to W_E.
    for latent in (0, 1):
        top = [t for t, _ in promoted_tokens(bridge_model, planted.sae, latent, 10)]
        assert set(top) <= planted.firing_tokens[latent]

    renderer = Renderer(bridge_model.tokenizer)
    sample = sample_latent(planted_store, 0, SMALL)
    offline = get_registry().create("explainers", "output", steer=False)
    ctx = Context(llm=None, renderer=renderer, store=planted_store, sae=planted.sae, model=bridge_model)
    expl = asyncio.run(offline.explain(sample, ctx))
    assert expl.explainer == "output" and not expl.failed and expl.text.startswith("promotes the tokens")
    assert sum(m in expl.text for m in ("January", "March", "May", "June", "July", "August")) >= 3

    client = ScriptedClient(lambda request: "Explanation: months of the year")
    with_examples = get_registry().create("explainers", "output+examples")
    ctx = Context(llm=client, renderer=renderer, store=planted_store, sae=planted.sae, model=bridge_model)
    expl = asyncio.run(with_examples.explain(sample, ctx))
    assert expl.text == "months of the year" and expl.explainer == "output+examples"
    assert expl.examples_shown == tuple(e.token_id for e in sample.explain)
    (request,) = client.requests
    user = request.messages[-1][1]
    assert "' May'" in user and "probability rises most" in user and "<<" in user
    assert {stage for stage, lat in client.usage.by_latent() if lat == 0} == {"explain"}
    models = client.usage.by_model()
    assert len(models) == 2 and models[model_name(bridge_model)].prompt_tokens > 0  # the LLM and the steered model
