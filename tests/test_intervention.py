"""Intervention scoring as Paulo et al. 2024 (App. G.1) define it, on the embedded SmolLM2 stack with the planted
SAE: prompts cut from test examples at their first activation, steering from the prompt's last token, a
per-token log-probability, and a control that rates the same steered texts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from sae_lens_autointerp.controls import control_sample
from sae_lens_autointerp.harvest.store import new_example
from sae_lens_autointerp.records import Context, Explanation
from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
from sae_lens_autointerp.scorers.intervention import InterventionScorer, first_activation_prompt
from sae_lens_autointerp.steering import NEUTRAL_PROMPTS, Steerer
from sae_lens_autointerp.text import Renderer

SMALL = SamplingConfig(n_explain=10, n_test_pos=10, n_test_neg=10)
#: small enough for two shared CPU cores: 4 prompts, 3 new tokens, no demonstrations before each passage
FAST = {"n_prompts": 4, "max_new_tokens": 3, "few_shot": False}


def _ctx(planted, store, model) -> Context:
    return Context(llm=None, renderer=Renderer(model.tokenizer), store=store, sae=planted.sae, model=model)


def _first_firing(example, ctx_len: int) -> int:
    start = example.token_id - example.peak_index
    return next(j for j, a in enumerate(example.activations) if a > 0 and (start + j) % ctx_len)


def test_first_activation_prompt_skips_the_sequence_start_and_padding():
    acts = np.array([0, 0, 0.0, 0.0, 2.0, 0.0, 3.0], dtype=np.float32)
    toks = np.array([-1, -1, 7, 8, 9, 10, 11], dtype=np.int32)
    # the window starts two tokens before its sequence (global id 64): padding first, then the sequence
    ex = new_example(0, toks, acts, 3.0, token_id=64 + 4, source="top", peak_index=6)
    assert first_activation_prompt(ex, 64) == [7, 8, 9]
    at_start = new_example(0, toks, np.array([0, 0, 5, 0, 0, 0, 0], dtype=np.float32), 5.0, 64, "top", 2)
    assert first_activation_prompt(at_start, 64) is None  # fires only on the sequence's first token


def test_intervention_prompts_end_at_the_first_activation(planted, planted_store, bridge_model):
    ctx = _ctx(planted, planted_store, bridge_model)
    sample = sample_latent(planted_store, 1, SMALL)
    out = asyncio.run(InterventionScorer(**FAST).score(sample, Explanation(1, planted.explanations[1]), ctx))
    assert out.metrics["protocol"] == "paper" and out.n_examples == 4
    by_id = {e.token_id: e for e in sample.test_pos}
    ctx_len = planted_store.settings.ctx_len
    steerer = Steerer(bridge_model, planted.sae)
    assert len({p["token_id"] for p in out.predictions}) == 4
    for p in out.predictions:
        example = by_id[p["token_id"]]  # every prompt comes from a held-out activating test example
        j = _first_firing(example, ctx_len)
        assert example.activations[j] > 0 and not example.activations[:j][example.tokens[:j] >= 0].any()
        want = [int(t) for t in example.tokens[: j + 1] if t >= 0]
        bos = steerer.encode([""])[0]
        want = want[1:] if want[:1] == bos else want  # a window at a sequence's start has the BOS already
        assert p["prompt"] == bridge_model.tokenizer.decode(want)
        # run as a prompt (BOS + the cut), the planted latent fires on its last token only
        row = bos + want
        acts = planted.sae.encode(steerer.activations([row]).float())[0, :, 1]
        assert acts[-1] > 0 and not acts[1:-1].any(), acts


def test_intervention_steers_from_the_prompt_end_only(planted, bridge_model):
    steerer = Steerer(bridge_model, planted.sae)
    rows = steerer.encode(NEUTRAL_PROMPTS[:3])
    clean, steered = steerer.log_probs(rows), steerer.log_probs(rows, 0, 8.0, starts="last")
    for c, s in zip(clean, steered):
        assert torch.equal(c[:-1], s[:-1]) and not torch.allclose(c[-1], s[-1])
    cal = steerer.calibrate(0, rows, target_kl=1.0, tolerance=0.1, starts="last")
    kl_end = np.mean(
        [
            float((c[-1].exp() * (c[-1] - s[-1])).sum())
            for c, s in zip(clean, steerer.log_probs(rows, 0, cal.alpha, starts="last"))
        ]
    )
    assert cal.converged and abs(kl_end - 1.0) <= 0.1  # the KL at the prompts' ends, as the paper measures it


def test_intervention_lift_ignores_a_repeated_explanation(planted, planted_store, bridge_model, monkeypatch):
    """Stand-in scorer LM (not a fault): every explanation token gets the same log-probability for a given
    passage, so the explanation's content drops out and only its length could move the lift. Summed over
    tokens (the old rating) "X. X." scored about twice "X."; per token the two are equal."""

    def same_for_every_token(self, contexts, continuations, batch_size=4):
        return [[-(sum(c) % 997) / 100.0] * len(x) for c, x in zip(contexts, continuations)]

    monkeypatch.setattr(Steerer, "token_logprobs", same_for_every_token)
    ctx = _ctx(planted, planted_store, bridge_model)
    sample = sample_latent(planted_store, 0, SMALL)
    scorer = InterventionScorer(**FAST)
    text = planted.explanations[0].rstrip(".") + "."
    once = asyncio.run(scorer.score(sample, Explanation(0, text), ctx))
    twice = asyncio.run(scorer.score(sample, Explanation(0, f"{text} {text}"), ctx))
    assert once.score != 0  # steering changed the passages, so there is a lift to compare
    assert twice.score == pytest.approx(once.score, rel=1e-9, abs=1e-12)
    assert [p["steered"] for p in twice.predictions] == [p["steered"] for p in once.predictions]


def test_intervention_control_rates_the_same_steered_texts(planted, planted_store, bridge_model):
    ctx = _ctx(planted, planted_store, bridge_model)
    sample = sample_latent(planted_store, 2, SMALL)
    scorer = InterventionScorer(**FAST)
    main = asyncio.run(scorer.score(sample, Explanation(2, planted.explanations[2]), ctx))
    subset = control_sample(sample, 0.2, 0, {p["token_id"] for p in main.predictions})
    ctl = asyncio.run(scorer.score(subset, Explanation(2, planted.mismatched()[2]), ctx))
    assert 0 < ctl.n_examples < main.n_examples and ctl.metrics["alpha"] == main.metrics["alpha"]
    steered = {p["token_id"]: (p["steered"], p["clean"]) for p in main.predictions}
    assert all(steered[p["token_id"]] == (p["steered"], p["clean"]) for p in ctl.predictions)
    assert ctl.metrics["tokens_generated"] == 0  # nothing generated again


def test_intervention_refuses_bad_options():
    from sae_lens_autointerp.errors import ConfigError

    with pytest.raises(ConfigError, match="n_prompts"):
        InterventionScorer(n_prompts=1)
    with pytest.raises(ConfigError, match="prompts="):
        InterventionScorer(prompts="The weather today is")
