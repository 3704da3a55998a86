"""Acceptance test: the "saebench" selection picks exactly the windows SAEBench 0.6.0's own ``gather_data``
picks, on the same tokens (the store's complete sequences) and the same model and SAE (see saebench_peer.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from saebench_peer import load_saebench, run_gather_data

from sae_autointerp_saebench import SAEBenchConfig, select_saebench
from sae_autointerp_saebench.dense import dense_latent_activations, saebench_tokens
from sae_autointerp_saebench.protocol import render
from sae_autointerp_saebench.selection import torch_seed
from sae_lens_autointerp.text import Renderer

CFG = SAEBenchConfig()
SEED = 3


@pytest.fixture(scope="module")
def saebench():
    return load_saebench()


@pytest.fixture(scope="module")
def chosen(store):
    """Latents whose strongest stored peak lies within 10 tokens of a sequence edge (SAEBench never centres a
    top window there), latents with two top peaks within 10 tokens of each other in one sequence, and plain
    ones (sparse and dense)."""
    s = store.settings
    edge, close, plain = [], [], []
    for latent in range(store.d_sae):
        top = store.top_examples(latent)[:12]
        if len(top) < 12:
            continue
        pos = [e.token_id % s.ctx_len for e in top]
        if min(pos[0], s.ctx_len - 1 - pos[0]) < CFG.buffer:
            edge.append(latent)
        elif any(
            a.token_id // s.ctx_len == b.token_id // s.ctx_len and 0 < abs(a.token_id - b.token_id) <= CFG.buffer
            for i, a in enumerate(top)
            for b in top[i + 1 :]
        ):
            close.append(latent)
        else:
            plain.append(latent)
    freq = store.frequency
    dense = [lat for lat in plain if float(freq[lat]) > 0.1]
    sparse = [lat for lat in plain if float(freq[lat]) < 0.01]
    picked = edge[:3] + close[:2] + sparse[:2] + dense[:1]
    assert len(edge) >= 3 and len(close) >= 2 and len(sparse) >= 2 and len(dense) >= 1  # the premise of the test
    return picked


def as_lists(examples):
    return [(list(ex.toks), [float(a) for a in ex.acts]) for ex in examples]


def ours_as_lists(windows):
    return [(b.tokens.tolist(), b.activations.astype(np.float64).tolist()) for b in windows]


def test_same_windows_as_saebench_gather_data(saebench, model, sae, store, chosen):
    tokens, _ = saebench_tokens(store)
    renderer = Renderer(model.tokenizer)
    for latent in chosen:
        peer = run_gather_data(saebench, model, sae, tokens, latent, torch_seed(SEED, latent), CFG.llm_batch_size)
        ours = select_saebench(store, model, sae, latent, SEED, CFG)
        dense = dense_latent_activations(store, model, sae, latent, batch_size=CFG.llm_batch_size)
        # the same dense activations, bit for bit (SAEBench's collect_sae_activations vs ours)
        assert peer.acts.dtype == dense.dtype == torch.bfloat16 and torch.equal(peer.acts[..., 0], dense), latent
        # the same positions: random centres, top-12 (in rank order), importance-weighted draws (in draw order)
        by_kind = {k: [b.position for b in ours.generation + ours.scoring if b.kind == k] for k in ("top", "iw")}
        assert [b.position for b in ours.scoring if b.kind == "random"] == peer.random, latent
        assert sorted(by_kind["top"]) == sorted(peer.top) and len(peer.top) == 12, latent
        assert sorted(by_kind["iw"]) == sorted(peer.iw) and len(peer.iw) == 7, latent
        assert peer.generation is not None and ours.skipped is None
        # the same explainer windows in the same order (tokens and activations), the same scoring windows
        assert ours_as_lists(ours.generation) == as_lists(peer.generation), latent
        peer_scoring = sorted((t, a, ex.is_active) for (t, a), ex in zip(as_lists(peer.scoring), peer.scoring))
        our_scoring = sorted((t, a, b.label) for (t, a), b in zip(ours_as_lists(ours.scoring), ours.scoring))
        assert our_scoring == peer_scoring, latent
        # the same text: special tokens kept, the same active-token marks
        thr = ours.act_threshold
        assert thr == pytest.approx(peer.generation[0].act_threshold, rel=0, abs=0)
        assert [render(b, renderer, mark=True, act_threshold=thr, keep_special=True) for b in ours.generation] == [
            ex.to_str(mark_toks=True) for ex in peer.generation
        ]
        assert sorted(render(b, renderer, mark=False, act_threshold=thr, keep_special=True) for b in ours.scoring) == (
            sorted(ex.to_str(mark_toks=False) for ex in peer.scoring)
        )


def test_edge_peaks_are_not_top_windows(store, model, sae, chosen):
    """SAEBench's top windows are centred at least ``buffer`` tokens from either edge, so a latent whose
    strongest peak sits at an edge gets other top windows than the store's top list."""
    s = store.settings
    latent = chosen[0]
    ours = select_saebench(store, model, sae, latent, SEED, CFG)
    centres = [b.position[1] for b in ours.generation + ours.scoring if b.kind in ("top", "iw")]
    assert all(CFG.buffer <= c < s.ctx_len - CFG.buffer for c in centres)
    strongest = store.top_examples(latent)[0].token_id
    assert strongest not in {b.token_id for b in ours.generation + ours.scoring}


def test_seeded_per_latent(store, model, sae, chosen):
    a, b = chosen[3], chosen[4]
    first = select_saebench(store, model, sae, a, SEED, CFG)
    select_saebench(store, model, sae, b, SEED, CFG)  # another latent in between changes nothing
    again = select_saebench(store, model, sae, a, SEED, CFG)
    other_seed = select_saebench(store, model, sae, a, SEED + 1, CFG)
    ids = lambda bench: [x.token_id for x in bench.generation + bench.scoring]  # noqa: E731
    assert ids(first) == ids(again) != ids(other_seed)
