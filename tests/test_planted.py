"""Planted features: latents that provably fire on known token sets of the embedded SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

from sae_lens_autointerp.planted import build_planted_sae, planted_corpus
from sae_lens_autointerp.sampling import SamplingConfig


@pytest.fixture(scope="module")
def planted(bridge_model):
    return build_planted_sae(bridge_model)


@pytest.fixture(scope="module")
def planted_store(planted, bridge_model, tmp_path_factory):
    return planted.sae.autointerp.harvest(bridge_model, planted_corpus(), n_tokens=20_000, ctx_len=64,
                                          store_dir=tmp_path_factory.mktemp("planted"), progress=False)


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


def test_true_explanation_beats_mismatched(planted, planted_store, bridge_model, tmp_path):
    """With the embedded 135M LLM, detection ranks these features' examples better under the true explanation
    (AUC of P("1")). Its balanced accuracy stays at 0.5: the tiny model says "1" to almost everything, so the
    0.5 threshold is uninformative; benchmarks/planted.py reports every scorer (fuzzing wins 2/3 by AUC,
    simulation fails to parse on a 135M model)."""
    sampling = SamplingConfig(n_explain=10, n_test_pos=10, n_test_neg=10)
    scores = {}
    for kind, explanations in (("true", planted.explanations), ("mismatched", planted.mismatched())):
        result = planted.sae.score(bridge_model, store=planted_store, explanations=explanations, scorers=["detection"],
                                   llm="local", llm_kwargs={"cache": tmp_path / "llm-cache"}, sampling=sampling,
                                   out_dir=tmp_path / kind, progress=False)
        scores[kind] = result.table.set_index("latent")["auc"]
    wins = int((scores["true"] > scores["mismatched"]).sum())
    assert wins >= 2, f"true explanation won on {wins}/3 latents: {scores}"
