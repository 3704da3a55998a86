"""Harvest correctness: streaming statistics equal a brute-force dense computation over the same tokens."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import sae_lens_autointerp as sai
from sae_lens_autointerp.harvest.corpus import iter_sequences, resolve_corpus
from sae_lens_autointerp.harvest.model import ModelAdapter

CTX = 64
W = 16
BATCH = 4
N_TOKENS = 40 * CTX  # 40 sequences: 10 batches


def dense_reference(model, sae, tokens: torch.Tensor, valid: torch.Tensor):
    """Brute force: run_with_cache (not our capture code) on the same batches, keep everything dense."""
    hook = sae.cfg.metadata.hook_name
    layer = int(hook.split(".")[1])
    parts = []
    with torch.no_grad():
        for start in range(0, tokens.shape[0], BATCH):
            _, cache = model.run_with_cache(tokens[start : start + BATCH], names_filter=[hook], stop_at_layer=layer + 1)
            parts.append(sae.encode(cache[hook]))
    acts = torch.cat(parts)
    return acts * valid.unsqueeze(-1)


@pytest.fixture(scope="module")
def harvested(bridge_model, bridge_sae, corpus_texts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    store = bridge_sae.autointerp.harvest(
        bridge_model,
        corpus_texts,
        n_tokens=N_TOKENS,
        ctx_len=CTX,
        batch_size=BATCH,
        example_len=W,
        top_k=10,
        n_stratified=12,
        n_random_windows=15,
        store_dir=folder,
        progress=False,
    )
    tokens = torch.from_numpy(np.array(store.tokens)).long()
    adapter = ModelAdapter(bridge_model, bridge_sae)
    special = torch.tensor(adapter.special_token_ids())
    real = tokens >= 0
    tokens = torch.where(real, tokens, adapter.pad_token_id())
    valid = real & ~torch.isin(tokens, special)
    dense = dense_reference(bridge_model, bridge_sae, tokens, valid)
    return store, tokens, valid, dense


def test_tokens_match_corpus(harvested, bridge_model, bridge_sae, corpus_texts):
    store, tokens, _, _ = harvested
    adapter = ModelAdapter(bridge_model, bridge_sae)
    expected = list(
        iter_sequences(
            resolve_corpus(corpus_texts),
            adapter.tokenizer,
            ctx_len=CTX,
            prepend_bos=True,
            bos_id=adapter.bos_token_id(),
            separator_id=adapter.separator_token_id(),
        )
    )[:40]
    assert store.n_sequences == 40
    for row, seq in zip(tokens.tolist(), expected):
        assert row[: len(seq)] == seq
    assert tokens[:, 0].eq(adapter.bos_token_id()).all()  # prepend_bos honoured


def test_counts_equal_bruteforce(harvested):
    store, _, valid, dense = harvested
    st = store.stats
    assert store.n_tokens == int(valid.sum())
    assert torch.equal(st["n_fire_tokens"], (dense > 0).sum(dim=(0, 1)))
    torch.testing.assert_close(st["sum_acts"], dense.double().sum(dim=(0, 1)), rtol=1e-5, atol=1e-4)
    chunk_max = dense.view(dense.shape[0], CTX // W, W, -1).amax(dim=2).reshape(-1, dense.shape[-1])
    assert torch.equal(st["n_fire_examples"], (chunk_max > 0).sum(dim=0))
    assert (st["n_fire_tokens"] > 0).float().mean() > 0.5, "fixture SAE should have mostly live latents"


def test_top_examples_equal_bruteforce(harvested):
    store, _, _, dense = harvested
    n_seq, _, d = dense.shape
    k = store.settings.top_k
    chunks = dense.view(n_seq, CTX // W, W, d)
    chunk_max, chunk_arg = chunks.max(dim=2)
    chunk_max = chunk_max.reshape(-1, d)
    peak = (chunk_arg + W * torch.arange(CTX // W).view(1, -1, 1)).reshape(-1, d)
    seq_of_chunk = torch.arange(n_seq).repeat_interleave(CTX // W)
    checked = 0
    for latent in range(d):
        vals = chunk_max[:, latent]
        n_firing = int((vals > 0).sum())
        ref_vals, ref_idx = vals.topk(min(k, n_firing)) if n_firing else (vals[:0], vals[:0].long())
        examples = store.top_examples(latent)
        assert len(examples) == min(k, n_firing)
        got = torch.tensor([e.value for e in examples])
        assert torch.equal(got, ref_vals), f"latent {latent}: top values differ"
        for e, i in zip(examples, ref_idx.tolist()):
            if (vals == vals[i]).sum() > 1:
                continue  # tied values: either example is a correct answer
            assert e.token_id == int(seq_of_chunk[i]) * CTX + int(peak[i, latent])
            seq, pos = divmod(e.token_id, CTX)
            lo = pos - e.peak_index
            ref_window = torch.zeros(W)
            for j in range(W):
                if 0 <= lo + j < CTX:
                    ref_window[j] = dense[seq, lo + j, latent]
            assert np.array_equal(e.activations, ref_window.half().float().numpy())
            assert e.activations[e.peak_index] == np.float16(e.value)
            checked += 1
    assert checked > d  # most latents have several untied examples


def test_stratified_sample_is_uniform_without_replacement(harvested):
    store, _, _, dense = harvested
    n_seq, _, d = dense.shape
    chunk_max = dense.view(n_seq, CTX // W, W, d).amax(dim=2)
    for latent in range(0, d, 7):
        examples = store.stratified_examples(latent)
        n_firing = int((chunk_max[..., latent] > 0).sum())
        assert len(examples) == min(store.settings.n_stratified, n_firing)
        chunk_ids = {(e.token_id // CTX, (e.token_id % CTX) // W) for e in examples}
        assert len(chunk_ids) == len(examples), "drawn with replacement"
        for e in examples:
            seq, pos = divmod(e.token_id, CTX)
            assert e.value == float(chunk_max[seq, pos // W, latent]) > 0
            assert dense[seq, pos, latent] == e.value
            lo = pos - e.peak_index  # the window around the peak, zero outside the sequence
            ref_window = torch.tensor(
                [float(dense[seq, lo + j, latent]) if 0 <= lo + j < CTX else 0.0 for j in range(W)]
            )
            assert np.array_equal(e.activations, ref_window.half().float().numpy())
        assert [e.value for e in examples] == sorted((e.value for e in examples), reverse=True)


def test_random_pool_holds_exact_sparse_activations(harvested):
    store, tokens, _, dense = harvested
    windows = store.random_windows()
    assert len(windows) == store.settings.n_random_windows
    assert len({w.start_id for w in windows}) == len(windows)
    for win in windows:
        seq, start = divmod(win.start_id, CTX)
        assert start % W == 0
        assert np.array_equal(win.tokens, tokens[seq, start : start + W].numpy())
        ref = dense[seq, start : start + W]
        pos, lat = (ref > 0).nonzero(as_tuple=True)
        assert sorted(zip(win.positions.tolist(), win.latents.tolist())) == sorted(zip(pos.tolist(), lat.tolist()))
        for latent in lat.unique().tolist()[:5]:
            np.testing.assert_array_equal(win.activations_of(latent), ref[:, latent].numpy())


def test_store_reloads_without_recomputation(harvested, bridge_model, bridge_sae, corpus_texts, monkeypatch):
    store = harvested[0]

    def boom(*args, **kwargs):
        raise AssertionError("the model ran although the store was complete")

    monkeypatch.setattr(ModelAdapter, "capture", boom)
    monkeypatch.setattr(ModelAdapter, "check_width", lambda self: None)
    again = bridge_sae.autointerp.harvest(
        bridge_model,
        corpus_texts,
        n_tokens=N_TOKENS,
        ctx_len=CTX,
        batch_size=BATCH,
        example_len=W,
        top_k=10,
        n_stratified=12,
        n_random_windows=15,
        store_dir=store.path,
        progress=False,
    )
    assert again.key == store.key and again.complete
    reopened = sai.LatentStore(store.path)
    for name, tensor in store.stats.items():
        assert torch.equal(reopened.stats[name], tensor), name
    assert not any(p.suffix == ".pkl" for p in store.path.iterdir())
    json.loads((store.path / "meta.json").read_text())


def test_default_store_location_is_content_addressed(bridge_model, bridge_sae, corpus_texts, tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_AUTOINTERP_CACHE", str(tmp_path))
    kwargs = dict(n_tokens=2 * CTX, ctx_len=CTX, batch_size=2, progress=False)
    a = bridge_sae.autointerp.harvest(bridge_model, corpus_texts[:3], **kwargs)
    b = bridge_sae.autointerp.harvest(bridge_model, corpus_texts[:3], **kwargs)
    c = bridge_sae.autointerp.harvest(bridge_model, corpus_texts[3:6], **kwargs)
    assert a.path == b.path != c.path
    assert a.path.parent == tmp_path / "stores"


def test_interrupted_harvest_resumes_exactly(bridge_model, bridge_sae, corpus_texts, tmp_path):
    kwargs = dict(
        n_tokens=24 * CTX,
        ctx_len=CTX,
        batch_size=BATCH,
        example_len=W,
        top_k=5,
        n_stratified=6,
        n_random_windows=8,
        progress=False,
    )
    whole = bridge_sae.autointerp.harvest(bridge_model, corpus_texts, store_dir=tmp_path / "whole", **kwargs)

    calls = {"n": 0}
    original = ModelAdapter.capture

    def crash_after_three(self, tokens):
        calls["n"] += 1
        if calls["n"] > 1 + 3:  # the width probe, then three batches
            raise KeyboardInterrupt("simulated kill")
        return original(self, tokens)

    ModelAdapter.capture = crash_after_three
    try:
        with pytest.raises(KeyboardInterrupt):
            bridge_sae.autointerp.harvest(
                bridge_model, corpus_texts, store_dir=tmp_path / "resumed", checkpoint_every_s=0, **kwargs
            )
    finally:
        ModelAdapter.capture = original
    partial = json.loads((tmp_path / "resumed" / "meta.json").read_text())
    assert partial["n_batches_done"] == 3 and not partial["complete"]

    counted = {"n": 0}

    def counting(self, tokens):
        counted["n"] += 1
        return original(self, tokens)

    ModelAdapter.capture = counting
    try:
        resumed = bridge_sae.autointerp.harvest(bridge_model, corpus_texts, store_dir=tmp_path / "resumed", **kwargs)
    finally:
        ModelAdapter.capture = original
    assert counted["n"] == 6 - 3 + 1  # 3 remaining batches + the width probe
    for name, tensor in whole.stats.items():
        assert torch.equal(resumed.stats[name], tensor), name
    assert np.array_equal(np.asarray(resumed.tokens), np.asarray(whole.tokens))


def test_stats_folded_in_the_background_equal_folded_inline(
    bridge_model, bridge_sae, corpus_texts, tmp_path, monkeypatch
):
    """The stats worker (folds overlapping the next forward pass) gives the inline fold's bits, through shard
    ends and a checkpoint after every batch; a fold's error reaches the caller and leaves a resumable store."""
    from sae_lens_autointerp.harvest import jobs
    from sae_lens_autointerp.harvest.stats import LatentStats

    kwargs = dict(n_tokens=24 * CTX, ctx_len=CTX, batch_size=BATCH, example_len=W, shard_batches=2, progress=False)
    monkeypatch.setattr(jobs, "OVERLAP_STATS", False)
    inline = bridge_sae.autointerp.harvest(bridge_model, corpus_texts, store_dir=tmp_path / "inline", **kwargs)
    monkeypatch.setattr(jobs, "OVERLAP_STATS", True)
    overlapped = bridge_sae.autointerp.harvest(
        bridge_model, corpus_texts, store_dir=tmp_path / "overlap", checkpoint_every_s=0, **kwargs
    )
    assert set(overlapped.stats) == set(inline.stats)
    for name, tensor in inline.stats.items():
        assert torch.equal(overlapped.stats[name], tensor), name

    original, folds = LatentStats.update, {"n": 0}

    def fail_fourth(self, *args, **kw):  # FAULT INJECTION: the 4th fold raises on the worker thread
        folds["n"] += 1
        if folds["n"] == 4:
            raise RuntimeError("fold failed")
        return original(self, *args, **kw)

    monkeypatch.setattr(LatentStats, "update", fail_fourth)
    with pytest.raises(RuntimeError, match="fold failed"):
        bridge_sae.autointerp.harvest(
            bridge_model, corpus_texts, store_dir=tmp_path / "failed", checkpoint_every_s=0, **kwargs
        )
    partial = json.loads((tmp_path / "failed" / "meta.json").read_text())
    assert partial["n_batches_done"] == 3 and not partial["complete"]  # the checkpoint holds what was folded
    monkeypatch.setattr(LatentStats, "update", original)
    resumed = bridge_sae.autointerp.harvest(bridge_model, corpus_texts, store_dir=tmp_path / "failed", **kwargs)
    for name, tensor in inline.stats.items():
        assert torch.equal(resumed.stats[name], tensor), name


def test_short_last_batch_and_sequence_are_kept(bridge_model, bridge_sae, tmp_path):
    texts = ["alpha beta gamma delta " * 40]  # about 160 tokens: 2 full sequences + a short one
    store = bridge_sae.autointerp.harvest(
        bridge_model, texts, n_tokens=10 * CTX, ctx_len=CTX, batch_size=2, store_dir=tmp_path / "s", progress=False
    )
    tokens = np.asarray(store.tokens)
    n_text = len(bridge_model.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    assert n_text % (CTX - 1) != 0
    assert store.n_sequences == 3 == -(-n_text // (CTX - 1))
    assert int((tokens >= 0).sum()) == n_text + 3  # every text token plus one BOS per sequence
    assert store.n_tokens == n_text


_THREADS_CHECK = """
import sys
if sys.argv[1] == "llama_cpp first":
    import llama_cpp  # loads the system libgomp.so.1 before torch, which then binds to it
import torch
from sae_lens_autointerp.harvest.jobs import StatsWorker

before, seen = torch.get_num_threads(), []
worker = StatsWorker()
worker.fold(lambda: seen.append(torch.get_num_threads()))
worker.drain()
worker.abandon()
mkl = [l.split(":")[-1].strip() for l in torch.__config__.parallel_info().splitlines() if "mkl_get_max_threads" in l]
print(before, seen, torch.get_num_threads(), mkl if torch.backends.mkl.is_available() else [str(before)])
"""


@pytest.mark.parametrize("order", ["torch alone", "llama_cpp first"])
def test_stats_worker_takes_one_thread_and_leaves_the_forward_its_own(order):
    """The worker's folds run on one OpenMP thread; the calling thread's count (the forward pass's) and MKL's
    process-wide count stay as they were (torch.set_num_threads in the worker would have set both), whichever
    OpenMP runtime torch ended up bound to."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_CHECK, order], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert out == ["2", "[1]", "2", "['2']"], out


def test_folds_go_to_the_worker_only_where_a_core_or_an_accelerator_is_free(monkeypatch):
    """On a CPU whose cores torch's threads all use, the worker only takes a core from the forward pass
    (measured 0.92-0.96x of folding inline on 2 cores): folds run inline there, unless OVERLAP_STATS says."""
    from sae_lens_autointerp.harvest import jobs

    monkeypatch.setattr(jobs, "OVERLAP_STATS", None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for cores, expected in ((2, False), (1, False), (4, True)):
        monkeypatch.setattr(jobs.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert jobs.overlap_stats(torch.device("cpu")) is expected, cores
        assert jobs.overlap_stats(torch.device("cuda")) is True  # the forward runs on the accelerator
    for forced in (True, False):
        monkeypatch.setattr(jobs, "OVERLAP_STATS", forced)
        assert jobs.overlap_stats(torch.device("cpu")) is forced and jobs.overlap_stats(torch.device("cuda")) is forced


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.3])
def test_firing_counts_and_sums_from_the_non_zeros_equal_the_dense_counts(threshold):
    """The counts and sums come from the non-zeros (one pass); a negative threshold, where zeros fire too,
    keeps the dense count. Masked positions never count."""
    from sae_lens_autointerp.harvest.stats import HarvestSettings, LatentStats

    gen = torch.Generator().manual_seed(3)
    batch, seq, d = 3, 40, 24
    acts = torch.randn(batch, seq, d, generator=gen) * (torch.rand(batch, seq, d, generator=gen) < 0.3)
    valid = torch.rand(batch, seq, generator=gen) > 0.2
    stats = LatentStats(d, HarvestSettings(n_tokens=batch * seq, ctx_len=seq, example_len=8, threshold=threshold))
    dense = acts.clone().masked_fill_(~valid.unsqueeze(-1), 0.0)
    stats.update(acts.clone(), valid, torch.arange(batch))
    assert torch.equal(stats.n_fire_tokens, (dense > threshold).sum(dim=(0, 1)))
    torch.testing.assert_close(stats.shard.sum_acts, dense.double().sum(dim=(0, 1)), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.3])
@pytest.mark.parametrize("pair_chunk", [None, 5 * 24])  # one scan of the batch, or 5 rows at a time (splits windows)
def test_pool_windows_hold_every_value_above_the_threshold_in_position_order(threshold, pair_chunk, monkeypatch):
    """The pool's windows are picked out of the non-zeros the sums scan (or read whole when zeros fire): each
    holds every (position, latent, value) above the threshold, in (position, latent) order, including a last
    window cut short by the sequence's end, masked positions and negative values."""
    from sae_lens_autointerp.harvest import stats as stats_mod

    if pair_chunk is not None:
        monkeypatch.setattr(stats_mod, "_PAIR_CHUNK", pair_chunk)
    gen = torch.Generator().manual_seed(5)
    batch, seq, d, w = 3, 40, 24, 16  # 3 windows per sequence, the last one 8 tokens long
    acts = torch.randn(batch, seq, d, generator=gen) * (torch.rand(batch, seq, d, generator=gen) < 0.3)
    valid = torch.rand(batch, seq, generator=gen) > 0.2
    settings = stats_mod.HarvestSettings(
        n_tokens=batch * seq, ctx_len=seq, example_len=w, threshold=threshold, n_random_windows=batch * 3
    )
    stats = stats_mod.LatentStats(d, settings)
    stats.update(acts.clone(), valid, torch.arange(batch) + 7)
    dense = acts.clone().masked_fill_(~valid.unsqueeze(-1), 0.0)
    assert sorted(stats.pool_ids.tolist()) == sorted(
        (7 + b) * seq + c * w for b in range(batch) for c in range(3) if bool(valid[b, c * w : (c + 1) * w].any())
    )
    for start, (pos, lat, val) in zip(stats.pool_ids.tolist(), stats.pool_entries):
        if start < 0:
            continue
        b, t0 = divmod(start, seq)
        ref = dense[b - 7, t0 : t0 + w]
        ref_pos, ref_lat = (ref > threshold).nonzero(as_tuple=True)
        assert pos.tolist() == ref_pos.tolist() and lat.tolist() == ref_lat.tolist()
        assert torch.equal(val, ref[ref_pos, ref_lat])
        assert pos.dtype == torch.int16 and lat.dtype == torch.int32 and val.dtype == torch.float32


def test_a_token_a_full_table_turns_away_sets_overflow_and_kept_sums_stay_exact():
    """A latent whose token table is exactly full (no overflow yet) meets, in a later shard, a token of larger
    priority than every kept one: the shard does not sum it (the totals could never take it), yet the latent's
    overflow is set, and the kept tokens' sums still count every shard."""
    from sae_lens_autointerp.harvest.stats import HarvestSettings, LatentStats, token_priority

    slots, seq, d = 4, 8, 3
    settings = HarvestSettings(n_tokens=3 * seq, ctx_len=seq, example_len=4, n_token_slots=slots, shard_batches=1)
    candidates = torch.arange(100, 140)
    by_priority = candidates[token_priority(candidates, settings.seed).argsort()]
    kept, late = by_priority[:slots], by_priority[-1]  # late: above every kept priority
    stats = LatentStats(d, settings)
    valid = torch.ones(1, seq, dtype=torch.bool)

    def batch(tokens: torch.Tensor, value: float, index: int) -> None:
        acts = torch.zeros(1, seq, d)
        acts[0, : len(tokens), 0] = value  # latent 0 fires on these tokens only
        row = torch.full((1, seq), 99)
        row[0, : len(tokens)] = tokens
        stats.update(acts, valid, torch.tensor([index]), tokens=row)
        stats.end_shard()

    batch(kept, 1.0, 0)
    state = stats.sums.state()
    assert state["tok_ids"][0].tolist() == sorted(kept.tolist()) and not bool(state["tok_overflow"][0])
    again = kept[-1]  # the kept token of largest priority: right at the cap of what the full table takes
    batch(torch.stack([late, again]), 2.0, 1)
    batch(again.unsqueeze(0), 0.5, 2)
    state = stats.sums.state()
    assert state["tok_ids"][0].tolist() == sorted(kept.tolist())
    assert bool(state["tok_overflow"][0]) and not bool(state["tok_overflow"][1:].any())
    slot = sorted(kept.tolist()).index(int(again))
    assert float(state["tok_sums"][0, slot]) == 1.0 + 2.0 + 0.5
    assert float(state["tok_sq"][0, slot]) == 1.0 + 4.0 + 0.25


def test_bridge_hooks_are_added_directly_and_leave_a_callers_hooks_alone(bridge_model, bridge_sae, tmp_path):
    """After the first batch (added through TransformerLens's own ``hooks()``, which checks the point), a harvest
    adds its hook to the HookPoint directly: the store is the same as with ``hooks()`` on every batch, a hook the
    caller had added stays and fires on every batch, and none of ours is left behind."""
    from sae_lens_autointerp import subjects

    tokens = torch.randint(100, 2000, (12, 32), generator=torch.Generator().manual_seed(0))
    point = bridge_model.hook_dict[subjects.as_subject(bridge_model).resolve(bridge_sae.cfg.metadata.hook_name)]
    seen: list[int] = []

    def callers(activation, hook):  # type: ignore[no-untyped-def]
        seen.append(activation.shape[0])

    bridge_model.add_hook(point.name, callers)
    try:
        kwargs = dict(n_tokens=tokens.numel(), ctx_len=32, batch_size=4, progress=False)
        direct = bridge_sae.autointerp.harvest(bridge_model, tokens, store_dir=tmp_path / "direct", **kwargs)
        # every batch of 4 sequences (a one-sequence probe of the hook point runs first)
        assert seen.count(4) == 3 and [h.user_hook for h in point.fwd_hooks] == [callers]

        def through_hooks(self, fwd):  # type: ignore[no-untyped-def]
            return self.model.hooks(fwd_hooks=list(fwd))

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(subjects.TLSubject, "_attached", through_hooks)
            reference = bridge_sae.autointerp.harvest(bridge_model, tokens, store_dir=tmp_path / "hooks", **kwargs)
        assert seen.count(4) == 6 and [h.user_hook for h in point.fwd_hooks] == [callers]
    finally:
        bridge_model.reset_hooks()
    assert direct.stats.keys() == reference.stats.keys()
    for name, value in direct.stats.items():
        assert torch.equal(value, reference.stats[name]), name
