"""RunConfig / HarvestConfig: validated on construction, JSON round trip, a run folder reproduces itself,
and the keyword API builds the same configuration."""

from __future__ import annotations

import hashlib
import json

import pytest

import sae_lens_autointerp as sai
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.sampling import SamplingConfig
from scripted_llm import ScriptedClient, distinct


def test_round_trip(tmp_path):
    cfg = sai.RunConfig(
        latents=[3, 1],
        llm="openai:gpt-4o-mini",
        llm_kwargs={"base_url": "http://h/v1"},
        scorers=["detection", "embedding"],
        scorer_kwargs={"detection": {"examples_per_prompt": 5}},
        sampling={"n_explain": 20, "negatives": "similar"},
        harvest={"n_tokens": 5000, "ctx_len": 64},
        explanations={7: "months"},
        controls={"embedding": 1.0},
        seed=3,
        budget_tokens=10_000,
    )
    back = sai.RunConfig.from_json(cfg.to_json(tmp_path / "c.json"))
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert back.latents == (3, 1) and back.sampling == SamplingConfig(n_explain=20, negatives="similar")
    assert back.harvest == sai.HarvestConfig(n_tokens=5000, ctx_len=64) and back.explanations == {7: "months"}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"concurrency": 0}, "concurrency must be a positive integer, got 0"),
        ({"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
        ({"scorers": "detection"}, "scorers must be a list of names"),
        ({"sampling": {"n_tests": 1}}, r"unknown sampling option\(s\) \['n_tests'\]"),
        ({"harvest": {"n_tokens": -1}}, "harvest n_tokens must be a positive integer, got -1"),
        ({"harvest": {"ctx_len": 16, "example_len": 32}}, "example_len=32 must be <= ctx_len=16"),
        ({"harvest": {"nope": 1}}, r"unknown harvest option\(s\) \['nope'\]; valid: n_tokens"),
        ({"llm": object()}, "pass a client object to run"),
        ({"controls": "lots"}, "controls must be a fraction"),
        ({"llm_kwargs": {"x": object()}}, "llm_kwargs must be JSON-serialisable"),
        ({"explanations": {"a": "x"}}, "explanations keys are latent indices"),
    ],
)
def test_validation_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        sai.RunConfig(**kwargs)


def test_from_json_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config at"):
        sai.RunConfig.from_json(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no RunConfig"):
        sai.RunConfig.from_json(tmp_path / "x.json")


def _fingerprint(client):
    ordered = sorted(repr((r.messages, r.params())) for r in client.requests)
    return hashlib.sha256("".join(ordered).encode()).hexdigest()


def test_a_run_folder_reproduces_itself(planted, planted_store, bridge_model, tmp_path):
    """RunConfig.from_json(an earlier run.json) gives byte-identical prompts, the same run key and the same
    scores; only the folder differs."""
    first = ScriptedClient(distinct)
    a = planted.sae.autointerp.run(
        bridge_model,
        store=planted_store,
        latents=[0, 1, 2],
        llm=first,
        scorers=["detection", "fuzzing"],
        explainer="default",
        scorer_kwargs={"fuzzing": {"examples_per_prompt": 3}},
        sampling={"n_explain": 8, "n_test_pos": 6, "n_test_neg": 6},
        seed=4,
        out_dir=tmp_path / "a",
        progress=False,
    )
    run_json = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run_json["config"]["seed"] == 4 and run_json["versions"]["sae-lens-autointerp"]
    cfg = sai.RunConfig.from_json(tmp_path / "a")
    second = ScriptedClient(distinct)
    b = planted.sae.autointerp.run(
        bridge_model, store=planted_store, config=cfg, llm=second, out_dir=tmp_path / "b", progress=False
    )
    assert _fingerprint(first) == _fingerprint(second) and len(first.requests) == len(second.requests) > 0
    assert a.run_key == b.run_key
    assert a.table.drop(columns=["provider"]).equals(b.table.drop(columns=["provider"]))


def test_keywords_and_config_build_the_same_run(planted, planted_store, bridge_model, tmp_path):
    kwargs = dict(
        latents=[0, 1],
        llm=None,
        explainer="top-tokens",
        scorers=["embedding"],
        sampling={"n_explain": 8, "n_test_pos": 4, "n_test_neg": 4},
        seed=2,
        controls=0.5,
        concurrency=2,
    )
    by_kwargs = planted.sae.autointerp.run(
        bridge_model, store=planted_store, out_dir=tmp_path / "k", progress=False, **kwargs
    )
    cfg = sai.RunConfig(**{**kwargs, "sampling": SamplingConfig(n_explain=8, n_test_pos=4, n_test_neg=4, seed=2)})
    by_config = planted.sae.autointerp.run(
        bridge_model, store=planted_store, config=cfg, out_dir=tmp_path / "c", progress=False
    )
    assert by_kwargs.run_key == by_config.run_key
    # a keyword next to config= overrides that field
    other = planted.sae.autointerp.run(
        bridge_model, store=planted_store, config=cfg, seed=5, out_dir=tmp_path / "o", progress=False
    )
    assert other.run_key != by_config.run_key
    saved = sai.RunConfig.from_json(tmp_path / "o")
    assert saved.seed == 5 and saved.sampling.seed == 2 and saved.controls == 0.5 and saved.concurrency == 2
    assert saved.explainer == "top-tokens" and saved.scorers == ("embedding",) and saved.llm is None


def test_a_written_config_holds_no_secret_and_reading_it_sends_no_marker(tmp_path):
    """R1: to_dict / to_json (and so run.json) redact the key, header values, other secret-named options and a
    URL's userinfo and query values; reading the file back drops every marker (the key then comes from
    OPENAI_API_KEY), keeping what is no secret."""
    secrets = ("sk-SECRET", "HDR-SECRET", "PW-SECRET", "Q-SECRET", "HF-SECRET")
    cfg = sai.RunConfig(
        llm="openai:m",
        llm_kwargs={
            "api_key": "sk-SECRET",
            "default_headers": {"X-Api-Key": "HDR-SECRET"},
            "base_url": [
                "http://u:PW-SECRET@h:1/v1?token=Q-SECRET",
                {"base_url": "http://h2/v1", "max_concurrency": 2},
            ],
            "hf_token": "HF-SECRET",
            "timeout": 10,
            "max_tokens_param": "max_completion_tokens",
        },
    )
    text = cfg.to_json(tmp_path / "c.json").read_text()
    assert not [s for s in secrets if s in text]
    back = sai.RunConfig.from_json(tmp_path / "c.json")
    assert back.llm_kwargs == {
        "base_url": ["http://h:1/v1", {"base_url": "http://h2/v1", "max_concurrency": 2}],
        "timeout": 10,
        "max_tokens_param": "max_completion_tokens",
    }
    assert "redacted" not in json.dumps(back.llm_kwargs).lower()


def test_prices_take_the_usage_trackers_shapes():
    prices = {"a": [1, 2], "b": (1, 2, 0.5), "c": {"input": 1, "output": 2, "cached_input": None}, "*": [0, 0]}
    assert sai.RunConfig(prices=prices).prices == prices
    for bad in ({"m": [1]}, {"m": [1, -2]}, {"m": [1, float("inf")]}, {"m": {"input": 1}}, {"m": [True, 1]}):
        with pytest.raises(ConfigError, match="finite numbers >= 0"):
            sai.RunConfig(prices=bad)


def test_deeply_nested_config_is_one_error(tmp_path):
    (tmp_path / "deep.json").write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match="nested too deeply"):
        sai.RunConfig.from_json(tmp_path / "deep.json")
