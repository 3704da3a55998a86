"""Baselines (sae_lens_autointerp.baselines): real SAELens SAEs that fit, round-trip, reconstruct, and go
through a real harvest and an LLM-free run unchanged, on the embedded SmolLM2 stack.

The CPU forward pass is the cost here, so the real fits read few tokens; the fitting arithmetic (chunked
PCA, ICA, the reservoir sample) is checked against exact answers on synthetic streams, with no forward pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import get_sae_class

import sae_lens_autointerp as sai
from sae_lens_autointerp import baselines
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.corpus import iter_sequences, resolve_corpus
from sae_lens_autointerp.harvest.model import ModelAdapter
from sae_lens_autointerp.sampling import SamplingConfig, sample_latent

HOOK = "blocks.3.hook_resid_post"
MLP_HOOK = "blocks.3.mlp.hook_post"
FIT_TOKENS = 640  # > 576, the residual width: enough for a complete PCA


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch and one BLAS thread for this module, restored after. On two cores shared with other jobs,
    two spinning threads per library were measured 4x (a forward pass) to 30x (a 640 x 576 SVD) slower."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return sai.embedded.load_model()


@pytest.fixture(scope="module")
def sae():
    return sai.embedded.load_sae()


@pytest.fixture(scope="module")
def docs():
    return sai.embedded.load_corpus()[:60]


def _activations(model, sae_like, texts, n_seq=2, ctx=128):
    """Activations [tokens, width] at the SAE's hook, read independently of baselines._stream (BOS dropped)."""
    adapter = ModelAdapter(model, sae_like)
    seqs = iter_sequences(
        resolve_corpus(texts),
        adapter.tokenizer,
        ctx_len=ctx,
        prepend_bos=True,
        bos_id=adapter.bos_token_id(),
        separator_id=adapter.separator_token_id(),
    )
    acts = adapter.capture(torch.tensor([next(seqs) for _ in range(n_seq)]))
    return acts[:, 1:].reshape(-1, acts.shape[-1]).float()


@pytest.fixture(scope="module")
def held_out(model, sae):
    """Activations on documents that no fit below reads."""
    return _activations(model, sae, sai.embedded.load_corpus()[300:320])


@pytest.fixture(scope="module")
def fitted(model, sae, docs):
    """Every baseline once, fitted on few tokens of the first documents."""
    return {
        "neurons": baselines.neurons(model, like=sae),
        "topk_neurons": baselines.topk_neurons(model, like=sae, dataset=docs, n_tokens=128),
        "pca": baselines.pca(model, None, docs, 576, like=sae, n_tokens=FIT_TOKENS),
        "ica": baselines.ica(model, None, docs, 8, like=sae, n_tokens=256, max_fit_tokens=256),
        # 508 = the valid tokens of 4 windows of 128 (BOS masked): exactly what the harvest below reads
        "random": baselines.random_directions(model, None, 64, like=sae, dataset=docs, n_tokens=4 * 127),
    }


NAMES = ["neurons", "topk_neurons", "pca", "ica", "random"]


def test_each_baseline_is_a_registered_sae_with_the_reference_hook_settings(fitted, sae):
    assert get_sae_class(baselines.ARCHITECTURE) == (baselines.BaselineSAE, baselines.BaselineSAEConfig)
    ref = sae.cfg.metadata
    for name, b in fitted.items():
        assert isinstance(b, SAE) and isinstance(b, baselines.BaselineSAE), name
        assert not b.training and b.dtype == torch.float32 and b.W_enc.dtype == torch.float32, name
        md = b.cfg.metadata
        assert md.hook_name == HOOK and md.model_name == ref.model_name == "SmolLM2-135M-Instruct", name
        assert (md.context_size, md.prepend_bos, list(md.seqpos_slice)) == (128, True, [1, None]), name
        assert torch.allclose(b.W_dec.norm(dim=1), torch.ones(b.cfg.d_sae)), f"{name}: unit decoder rows"
    assert fitted["neurons"].cfg.d_sae == 2 * 576 and fitted["pca"].cfg.d_sae == 2 * 576
    assert fitted["ica"].cfg.d_sae == 16 and fitted["random"].cfg.d_sae == 64
    assert fitted["ica"].cfg.metadata.baseline_fit["converged"]


@pytest.mark.parametrize("name", NAMES)
def test_save_model_and_load_from_disk_round_trip(fitted, held_out, name, tmp_path):
    b = fitted[name]
    b.save_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is baselines.BaselineSAE
    assert loaded.cfg.to_dict() == b.cfg.to_dict()
    assert (loaded.cfg.basis, loaded.cfg.signs, loaded.cfg.k) == (b.cfg.basis, b.cfg.signs, b.cfg.k)
    with torch.no_grad():
        assert torch.equal(loaded.encode(held_out), b.encode(held_out))


def test_neurons_are_the_hook_basis_split_by_sign_and_reconstruct_exactly(fitted, model, sae, held_out):
    both, x = fitted["neurons"], held_out
    positive = baselines.neurons(model, like=sae, signs="positive")
    with torch.no_grad():
        acts = both.encode(x)
        assert acts.shape[1] == 2 * 576 and positive.encode(x).shape[1] == 576
        assert torch.equal(acts[:, :576], x.relu()) and torch.equal(acts[:, 576:], (-x).relu())
        assert torch.equal(positive.encode(x), x.relu())
        assert torch.equal(both.decode(acts), x)  # exact: each coordinate is relu(x) - relu(-x)
        # only the positive half: the negative part is lost
        assert torch.equal(positive.decode(positive.encode(x)), x.relu())


def test_neurons_at_an_mlp_hook_are_the_mlp_neurons(model, sae, docs):
    mlp = baselines.neurons(model, MLP_HOOK, like=sae)
    assert mlp.cfg.metadata.hook_name == MLP_HOOK and mlp.cfg.d_in == 1536 and mlp.cfg.d_sae == 2 * 1536
    x = _activations(model, mlp, docs[:5], n_seq=1, ctx=64)
    assert x.shape[1] == 1536 and float((x < 0).float().mean()) > 0.2  # SiLU(gate) * up: signed
    with torch.no_grad():
        acts = mlp.encode(x)
        assert torch.equal(acts[:, :1536] - acts[:, 1536:], x) and torch.equal(mlp.decode(acts), x)


def test_pca_with_every_component_reconstructs_exactly(fitted, held_out):
    b = fitted["pca"]
    assert b.cfg.metadata.baseline_fit["n_tokens"] == FIT_TOKENS
    with torch.no_grad():
        recon = b.decode(b.encode(held_out))
    err = float((recon - held_out).abs().max() / held_out.abs().max())
    assert err < 1e-5, err
    directions = b.W_dec[:576].double()
    assert torch.allclose(directions @ directions.T, torch.eye(576, dtype=torch.float64), atol=1e-5)


def _synthetic_stream(monkeypatch, data, batch=300):
    """Replace the model's activations at the hook by ``data``, streamed in batches: no forward pass."""

    def stream(model, md, dataset, n_tokens, batch_size, ctx_len, dataset_kwargs):
        for start in range(0, min(n_tokens, len(data)), batch):
            yield torch.from_numpy(data[start : min(start + batch, n_tokens)]).float()

    monkeypatch.setattr(baselines, "_stream", stream)
    monkeypatch.setattr(baselines, "_hook_width", lambda model, md: data.shape[1])


def test_chunked_pca_matches_an_exact_pca_of_the_whole_stream(model, monkeypatch):
    rng = np.random.default_rng(0)
    scales = np.geomspace(30, 0.1, 48)  # a clear spectrum, so the top directions are well defined
    basis = np.linalg.qr(rng.standard_normal((48, 48)))[0]
    data = ((rng.standard_normal((5000, 48)) * scales) @ basis.T + 3.0).astype(np.float32)
    _synthetic_stream(monkeypatch, data)
    b = baselines.pca(model, HOOK, ["unused"], 8, n_tokens=5000, chunk_tokens=700)  # 6 partial fits + the rest
    centred = data.astype(np.float64) - data.mean(0)
    exact = np.linalg.svd(centred, full_matrices=False)[2][:8]
    ours = b.W_dec[:8].detach().double().numpy()
    # the same directions up to sign (IncrementalPCA truncates to n components at every chunk: close, not exact)
    assert np.all(np.abs((ours * exact).sum(1)) > 0.995), (ours * exact).sum(1)
    assert np.allclose(b.b_dec.detach().numpy(), data.mean(0), atol=1e-4)
    assert b.cfg.metadata.baseline_fit["n_tokens"] == 5000


def test_ica_recovers_independent_sources(model, monkeypatch):
    rng = np.random.default_rng(1)
    sources = rng.laplace(size=(6000, 4)) * np.array([5.0, 3.0, 2.0, 1.0])
    mixing = rng.standard_normal((40, 4))
    data = (sources @ mixing.T + 0.01 * rng.standard_normal((6000, 40))).astype(np.float32)
    _synthetic_stream(monkeypatch, data)
    b = baselines.ica(model, HOOK, ["unused"], 4, n_tokens=6000, max_fit_tokens=4000, seed=0)
    assert b.cfg.metadata.baseline_fit["n_fit_tokens"] == 4000
    true_dirs = mixing / np.linalg.norm(mixing, axis=0)
    cos = np.abs(b.W_dec[:4].detach().double().numpy() @ true_dirs)  # [ours, true]
    assert np.all(cos.max(axis=0) > 0.99), cos
    with torch.no_grad():
        signed = b.encode(torch.from_numpy(data[:2000]))
    signed = (signed[:, :4] - signed[:, 4:]).double().numpy()
    corr = np.abs(np.corrcoef(signed.T, sources[:2000].T)[:4, 4:])
    assert np.all(corr.max(axis=0) > 0.99), corr  # each source read off by one latent pair


def test_ica_on_real_activations_is_a_projection(fitted, held_out):
    b = fitted["ica"]
    with torch.no_grad():
        once = b.decode(b.encode(held_out))
        twice = b.decode(b.encode(once))
    # With 8 of 576 components, decode(encode(x)) projects onto an 8-dimensional subspace: idempotent.
    assert float((twice - once).abs().max() / once.abs().max()) < 1e-4
    assert float((once - held_out).norm() / held_out.norm()) < 1


def test_topk_neurons_keep_exactly_the_k_largest_coordinates(fitted, held_out):
    b = fitted["topk_neurons"]
    fit = b.cfg.metadata.baseline_fit
    assert fit["like_l0"] == pytest.approx(32.0) and b.cfg.k == 32  # the embedded TopK SAE's measured L0
    with torch.no_grad():
        acts = b.encode(held_out)
    assert torch.all((acts > 0).sum(1) == 32)
    signed = acts[:, :576] - acts[:, 576:]
    top = held_out.abs().topk(32, dim=1).indices
    expected = torch.zeros_like(held_out).scatter_(1, top, held_out.gather(1, top))
    assert torch.equal(signed, expected)


def test_random_directions_fire_at_the_reference_mean_rate(fitted, held_out, model, docs):
    b = fitted["random"]
    fit = b.cfg.metadata.baseline_fit
    assert fit["target_firing_rate"] == pytest.approx(fit["like_l0"] / 2048) == pytest.approx(32 / 2048)
    assert fit["n_fit_tokens"] == 4 * 127
    # on other documents the mean rate carries over (per latent it varies); on the fit tokens it is exact
    # (checked through a harvest in test_every_baseline_goes_through_a_real_harvest...)
    with torch.no_grad():
        held = (b.encode(held_out) > 0).double().mean().item()
    assert 0.5 < held / fit["target_firing_rate"] < 2, held
    assert torch.allclose(b.W_dec.norm(dim=1), torch.ones(64))
    # the directions are the seeded Gaussian draw: seed 0 here, another seed gives others
    draw = torch.randn(64, 576, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(b.W_dec.double(), draw / draw.norm(dim=1, keepdim=True), atol=1e-6)
    other = baselines.random_directions(model, HOOK, 64, rate=0.05, dataset=docs, n_tokens=64, seed=1)
    assert not torch.allclose(other.W_dec, b.W_dec, atol=0.1)
    assert other.cfg.metadata.baseline_fit["target_firing_rate"] == 0.05


def test_random_thresholds_give_each_latent_exactly_the_rate_on_its_fit_sample(model, monkeypatch):
    data = np.random.default_rng(2).standard_normal((2000, 16)).astype(np.float32) * 3 + 1
    _synthetic_stream(monkeypatch, data)
    b = baselines.random_directions(model, HOOK, 300, rate=0.1, dataset=["unused"], n_tokens=2000)  # 2 blocks
    with torch.no_grad():
        fires = (b.encode(torch.from_numpy(data)) > 0).sum(0)
    assert torch.equal(fires, torch.full((300,), 200))  # 10% of 2000, for every latent


def test_reservoir_keeps_a_uniform_sample_of_the_whole_stream():
    counts = np.zeros(10_000)
    for trial in range(40):
        sample = baselines._Reservoir(1000, 1, np.random.default_rng(trial))
        for start in range(0, 10_000, 777):  # uneven batches
            sample.add(np.arange(start, min(start + 777, 10_000), dtype=np.float32)[:, None])
        kept = sample.rows()[:, 0].astype(int)
        assert len(kept) == 1000 == len(set(kept)) and sample.seen == 10_000
        counts[kept] += 1
    # every tenth of the stream is kept equally often (40 000 draws, 4 000 expected per tenth)
    per_tenth = counts.reshape(10, -1).sum(1)
    assert np.all(np.abs(per_tenth - 4000) < 300), per_tenth


SAMPLING = SamplingConfig(n_explain=4, n_test_pos=2, n_test_neg=2, n_quantiles=2, min_activating=4)


def _scorable(store, n=2):
    """Latents the protocol can score on this small store: at most 25% firing, and a sample with held-out
    activating and silent examples. Dense bases (a neuron or a principal direction fires on about half the
    tokens) have few such latents."""
    freq = store.frequency
    found = []
    for i in freq.argsort(descending=True).tolist():
        if 0 < freq[i] <= SAMPLING.max_frequency:
            sample = sample_latent(store, i, SAMPLING)
            if sample.skipped is None and sample.test_pos and sample.test_neg:
                found.append(i)
                if len(found) == n:
                    break
    return found


@pytest.mark.parametrize("name", NAMES)
def test_every_baseline_goes_through_a_real_harvest_and_an_llm_free_score(fitted, model, docs, name, tmp_path):
    b = fitted[name]
    # the first 4 windows: the tokens the random thresholds were set on
    store = b.autointerp.harvest(model, docs, n_tokens=512, ctx_len=128, store_dir=tmp_path / "store", progress=False)
    assert store.d_sae == b.cfg.d_sae and store.n_tokens == 4 * 127  # BOS masked (seqpos_slice, special)
    if name == "random":  # on its fit tokens every latent fires on round(rate * 508) = 8 of them
        assert round(b.cfg.metadata.baseline_fit["target_firing_rate"] * store.n_tokens) == 8
        assert torch.equal(store.firing_counts, torch.full((64,), 8, dtype=store.firing_counts.dtype))
    latents = _scorable(store)
    assert latents, f"{name}: no latent fires on <= 25% of tokens with silent windows left"
    result = b.autointerp.run(
        model,
        store=store,
        latents=latents,
        explainer="top-tokens",
        scorers=["embedding"],
        llm=None,
        sampling=SAMPLING,
        controls=False,
        out_dir=tmp_path / "run",
        progress=False,
    )
    assert not result.skipped, result.skipped
    table = result.table
    assert sorted(table["latent"]) == sorted(latents) and set(table["scorer"]) == {"embedding"}
    assert (table["n_failed"] == 0).all() and (table["n_examples"] > 0).all(), table
    assert table["score"].map(math.isfinite).all(), table[["latent", "score", "n_examples"]]
    assert all(e.text for e in result.explanations.values())


def test_bad_arguments_are_config_errors(model, sae, docs):
    with pytest.raises(ConfigError, match="hook="):
        baselines.neurons(model)
    with pytest.raises(ConfigError, match="not a hook point"):
        baselines.neurons(model, "blocks.3.hook_nowhere")
    with pytest.raises(ConfigError, match="between 1 and the hook width 576"):
        baselines.pca(model, HOOK, docs, 577)
    with pytest.raises(ConfigError, match="needs k="):
        baselines.topk_neurons(model, HOOK)
    with pytest.raises(ConfigError, match="like=<SAE>"):
        baselines.random_directions(model, HOOK, 8, dataset=docs)
    with pytest.raises(ConfigError, match="signs"):
        baselines.neurons(model, HOOK, signs="abs")  # type: ignore[arg-type]


def test_rate_matching_makes_a_dense_baseline_fire_at_the_rate_and_keeps_its_ranking(fitted, model, docs):
    dense = fitted["pca"]
    n_fit = 4 * 127
    matched = baselines.match_firing_rate(dense, model, docs, rate=0.05, n_tokens=n_fit)
    rows = torch.cat(list(baselines._stream(model, matched, docs, n_fit, 8, None, None)))
    with torch.no_grad():
        dense_acts, acts = dense.encode(rows), matched.encode(rows)
    fires, dense_fires = (acts > 0).sum(0), (dense_acts > 0).sum(0)
    # on its fit tokens every latent fires on exactly round(rate * n) of them, or on its own count when that is
    # lower (a threshold is never negative)
    target = round(0.05 * len(rows))
    assert torch.equal(fires, torch.clamp(dense_fires, max=target))
    assert (dense_fires > 0.3 * len(rows)).float().mean() > 0.9  # the dense basis fired on far more
    alive = fires > 0
    assert torch.equal(acts.argmax(0)[alive], dense_acts.argmax(0)[alive])  # same peak token per latent
    assert matched.cfg.metadata.baseline_fit["target_firing_rate"] == 0.05
    assert not torch.equal(matched.b_enc, dense.b_enc) and torch.equal(matched.W_enc, dense.W_enc)  # a copy
    with pytest.raises(ConfigError, match="sparse already"):
        baselines.match_firing_rate(fitted["topk_neurons"], model, docs, rate=0.05)
    with pytest.raises(ConfigError, match="like="):
        baselines.match_firing_rate(dense, model, docs)
