"""Planted features: latents that provably fire on known token sets of the embedded SmolLM2."""

from __future__ import annotations

import numpy as np

from sae_lens_autointerp.sampling import SamplingConfig


def test_planted_latents_fire_exactly_on_their_token_sets(planted, planted_store, bridge_model):
    assert planted.names == ["months", "digits", "return"]
    assert len(planted.firing_tokens[0]) == 24 and len(planted.firing_tokens[1]) == 10
    tokens = np.asarray(planted_store.tokens)
    special = set(bridge_model.tokenizer.all_special_ids)
    valid = (tokens >= 0) & ~np.isin(tokens, list(special))
    for latent, ids in planted.firing_tokens.items():
        expected = int((np.isin(tokens, list(ids)) & valid).sum())
        assert expected > 50
        assert int(planted_store.firing_counts[latent]) == expected
        for example in planted_store.top_examples(latent):
            assert int(example.tokens[example.peak_index]) in ids


def test_llm_scorers_on_planted_features_are_scored_and_reported(planted, planted_store, bridge_model, tmp_path):
    """With the embedded 135M LLM, detection / fuzzing separate these features only at noise level: measured
    win rates of the true over a mismatched explanation (AUC of P("1"), benchmarks/planted.py) swing between
    1/3 and 3/3 with small prompt changes, so no win is asserted here (the embedding and surprisal scorers
    carry it: tests/test_paper_scorers.py). What is asserted: every example gets a probability or a counted
    failure, and the AUC is a real number in [0, 1]."""
    sampling = SamplingConfig(n_explain=10, n_test_pos=10, n_test_neg=10)
    aucs = {}
    for kind, explanations in (("true", planted.explanations), ("mismatched", planted.mismatched())):
        result = planted.sae.score(
            bridge_model,
            store=planted_store,
            explanations=explanations,
            scorers=["detection"],
            llm="local",
            llm_kwargs={"cache": tmp_path / "llm-cache"},
            sampling=sampling,
            out_dir=tmp_path / kind,
            progress=False,
        )
        for record in result.records:
            out = record["scores"]["detection"]
            answered = [p for p in out["predictions"] if p["prediction"] is not None]
            assert len(answered) + out["n_failed"] == out["n_examples"] == 20
            assert all(0 <= p["probability"] <= 1 for p in answered)
        aucs[kind] = result.table.set_index("latent")["auc"]
        assert aucs[kind].between(0, 1).all()
    wins = int((aucs["true"] > aucs["mismatched"]).sum())
    print(f"planted detection with the embedded LLM: true explanation wins on {wins}/3 latents by AUC")
