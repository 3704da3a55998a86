"""compare(): one protocol over several SAEs (the real embedded stack, LLM-free explainer and scorer)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sae_lens_autointerp.compare import compare, draw_latents, eligible_latents
from sae_lens_autointerp.errors import ConfigError, UnknownPluginItemError
from sae_lens_autointerp.metrics import Estimate, mover_sum
from sae_lens_autointerp.sampling import SamplingConfig

SAMPLING = {"n_explain": 8, "n_test_pos": 6, "n_test_neg": 6, "min_activating": 12}
PROTOCOL = dict(llm=None, explainer="top-tokens", scorers=["embedding"], controls=1.0, progress=False)


def test_draw_is_seeded_uniform_and_never_beyond_the_pool():
    pool = list(range(100, 400))
    a, b = draw_latents(pool, 20, seed=3), draw_latents(pool, 20, seed=3)
    assert a == b and len(set(a)) == 20 and set(a) <= set(pool)
    assert draw_latents(pool, 20, seed=4) != a
    assert draw_latents([5, 1], 20, seed=0) == [1, 5]
    # uniform: over many seeds every pool member is drawn about equally often
    counts = np.bincount(np.concatenate([draw_latents(range(10), 3, seed=s) for s in range(3000)]), minlength=10)
    assert counts.min() > 0.85 * 900 and counts.max() < 1.15 * 900
    with pytest.raises(ConfigError, match="n_latents"):
        draw_latents(pool, 0, seed=0)


def test_eligible_latents_follow_the_sampling_rules(embedded_store):
    cfg = SamplingConfig(**SAMPLING)
    ok = eligible_latents(embedded_store, cfg)
    counts, freq = embedded_store.stats["n_fire_examples"], embedded_store.frequency
    assert ok and all(int(counts[i]) >= 12 and float(freq[i]) <= cfg.max_frequency for i in ok)
    rest = set(range(embedded_store.d_sae)) - set(ok)
    assert all(int(counts[i]) < 12 or float(freq[i]) > cfg.max_frequency for i in rest)


def test_compare_holds_the_protocol_fixed_and_reports_differences(
    bridge_model, embedded_sae, embedded_store, bridge_sae, tmp_path
):
    import sae_lens_autointerp as sai

    docs = sai.embedded.load_corpus()[:40]
    comparison = compare(
        {"sae": embedded_sae, "same": embedded_sae, "random": bridge_sae},
        bridge_model,
        docs,
        n_latents=4,
        stores={"sae": embedded_store, "same": embedded_store},
        harvest={"n_tokens": 6000, "ctx_len": 128, "store_dir": tmp_path / "store", "progress": False},
        sampling=SAMPLING,
        out_dir=tmp_path / "cmp",
        seed=1,
        **PROTOCOL,
    )
    # the same SAE drawn twice: the same latents, the same scores, a paired difference of 0 whose interval
    # still has the width of the latents' own sampling errors (a bootstrap over latents said [0, 0])
    assert comparison.latents["sae"] == comparison.latents["same"] and len(comparison.latents["sae"]) == 4
    est, paired = comparison.difference("same", "sae", "embedding")
    assert paired and est.value == 0 and est.low < -0.05 and est.high > 0.05, est
    assert comparison.paired("same", "sae") and not comparison.paired("random", "sae")
    table = comparison.table
    assert list(table["sae"]) == ["sae", "same", "random"] and set(table["scorer"]) == {"embedding"}
    row = table.set_index("sae").loc["random"]
    assert row["d_sae"] == 256
    assert row["n_eligible"] == len(eligible_latents(comparison.stores["random"], SamplingConfig(**SAMPLING)))
    assert (table["n_latents"] == table["n_scored"] + table["n_undefined"] + table["n_failed"]).all()
    assert table["low"].le(table["mean"]).all() and table["mean"].le(table["high"]).all()
    diffs = comparison.differences()
    assert set(diffs["sae"]) == {"same", "random"} and (diffs["reference"] == "sae").all()
    rnd = diffs.set_index("sae").loc["random"]
    assert not rnd["paired"] and rnd["low"] <= rnd["difference"] <= rnd["high"]
    # unpaired: the two means' own intervals combined (never zero width, even when every answer is alike)
    t = table.set_index("sae")
    expect = mover_sum([Estimate(*t.loc[n, ["mean", "low", "high"]].astype(float)) for n in ("random", "sae")], [1, -1])
    assert (rnd["difference"], rnd["low"], rnd["high"]) == pytest.approx((expect.value, expect.low, expect.high))
    assert rnd["high"] - rnd["low"] > 0
    # each SAE's run is an ordinary run folder, and the page opens offline (plotly.js inlined, no CDN)
    assert (tmp_path / "cmp" / "random" / "results.jsonl").exists()
    fig = comparison.plot()
    assert [len(bar.x) for bar in fig.data] == [3]
    page = comparison.write_html(tmp_path / "cmp.html").read_text()
    assert not re.findall(r"<(?:script|link)[^>]+(?:src|href)=", page)  # nothing loaded from elsewhere
    assert len(page) > 1_000_000 and "embedding" in page.split("<pre>")[1]  # plotly.js inlined, the table


def test_bad_input_is_refused_before_any_harvest(bridge_model, embedded_sae):
    with pytest.raises(ConfigError, match="at least one SAE"):
        compare({}, bridge_model, ["x"])
    with pytest.raises(ConfigError, match="draws the latents"):
        compare({"a": embedded_sae}, bridge_model, ["x"], latents=[1])
    with pytest.raises(ConfigError, match="folder names"):
        compare({"a/b": embedded_sae}, bridge_model, ["x"])
    with pytest.raises(ConfigError, match="not compared"):
        compare({"a": embedded_sae}, bridge_model, ["x"], models={"b": bridge_model})
    with pytest.raises(ConfigError, match="needs a dataset"):
        compare({"a": embedded_sae}, bridge_model)
    with pytest.raises(
        UnknownPluginItemError, match="unknown scorer 'detecton'"
    ):  # the run's own checks, before a harvest
        compare({"a": embedded_sae}, bridge_model, ["x"], scorers=["detecton"], harvest={"store_dir": "/nonexistent"})


def test_cli_compare_refuses_bad_input_in_one_line_before_fitting_baselines(tmp_path):
    from test_cli import cli

    res = cli("compare", "--baselines", "neurons,bogus", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown --baselines ['bogus']" in res.stderr
    res = cli("compare", "--scorers", "detecton", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown scorer 'detecton'" in res.stderr
    assert "building the" not in res.stderr and not any(tmp_path.iterdir())  # nothing fitted, nothing written


def _result(scores: dict[int, tuple[float, float, float]], path=None):
    from sae_lens_autointerp.results import ScoreResult

    records = [
        {
            "run_key": "k",
            "latent": latent,
            "explanation": {"text": f"latent {latent}"},
            "scores": {"detection": {"score": v, "low": lo, "high": hi, "metric": "balanced_accuracy", "chance": 0.5}},
        }
        for latent, (v, lo, hi) in scores.items()
    ]
    return ScoreResult(records=records, run_key="k", path=path)


def _comparison(a, b, stores):
    from sae_lens_autointerp.compare import Comparison

    return Comparison({"a": a, "b": b}, {"a": [0, 1, 2], "b": [0, 1, 2]}, {"a": 3, "b": 3}, {"a": 8, "b": 8}, stores)


def test_differences_pair_only_the_same_latents_of_the_same_sae(tmp_path):
    """Latent indices are shared by any two bases of one width; only the same SAE (and model, hook) makes
    latent i the same latent. Paired: the mean of per-latent differences, each with its own MOVER interval,
    pooled with t; equal differences on every latent still give an interval of the latents' own width."""
    import json
    from types import SimpleNamespace

    from sae_lens_autointerp.controls import pooled_mean

    a = _result({0: (0.8, 0.7, 0.9), 1: (0.7, 0.6, 0.8), 2: (0.9, 0.8, 0.95)})
    b = _result({0: (0.7, 0.6, 0.8), 1: (0.6, 0.5, 0.7), 2: (0.8, 0.7, 0.9)})
    same = {"sae": {"weights_sha256": "x"}, "model": {"m": 1}, "hook": {"h": 1}}
    stores = {"a": SimpleNamespace(meta=same, key="k1"), "b": SimpleNamespace(meta=dict(same), key="k2")}
    cmp = _comparison(a, b, stores)
    est, paired = cmp.difference("a", "b", "detection")
    ea, eb = cmp.estimates("a", "detection"), cmp.estimates("b", "detection")
    want = pooled_mean([mover_sum([ea[i], eb[i]], [1.0, -1.0]) for i in range(3)])
    assert paired and (est.value, est.low, est.high) == pytest.approx((0.1, want.low, want.high))
    assert est.low < 0.1 < est.high  # every latent differs by exactly 0.1: not a zero-width interval
    # another SAE whose latents have the same indices: unpaired, the two means' intervals by MOVER
    other = {
        "a": SimpleNamespace(meta=same, key="k1"),
        "b": SimpleNamespace(meta=dict(same, sae={"weights_sha256": "y"}), key="k2"),
    }
    cmp = _comparison(a, b, other)
    est, paired = cmp.difference("a", "b", "detection")
    means = [Estimate(*cmp.results[n].summary().iloc[0][["mean", "low", "high"]].astype(float)) for n in ("a", "b")]
    want = mover_sum(means, [1, -1])
    assert not paired and (est.value, est.low, est.high) == pytest.approx((want.value, want.low, want.high))
    diffs = cmp.differences()
    assert diffs["paired"].tolist() == [False] and (diffs["high"] > diffs["low"]).all()
    # without stores: the run folders' run.json name the store; unknown: never paired
    for name, key in (("a", "s1"), ("b", "s1")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"store": key}))
    a2 = _result({0: (0.8, 0.7, 0.9), 1: (0.7, 0.6, 0.8)}, tmp_path / "a" / "results.jsonl")
    b2 = _result({0: (0.7, 0.6, 0.8), 1: (0.6, 0.5, 0.7)}, tmp_path / "b" / "results.jsonl")
    assert _comparison(a2, b2, {}).difference("a", "b", "detection")[1]
    assert not _comparison(_result({0: (0.8, 0.7, 0.9), 1: (0.7, 0.6, 0.8)}), b2, {}).paired("a", "b")
