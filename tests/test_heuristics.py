"""Known-heuristic filters: the harvest's per-position and per-token sums equal a brute-force dense computation,
the shares of variance explained equal a direct leave-one-out computation, constructed positional and unigram
latents are flagged and an ordinary one is not, old stores still load, and the pipeline option explains
flagged latents without an LLM call."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sae_lens_autointerp as sai
from sae_factories import make_hooked, make_sae
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.model import ModelAdapter
from sae_lens_autointerp.harvest.stats import position_buckets, token_priority
from sae_lens_autointerp.heuristics import heuristic_flags
from scripted_llm import ScriptedClient, sensible

CTX = 64
BATCH = 4
N_SEQ = 12
SLOTS = 6  # small, so that many latents overflow their per-token table
BUCKETS = 16  # < CTX: 8 exact positions, then 8 ranges of 7


# ---------------------------------------------------------------------------------------------- brute force


@pytest.fixture(scope="module")
def harvested(bridge_model, bridge_sae, corpus_texts, tmp_path_factory):
    store = bridge_sae.autointerp.harvest(
        bridge_model,
        corpus_texts,
        n_tokens=N_SEQ * CTX,
        ctx_len=CTX,
        batch_size=BATCH,
        example_len=16,
        top_k=5,
        n_stratified=5,
        n_random_windows=5,
        n_position_buckets=BUCKETS,
        n_token_slots=SLOTS,
        # a shard per batch: from the second batch on, the totals' full rows turn away the tokens they can no
        # longer take before the shard sums them (stats.py: _Sums.admissible), which the brute force checks
        shard_batches=1,
        store_dir=tmp_path_factory.mktemp("h"),
        progress=False,
    )
    tokens = torch.from_numpy(np.array(store.tokens)).long()
    adapter = ModelAdapter(bridge_model, bridge_sae)
    real = tokens >= 0
    tokens = torch.where(real, tokens, adapter.pad_token_id())
    valid = real & ~torch.isin(tokens, torch.tensor(adapter.special_token_ids()))
    hook = bridge_sae.cfg.metadata.hook_name
    parts = []
    with torch.no_grad():  # run_with_cache, not our capture code
        for start in range(0, N_SEQ, BATCH):
            _, cache = bridge_model.run_with_cache(tokens[start : start + BATCH], names_filter=[hook], stop_at_layer=4)
            parts.append(bridge_sae.encode(cache[hook]))
    dense = (torch.cat(parts) * valid.unsqueeze(-1)).double()
    return store, tokens, valid, dense


def test_position_buckets():
    assert position_buckets(10, 16).tolist() == list(range(10))
    b = position_buckets(CTX, BUCKETS)
    assert b[:8].tolist() == list(range(8)) and b[8:15].eq(8).all() and b[57:].eq(15).all() and int(b.max()) == 15


def test_position_sums_equal_bruteforce(harvested):
    store, _, valid, dense = harvested
    st = store.stats
    bucket = position_buckets(CTX, BUCKETS)
    assert torch.equal(st["pos_buckets"], bucket)
    onehot = torch.nn.functional.one_hot(bucket, BUCKETS).double()  # [pos, bucket]
    assert torch.equal(st["pos_counts"], (valid.double().sum(0) @ onehot).long())
    assert int(st["pos_counts"].sum()) == store.n_tokens
    ref_sums = torch.einsum("bpl,pk->lk", dense, onehot)
    ref_sq = torch.einsum("bpl,pk->lk", dense**2, onehot)
    torch.testing.assert_close(st["pos_sums"], ref_sums, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(st["pos_sq"], ref_sq, rtol=1e-10, atol=1e-9)


def test_token_table_equals_bruteforce(harvested):
    """Counts per token id; per latent, of the tokens it fired on, the SLOTS with the smallest seeded priority
    (token_priority: independent of arrival order, so partial tables merge), each with its exact sum and sum
    of squares; overflow set exactly when a token was left out."""
    store, tokens, valid, dense = harvested
    st = store.stats
    counts = torch.bincount(tokens[valid])
    assert torch.equal(st["token_counts"][: len(counts)], counts) and not st["token_counts"][len(counts) :].any()
    n_overflow = 0
    for latent in range(store.d_sae):
        fired = torch.unique(tokens[dense[..., latent] != 0])
        by_priority = fired[token_priority(fired, store.settings.seed).argsort()].tolist()
        kept = by_priority[:SLOTS]
        overflow = len(by_priority) > SLOTS
        ids = st["tok_ids"][latent].tolist()
        assert ids == sorted(kept) + [-1] * (SLOTS - len(kept)), latent
        assert bool(st["tok_overflow"][latent]) == overflow
        n_overflow += overflow
        for slot, tok in enumerate(sorted(kept)):
            values = dense[..., latent][tokens == tok]
            torch.testing.assert_close(st["tok_sums"][latent, slot], values.sum(), rtol=1e-10, atol=1e-9)
            torch.testing.assert_close(st["tok_sq"][latent, slot], (values**2).sum(), rtol=1e-10, atol=1e-9)
    assert 0 < n_overflow < store.d_sae  # both cases are exercised


def _shares(x: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """eta^2 and the leave-one-out share, from residuals computed point by point."""
    total = ((x - x.mean()) ** 2).sum()
    if total <= 0:
        return float("nan"), float("nan")
    within = press = 0.0
    for g in np.unique(groups):
        xs = x[groups == g]
        within += ((xs - xs.mean()) ** 2).sum()
        if len(xs) >= 2:
            press += sum((xi - (xs.sum() - xi) / (len(xs) - 1)) ** 2 for xi in xs)
        else:
            press += (xs[0] - (x.sum() - xs[0]) / (len(x) - 1)) ** 2
    return float(np.clip(1 - within / total, 0, 1)), float(np.clip(1 - press / total, 0, 1))


def test_shares_equal_bruteforce(harvested):
    store, tokens, valid, dense = harvested
    flags = heuristic_flags(store)
    pos = position_buckets(CTX, BUCKETS).expand(N_SEQ, CTX)[valid].numpy()
    tok = tokens[valid].numpy()
    checked_complete = 0
    for latent in range(store.d_sae):
        x = dense[..., latent][valid].numpy()
        row = flags.loc[latent]
        eta2, r2 = _shares(x, pos)
        np.testing.assert_allclose([row.positional_eta2, row.positional_r2], [eta2, r2], atol=1e-9)
        kept = [t for t in store.stats["tok_ids"][latent].tolist() if t >= 0]
        partition = np.where(np.isin(tok, kept), tok, -1)  # each kept token, and the rest together
        eta2, r2 = _shares(x, partition)
        np.testing.assert_allclose([row.unigram_eta2, row.unigram_r2], [eta2, r2], atol=1e-9)
        if row.unigram_complete and np.isfinite(eta2):
            # every token it fires on is kept: eta^2 is that of the full token-id partition
            np.testing.assert_allclose(row.unigram_eta2, _shares(x, tok)[0], atol=1e-9)
            checked_complete += 1
        else:
            assert not row.unigram_complete or not x.any()
        assert row.n_firing == int((x > 0).sum())
    assert checked_complete > 5


# ------------------------------------------------------------------------------------- constructed latents


@pytest.fixture(scope="module")
def constructed(smol_tokenizer, corpus_texts, tmp_path_factory):
    """A tiny HookedTransformer whose token and position embeddings live in separate dimensions, and an SAE on
    ``blocks.0.hook_resid_pre`` (= token embedding + position embedding) with:

    0. a positional latent (fires on positions 1-10, with a value that falls with the position);
    1. a unigram latent (fires on " the" and "." with a value per token);
    2. an ordinary latent, neither: fires on tokens whose id is a multiple of 4 *and* at positions >= 40;
    3. a dead latent.
    """
    model = make_hooked("HookedTransformer", smol_tokenizer)
    the, dot = smol_tokenizer(" the")["input_ids"][0], smol_tokenizer(".")["input_ids"][0]
    with torch.no_grad():
        w_e, w_pos = model.embed.W_E, model.pos_embed.W_pos
        w_e.zero_()
        w_pos.zero_()
        w_pos[1:11, 0] = 3.0 - 0.2 * torch.arange(1, 11)
        w_e[the, 1], w_e[dot, 1] = 2.0, 1.5
        w_e[0::4, 2] = 1.0
        w_pos[40:, 3] = 1.0
    sae = make_sae(64, 4, hook="blocks.0.hook_resid_pre", context_size=CTX)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0] = sae.W_enc[1, 1] = sae.W_enc[2, 2] = sae.W_enc[3, 2] = 1.0
        sae.W_enc[4, 3] = 1.0  # dimension 4 is zero everywhere
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -1.5, 0.0]))
        sae.b_dec.zero_()
    store = sae.autointerp.harvest(
        model,
        corpus_texts,
        n_tokens=48 * CTX,
        ctx_len=CTX,
        batch_size=8,
        n_random_windows=64,
        store_dir=tmp_path_factory.mktemp("c"),
        progress=False,
    )
    return model, sae, store, {"the": the, "dot": dot}


def test_constructed_latents_are_flagged(constructed):
    model, _, store, ids = constructed
    flags = heuristic_flags(store, tokenizer=model.tokenizer)
    assert flags.loc[0, "flag"] == "positional" and flags.loc[0, "positional_r2"] > 0.99
    assert flags.loc[0, "positions"][:3] == [1, 2, 3] and flags.loc[0, "unigram_r2"] < 0.5
    assert flags.loc[1, "flag"] == "unigram" and flags.loc[1, "unigram_r2"] > 0.99
    assert flags.loc[1, "tokens"] == [ids["the"], ids["dot"]] and flags.loc[1, "token_strings"] == [" the", "."]
    assert flags.loc[1, "positional_r2"] < 0.1
    assert flags.loc[2, "flag"] is None and flags.loc[2, "n_firing"] > 100
    assert 0.05 < flags.loc[2, "positional_r2"] < 0.9 and 0.05 < flags.loc[2, "unigram_r2"] < 0.9
    assert flags.loc[3, "flag"] is None and np.isnan(flags.loc[3, "unigram_r2"])
    # the threshold is a parameter, and latents can be chosen
    strict = heuristic_flags(store, [2, 0], threshold=0.05)
    assert list(strict.index) == [2, 0] and strict.loc[2, "flag"] is not None
    assert heuristic_flags(store, [0], min_firing=10**6).loc[0, "flag"] is None
    with pytest.raises(ConfigError, match="threshold"):
        heuristic_flags(store, threshold=1.5)


def _strip(store, folder):
    """A copy of ``store`` as an older version wrote it: no heuristic sums (and no checksums, as before)."""
    shutil.copytree(store.path, folder)
    state = load_file(str(folder / "stats.safetensors"))
    old = ("pos_buckets", "pos_counts", "pos_sums", "pos_sq", "token_counts", "tok_ids", "tok_sums", "tok_sq")
    save_file({k: v for k, v in state.items() if k not in (*old, "tok_overflow")}, str(folder / "stats.safetensors"))
    meta = json.loads((folder / "meta.json").read_text())
    meta.pop("files")
    for name in ("n_position_buckets", "n_token_slots"):
        meta["settings"].pop(name)
    (folder / "meta.json").write_text(json.dumps(meta))
    return sai.LatentStore(folder)


SAMPLING = {"n_explain": 6, "n_test_pos": 4, "n_test_neg": 4, "n_quantiles": 2, "min_activating": 5}


def _run(constructed, tmp_path, name, store=None, **kwargs):
    model, sae, default_store, _ = constructed
    client = ScriptedClient(sensible)
    result = sae.autointerp.run(
        model,
        store=store or default_store,
        llm=client,
        explainer="default",
        scorers=["detection"],
        scorer_kwargs={"detection": {"examples_per_prompt": 4}},
        sampling=SAMPLING,
        controls=False,
        out_dir=tmp_path / name,
        progress=False,
        **kwargs,
    )
    return result, sorted(r.latent for r in client.requests if r.stage == "explain")


def test_old_store_loads_without_heuristics(constructed, tmp_path, caplog):
    old = _strip(constructed[2], tmp_path / "old")
    assert old.settings.n_token_slots == 64  # settings it never had take their defaults
    assert old.top_examples(0) and len(old.random_windows()) == 64
    with pytest.raises(ConfigError, match="harvest again"):
        heuristic_flags(old)
    result, _ = _run(constructed, tmp_path, "r", store=old, latents=[0, 2])
    assert "no per-position / per-token sums" in caplog.text
    assert result.table["heuristic"].isna().all() and result.heuristics == {}


def test_pipeline_heuristic_explanations_save_llm_calls(constructed, tmp_path):
    latents = [0, 1, 2, 3]
    plain, plain_requests = _run(constructed, tmp_path, "plain", latents=latents)
    assert plain_requests == [0, 1, 2]  # 3 is dead (skipped)
    table = plain.table
    assert {"heuristic", "positional_r2", "unigram_r2"} <= set(table.columns)
    by_latent = table.set_index("latent")
    assert by_latent.loc[0, "heuristic"] == "positional" and by_latent.loc[1, "heuristic"] == "unigram"
    assert by_latent.loc[2, "heuristic"] is None and by_latent.loc[1, "unigram_r2"] > 0.99
    assert plain.heuristics["n_positional"] == 1 and plain.heuristics["n_unigram"] == 1
    assert plain.heuristics["llm_calls_saved"] == 0
    record = {r["latent"]: r for r in plain.records}
    assert record[3]["skipped"] and record[3]["heuristic"]["flag"] is None

    off, _ = _run(constructed, tmp_path, "off", latents=latents, heuristics=False)
    assert off.run_key == plain.run_key  # reporting only: the run is the same
    assert off.table["heuristic"].isna().all() and off.heuristics == {}

    saved, saved_requests = _run(constructed, tmp_path, "saved", latents=latents, heuristic_explanations=True)
    assert saved.run_key != plain.run_key
    assert saved_requests == [2]  # the only latent that asked the LLM for an explanation
    explanations = saved.explanations
    assert explanations[0].explainer == explanations[1].explainer == "top-tokens"
    assert explanations[2].explainer == "default" and explanations[1].text.startswith('the tokens "the", "."')
    assert saved.heuristics["explained_by_heuristic"] == 2 and saved.heuristics["llm_calls_saved"] == 2
    explain_tokens = saved.usage["stages"]["explain"]["total_tokens"]
    assert saved.heuristics["tokens_saved_estimate"] == 2 * explain_tokens
    assert json.loads((tmp_path / "saved" / "usage.json").read_text())["heuristics"]["llm_calls_saved"] == 2
    # scores of the flagged latents exist (their explanations are scored like any other)
    assert saved.table.set_index("latent").loc[[0, 1], "score"].notna().all()


def test_run_config_fields_round_trip_and_old_files_load(tmp_path):
    cfg = sai.RunConfig(heuristics=0.8, heuristic_explanations=True)
    back = sai.RunConfig.from_json(cfg.to_json(tmp_path / "c.json"))
    assert back == cfg and back.heuristics == 0.8 and back.heuristic_explanations is True
    old = sai.RunConfig().to_dict()
    del old["heuristics"], old["heuristic_explanations"]
    assert sai.RunConfig.from_dict(old) == sai.RunConfig()
    for bad in (0, 1.5, "yes"):
        with pytest.raises(ConfigError, match="heuristics must be"):
            sai.RunConfig(heuristics=bad)
    with pytest.raises(ConfigError, match="heuristic_explanations must be"):
        sai.RunConfig(heuristic_explanations=1)
