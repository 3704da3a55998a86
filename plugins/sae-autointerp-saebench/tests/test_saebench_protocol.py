"""SAEBench's example selection, rendering and parsing, on a real harvest of the embedded model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_autointerp_saebench import SAEBenchConfig, parse_explanation, parse_predictions, select_examples
from sae_autointerp_saebench.protocol import BenchExample, _weighted_draw, render
from sae_lens_autointerp.harvest.store import Example
from sae_lens_autointerp.sampling import chunk_key
from sae_lens_autointerp.text import Renderer

CFG = SAEBenchConfig(selection="clean")  # select_examples is the "clean" protocol


def chunks(store, token_ids):
    s = store.settings
    return {(t // s.ctx_len, (t % s.ctx_len) // s.example_len) for t in token_ids}


def test_counts_labels_and_disjointness(store, latents):
    for latent in latents:
        bench = select_examples(store, latent, 0, CFG)
        kinds = [b.kind for b in bench.scoring]
        assert len(bench.generation) == 15 and [b.kind for b in bench.generation].count("top") == 10
        assert kinds.count("top") == 2 and kinds.count("iw") == 2 and kinds.count("random") == 10
        assert [b.label for b in bench.scoring] == [True] * 4 + [False] * 10
        assert all(b.label for b in bench.generation)
        assert all(len(b.tokens) == len(b.activations) == 21 for b in bench.generation + bench.scoring)
        shown = chunks(store, [b.token_id for b in bench.generation])
        tested = chunks(store, [b.token_id for b in bench.scoring if b.kind != "random"])
        assert len(shown) == 15 and len(tested) == 4 and not shown & tested
        values = [b.value for b in bench.generation]
        assert values == sorted(values, reverse=True)  # shown strongest first, as SAEBench does
        top12 = store.top_examples(latent)[:12]
        assert {b.token_id for b in bench.generation + bench.scoring if b.kind == "top"} == {e.token_id for e in top12}
        ceiling = min(e.value for e in top12)
        assert all(b.value < ceiling for b in bench.generation + bench.scoring if b.kind == "iw")
        windows = {w.start_id: w for w in store.random_windows()}
        assert all(not np.any(windows[b.token_id].latents == latent) for b in bench.scoring if b.kind == "random")
        assert bench.act_threshold == pytest.approx(0.01 * top12[0].value)


def test_peak_is_centred_and_known(store, latents):
    bench = select_examples(store, latents[0], 0, CFG)
    w, ctx = store.settings.example_len, store.settings.ctx_len
    for b in bench.generation:
        assert b.activations[10] == pytest.approx(b.value, rel=2e-3)  # float16 windows; the peak sits at index buffer
        # the store knows the latent on the peak's chunk: window position j is stored index j - 10 + peak_index
        index = np.arange(21) - 10 + (b.token_id % ctx) % w
        known = (index >= 0) & (index < w)
        assert np.isfinite(b.activations[known]).all()
        assert np.isnan(b.activations[~known & (b.tokens >= 0)]).all()


def test_deterministic_in_seed(store, latents):
    ids = lambda bench: [b.token_id for b in bench.generation + bench.scoring]  # noqa: E731
    a, b, c = (select_examples(store, latents[1], seed, CFG) for seed in (0, 0, 1))
    assert ids(a) == ids(b) != ids(c)


def test_scoring_windows_avoid_what_another_explainer_showed(store, latents):
    latent = latents[2]
    plain = select_examples(store, latent, 0, CFG)
    same = select_examples(store, latent, 0, CFG, exclude_token_ids=[b.token_id for b in plain.generation])
    assert [b.token_id for b in same.scoring] == [b.token_id for b in plain.scoring]
    shown = [b.token_id for b in plain.scoring if b.kind != "random"]  # pretend an explainer saw these
    other = select_examples(store, latent, 0, CFG, exclude_token_ids=shown)
    positives = [b for b in other.scoring if b.kind != "random"]
    assert len(positives) == 4 and not chunks(store, [b.token_id for b in positives]) & chunks(store, shown)


def test_importance_weighting_prefers_large_values():
    pool = [
        Example(0, np.zeros(4, np.int32), np.zeros(4, np.float32), v, i, "s")
        for i, v in enumerate([1.0] * 50 + [10.0] * 50)
    ]
    drawn = _weighted_draw(pool, 20, 2.0, np.random.default_rng(0))
    assert len({e.token_id for e in drawn}) == 20 and sum(e.value == 10.0 for e in drawn) >= 18
    uniform = _weighted_draw(pool, 40, 0.0, np.random.default_rng(0))
    assert 8 <= sum(e.value == 1.0 for e in uniform) <= 32


def test_render_keeps_special_tokens_for_saebench(model):
    tok = model.tokenizer
    ids = [tok.bos_token_id] + tok.encode("a b", add_special_tokens=False)
    ex = BenchExample("top", 0, 1.0, np.array(ids, np.int32), np.array([0.0, 1.0, 0.0], np.float32), True)
    kept = render(ex, Renderer(tok), mark=True, act_threshold=0.5, keep_special=True)
    dropped = render(ex, Renderer(tok), mark=True, act_threshold=0.5)
    assert kept == tok.bos_token + "<<a>> b" and dropped == "<<a>> b"
    assert kept.replace("<<", "").replace(">>", "") == "".join(model.to_str_tokens(torch.tensor(ids)))


def test_render_marks_active_tokens_one_by_one(model):
    tok = model.tokenizer
    ids = tok.encode("def f(x):\n    return x", add_special_tokens=False)
    acts = np.zeros(len(ids), np.float32)
    acts[0], acts[1] = 5.0, 0.001
    acts[-1] = np.nan  # unknown activation: never marked
    ex = BenchExample("top", 0, 5.0, np.array(ids, np.int32), acts, True)
    text = render(ex, Renderer(tok), mark=True, act_threshold=0.05)
    assert text.startswith("<<def>>") and "\u21b5" in text and "\n" not in text and text.count("<<") == 1
    assert "<<" not in render(ex, Renderer(tok), mark=False, act_threshold=0.05)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("None", []),
        ("", []),
        ("1, 3 and 5.", [1, 3, 5]),
        ("2,4", [2, 4]),
        (" 7 ", [7]),
        ("I think 3", None),
        ("1, 2, three", None),
        ("\u00b2", None),
    ],
)
def test_parse_predictions(answer, expected):
    assert parse_predictions(answer) == expected


def test_parse_explanation():
    assert parse_explanation("This neuron activates on closing brackets.") == "closing brackets"
    assert parse_explanation("the keyword def") == "the keyword def"
    assert parse_explanation("This neuron activates on") is None


def test_config_validation():
    from sae_lens_autointerp.errors import ConfigError

    with pytest.raises(ConfigError, match="n_top_ex_for_scoring"):
        SAEBenchConfig(n_top_ex_for_scoring=-1)
    with pytest.raises(ConfigError, match="selection must be one of"):
        SAEBenchConfig(selection="saebench-ish")
    with pytest.raises(ConfigError, match="buffer >= 1"):
        SAEBenchConfig(buffer=0)
    with pytest.raises(ConfigError, match="temperature"):
        SAEBenchConfig(temperature=-1.0)
    assert SAEBenchConfig().n_ex_for_scoring == 14 and SAEBenchConfig().max_tokens_in_prediction == 33
    # SAEBench's temperature (the OpenAI default) for the comparable selection, 0 for the clean one
    assert SAEBenchConfig().temperature == 1.0 and SAEBenchConfig(selection="clean").temperature == 0.0
    assert SAEBenchConfig(temperature=0.0).temperature == 0.0


def test_chunk_helper_matches_core(store, latents):
    e = store.top_examples(latents[0])[0]
    assert chunks(store, [e.token_id]) == {chunk_key(e, store.settings)}
