"""Output-side analysis by ablation, on the real embedded model and SAE: ablating a latent that is zero changes
nothing, the effect equals a hand-written hooked forward pass (``x - f_i(x) * W_dec[i]``), a constructed
latent whose decoder direction is a token's unembedding direction promotes that token, and the output-side
explainer shows the ablated tokens."""

from __future__ import annotations

import ast
import asyncio
import copy

import pytest
import torch

import sae_lens_autointerp as sai
from sae_factories import make_sae
from sae_lens_autointerp.ablation import Ablator, ablation_effects, contexts_of
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.explainers.output_side import ABLATION_PROMOTED, OutputExplainer
from sae_lens_autointerp.harvest.model import ModelAdapter, model_lock
from sae_lens_autointerp.records import Context
from sae_lens_autointerp.sampling import SamplingConfig, sample_latent
from sae_lens_autointerp.spans import SpanSet
from sae_lens_autointerp.subjects import as_subject
from sae_lens_autointerp.text import Renderer


@pytest.fixture(scope="module")
def store(bridge_model, embedded_sae, tmp_path_factory):
    docs = sai.embedded.load_corpus()[:20]
    return embedded_sae.autointerp.harvest(
        bridge_model, docs, n_tokens=4096, store_dir=tmp_path_factory.mktemp("a"), progress=False
    )


@pytest.fixture(scope="module")
def latent(store):
    """A latent that fires often and whose two top contexts are short (cheap forward passes), but not trivial."""
    st, ctx = store.stats, store.settings.ctx_len
    order = st["top_vals"].argsort(dim=1, descending=True)[:, :2]
    longest = (st["top_ids"].gather(1, order) % ctx).max(dim=1).values
    ok = (st["n_fire_examples"] >= 20) & (longest >= 8)
    return int(torch.where(ok, longest, ctx).argmin())


def _latent_acts(model, sae, row):
    adapter = ModelAdapter(model, sae)
    with torch.no_grad():
        return sae.encode(adapter.capture(torch.tensor([row])))[0]  # [seq, d_sae]


def test_zero_activation_changes_nothing(bridge_model, embedded_sae, store, latent):
    rows, peaks, _ = contexts_of(store, latent, 1)
    row, peak = rows[0], peaks[0]
    acts = _latent_acts(bridge_model, embedded_sae, row)[1:]  # position 0 (BOS) is never ablated
    silent = int(torch.nonzero(acts.abs().sum(0) == 0)[0])
    quiet_at_peak = int(torch.nonzero((acts[peak - 1] == 0) & (acts.abs().sum(0) > 0))[0])
    ablator = Ablator(bridge_model, embedded_sae)
    effect, activation, kl = ablator.run([row], [peak], silent)
    assert torch.equal(effect, torch.zeros_like(effect)) and activation == [0.0] and kl == [0.0]
    # zero at the peak, non-zero earlier: nothing changes when only the peak is ablated
    effect, _, _ = ablator.run([row], [peak], quiet_at_peak, positions="peak")
    assert torch.equal(effect, torch.zeros_like(effect))
    effect, _, _ = ablator.run([row], [peak], latent, positions="peak")  # the latent fires at its own peak
    assert effect.abs().max() > 0.01
    assert ablator.tokens_processed == 6 * len(row)


def test_effect_equals_a_handwritten_hooked_forward(bridge_model, embedded_sae, store, latent):
    sae, model = embedded_sae, bridge_model
    result = ablation_effects(sae, model, store, latent, k=5, n_contexts=2)
    assert result.n_contexts == 2 and len(result.promoted) == len(result.suppressed) == 5
    tops = store.top_examples(latent)[:2]
    torch.testing.assert_close(
        torch.tensor(result.activations), torch.tensor([e.value for e in tops]), rtol=1e-3, atol=1e-3
    )

    w = sae.W_dec[latent].detach()
    if sae.cfg.rescale_acts_by_decoder_norm:  # the TopK SAE reads activations along the unit direction
        w = w / w.norm()
    hook = sae.cfg.metadata.hook_name
    point = hook if hook in model.hook_dict else model._resolve_hook_name(hook)
    special = torch.tensor(ModelAdapter(model, sae).special_token_ids())
    rows = [store.tokens[e.token_id // store.settings.ctx_len].tolist() for e in tops]
    peaks = [e.token_id % store.settings.ctx_len for e in tops]
    width = max(peaks) + 1
    ids = torch.tensor([r[:width] for r in rows])  # one batch; what follows a peak cannot change it (causal)
    ids[ids < 0] = special[0]
    keep = ~torch.isin(ids, special)

    def remove(act, hook):
        f = sae.encode(act)[..., latent]
        return act - (f * keep).unsqueeze(-1) * w

    with torch.no_grad(), model_lock(model):
        clean = torch.log_softmax(model(ids, return_type="logits").float(), -1)
        with model.hooks(fwd_hooks=[(point, remove)]):
            ablated = torch.log_softmax(model(ids, return_type="logits").float(), -1)
    at_peak = torch.arange(len(peaks)), torch.tensor(peaks)
    mean = (clean[at_peak] - ablated[at_peak]).mean(0)
    got = torch.tensor([v for _, _, v in result.promoted])
    torch.testing.assert_close(got, mean[[t for t, _, _ in result.promoted]], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(got, mean.topk(5).values, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(
        torch.tensor([v for _, _, v in result.suppressed]), -(-mean).topk(5).values, atol=2e-4, rtol=1e-4
    )
    assert result.kl > 0 and result.direct and result.direct_error is None
    assert result.to_dict()["promoted"][0][0] == result.promoted[0][0]


def test_unembedding_direction_latent_promotes_its_token(bridge_model, tmp_path):
    """An SAE on the last residual stream whose latent 0 is on at every token with decoder direction
    ``W_U[:, t] / gamma`` (gamma: the final norm's weight) for the token ``t`` with the largest unembedding:
    removing it lowers ``t`` most; with the decoder negated, ``t`` is the most suppressed."""
    model = bridge_model
    w_u = model.W_U.detach().float()
    gamma = as_subject(model).final_norm_weight()
    target = int(w_u.norm(dim=0).argmax())
    direction = w_u[:, target] / (gamma if gamma is not None else 1.0)
    sae = make_sae(576, 2, hook="blocks.29.hook_resid_post", context_size=32)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.copy_(torch.tensor([1.0, 0.0]))  # latent 0: 1.0 everywhere; latent 1: dead
        sae.b_dec.zero_()
        sae.W_dec.zero_()
        sae.W_dec[0] = 40.0 * direction / direction.norm()
    store = sae.autointerp.harvest(
        model,
        ["The quick brown fox jumps over the lazy dog. " * 6],
        n_tokens=64,
        ctx_len=32,
        store_dir=tmp_path / "s",
        progress=False,
    )
    result = ablation_effects(sae, model, store, 0, k=3, n_contexts=2)
    assert result.promoted[0][0] == target and result.promoted[0][2] > 1.0
    assert result.direct[0][0] == target
    assert result.activations == [1.0, 1.0]
    negated = copy.deepcopy(sae)
    with torch.no_grad():
        negated.W_dec[0] *= -1
    flipped = ablation_effects(negated, model, store, 0, k=3, n_contexts=2)
    assert flipped.suppressed[0][0] == target and flipped.suppressed[0][2] < -1.0
    empty = ablation_effects(sae, model, store, 1, k=3)  # a dead latent has no context
    assert empty.n_contexts == 0 and empty.promoted == []
    with pytest.raises(ConfigError, match="measure"):
        ablation_effects(sae, model, store, 0, measure="prob")


def test_output_explainer_shows_ablation_evidence(bridge_model, embedded_sae, store, latent):
    explainer = OutputExplainer(steer=False, ablation=True, n_ablation_contexts=2, n_tokens=4)
    assert explainer.prompt_id != OutputExplainer(steer=False).prompt_id
    ctx = Context(
        llm=None, renderer=Renderer(bridge_model.tokenizer), store=store, seed=0, sae=embedded_sae, model=bridge_model
    )
    sample = sample_latent(store, latent, SamplingConfig(n_explain=4, n_test_pos=2, n_test_neg=2, n_quantiles=2))
    evidence = explainer.evidence(latent, ctx)
    assert evidence["ablation_contexts"] == 2 and len(evidence["ablation_promoted"]) == 4
    user = explainer.build_messages(sample, ctx, evidence)[-1]["content"]
    assert ABLATION_PROMOTED in user and repr(evidence["ablation_promoted"][0][1]) in user
    no_direct = {**evidence, "promoted": []}
    assert evidence["ablation_promoted"][0][1].strip() in OutputExplainer.template(no_direct)


def test_ablation_contexts_skip_the_test_windows(bridge_model, embedded_sae, store, latent):
    """A context runs from its sequence's start to the peak; one that shares a token with a test window (positive
    or negative) is skipped and counted, and the next one taken."""
    ctx_len = store.settings.ctx_len
    sample = sample_latent(store, latent, SamplingConfig(n_explain=4, n_test_pos=2, n_test_neg=2, n_quantiles=2))
    spans = [e.span(ctx_len) for e in sample.test]
    held_out = SpanSet(spans)

    def touches(token_id: int) -> bool:
        start = token_id // ctx_len * ctx_len
        return held_out.overlaps(start, token_id + 1)

    unrestricted = contexts_of(store, latent, 4)[2]
    assert sum(map(touches, unrestricted)) >= 1  # without the rule, a test window's text feeds the evidence
    ids = contexts_of(store, latent, 4, avoid=spans)[2]
    assert len(ids) == 4 and not any(map(touches, ids))
    result = ablation_effects(embedded_sae, bridge_model, store, latent, k=4, n_contexts=4, avoid=spans)
    assert result.context_ids == ids and result.n_excluded == sum(map(touches, unrestricted + ids))


def test_output_explainer_evidence_excludes_its_test_windows(bridge_model, embedded_sae, store, latent):
    """Through ``explain()``: the ablation evidence (recorded in the template explanation's ``raw``) is the one
    computed without the sample's test windows, not the one on the top contexts as they come."""
    explainer = OutputExplainer(steer=False, ablation=True, n_ablation_contexts=4, n_tokens=4, use_llm=False)
    ctx = Context(
        llm=None, renderer=Renderer(bridge_model.tokenizer), store=store, seed=0, sae=embedded_sae, model=bridge_model
    )
    sample = sample_latent(store, latent, SamplingConfig(n_explain=4, n_test_pos=2, n_test_neg=2, n_quantiles=2))
    spans = [e.span(store.settings.ctx_len) for e in sample.test]
    explanation = asyncio.run(explainer.explain(sample, ctx))
    shown = ast.literal_eval(explanation.raw)["ablation_promoted"]
    held = ablation_effects(embedded_sae, bridge_model, store, latent, k=4, n_contexts=4, avoid=spans)
    every = ablation_effects(embedded_sae, bridge_model, store, latent, k=4, n_contexts=4)
    assert held.n_excluded >= 1 and held.context_ids != every.context_ids
    assert shown == held.promoted != every.promoted
    evidence = explainer.evidence(latent, ctx, spans)
    assert evidence["ablation_excluded"] == held.n_excluded and evidence["ablation_context_ids"] == held.context_ids
