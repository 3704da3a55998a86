"""Bad input to ``run`` (the API) and ``sae-autointerp run`` (the command line, in process): each case is one
ConfigError line before any harvest. The harvest is replaced by a tripwire that fails the test if it starts; the
``--config`` cases also fail if the SAE or the model starts loading."""

from __future__ import annotations

import json
import logging
import re

import pytest

import sae_lens_autointerp as sai
import sae_lens_autointerp.harvest as harvest_pkg
from sae_lens_autointerp import cli, embedded
from sae_lens_autointerp.errors import AutointerpError, ConfigError, PluginError
from scripted_llm import ScriptedClient, sensible


class Tripwire(AssertionError):
    """Raised where expensive work would start: the case was not refused up front."""


@pytest.fixture
def tripwires(monkeypatch, bridge_model, embedded_sae):
    """The harvest always trips; the SAE / model loaders count their calls (the CLI's loads are instant)."""
    loads: list[str] = []

    def harvest(*args, **kwargs):
        raise Tripwire("the harvest started")

    def loader(name, obj):
        def load(*args, **kwargs):
            loads.append(name)
            return obj

        return load

    monkeypatch.setattr(harvest_pkg, "harvest", harvest)
    monkeypatch.setattr(embedded, "load_model", loader("model", bridge_model))
    monkeypatch.setattr(embedded, "load_sae", loader("sae", embedded_sae))
    monkeypatch.setattr(embedded, "load_corpus", loader("corpus", ["a tiny corpus"]))
    return loads


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``sae-autointerp ARGV`` in this process: (exit code, stderr); the CLI's log handler is removed after."""
    try:
        code = cli.main(list(argv))
    finally:
        logger = logging.getLogger("sae_lens_autointerp")
        for handler in [h for h in logger.handlers if h.get_name() == "sae-autointerp-cli"]:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    return code, capsys.readouterr().err


def config_file(tmp_path, name: str, *, config=None, source=None, text: str | None = None) -> str:
    """A run.json-like config file: a small valid config with ``config`` changes and a ``source``."""
    path = tmp_path / f"{name}.json"
    if text is None:
        doc = {"format": sai.config.CONFIG_FORMAT, "config": {**sai.RunConfig(latents=[1]).to_dict(), **(config or {})}}
        if source is not None:
            doc["source"] = source
        text = json.dumps(doc)
    path.write_text(text)
    return str(path)


# (case id, keyword arguments of run(), the message)
API_CASES = [
    ("seed -1", {"seed": -1}, "seed must be an integer >= 0, got -1"),
    ("out_dir under a file", {"out_dir": "{file}/run"}, "is under"),
    ("a server twice", {"llm_kwargs": {"base_url": ["http://a/v1", "http://a/v1"]}}, "lists a server twice"),
    ("unknown llm_kwargs key", {"llm_kwargs": {"bogus": 1}}, "bogus"),
    ("timeout -1", {"llm_kwargs": {"timeout": -1}}, "timeout"),
    ("max_concurrency as text", {"llm_kwargs": {"max_concurrency": "4"}}, "max_concurrency"),
    ("prices not numbers", {"prices": {"m": "abc"}}, r"prices\['m'\] is 'abc'"),
    ("prices NaN", {"prices": {"m": [1.0, float("nan")]}}, r"finite numbers >= 0; prices\['m'\]"),
    (
        "budget_dollars NaN",
        {"budget_dollars": float("nan"), "prices": {"m": [1, 1]}},
        "budget_dollars must be a finite",
    ),
    ("threshold NaN", {"harvest": {"threshold": float("nan")}}, "harvest threshold must be a finite number"),
    ("n_tokens 10**100", {"harvest": {"n_tokens": 10**100}}, "harvest n_tokens must be at most"),
    ("latents a string", {"latents": "abc"}, "latents must be a list of latent indices"),
]


#: Refused by the LLM backend's factory, which the registry reports as a PluginError naming the plugin
#: (docs/plugins.md); the rest are ConfigErrors of the run's own checks.
BY_THE_CLIENT_FACTORY = {"a server twice", "unknown llm_kwargs key", "timeout -1", "max_concurrency as text"}


@pytest.mark.parametrize("case,kwargs,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_before_the_harvest(tripwires, bridge_model, embedded_sae, tmp_path, case, kwargs, message):
    (tmp_path / "file").write_text("x")
    if "out_dir" in kwargs:
        kwargs = {**kwargs, "out_dir": kwargs["out_dir"].format(file=tmp_path / "file")}
    options = {"latents": [1], "llm": "openai:m", "scorers": ["detection"], "explanations": {1: "x"}, **kwargs}
    with pytest.raises(AutointerpError, match=message) as caught:
        embedded_sae.autointerp.run(bridge_model, ["some text"], progress=False, **options)
    expected = PluginError if case in BY_THE_CLIENT_FACTORY else ConfigError
    assert type(caught.value) is expected, repr(caught.value)
    assert "\n" not in str(caught.value)


LLM = ["--llm", "openai:m", "--latents", "1", "--scorers", "detection", "--explanations", '{"1": "x"}']
# (case id, the run flags, the message, whether the SAE / model may load first)
CLI_CASES = [
    ("seed -1", ["--seed", "-1"], "seed must be an integer >= 0, got -1", False),
    ("out_dir under a file", ["--out", "{file}/run"], "is under", True),
    ("a server twice", [*LLM, "--base-url", "http://a/v1,http://a/v1"], "lists a server twice", True),
    ("unknown llm_kwargs key", [*LLM, "--llm-kwargs", '{"bogus": 1}'], "bogus", True),
    ("timeout -1", [*LLM, "--llm-kwargs", '{"timeout": -1}'], "timeout", True),
    ("prices not numbers", [*LLM, "--prices", '{"m": "abc"}'], r"prices\['m'\] is 'abc'", False),
    (
        "budget NaN",
        [*LLM, "--budget-dollars", "nan", "--prices", '{"m": [1, 1]}'],
        "budget_dollars must be a finite",
        False,
    ),
    ("threshold NaN", ["--threshold", "nan"], "harvest threshold must be a finite number", False),
    ("ray client missing", ["--ray", "ray://127.0.0.1:1"], r"pip install 'ray\[client\]'", True),
    ("config: source a list", ["--config", "{cfg:source_list}"], "'source' must map sae", False),
    ("config: source sae 5", ["--config", "{cfg:source_int}"], "'source' must map sae", False),
    ("config: 100k-deep JSON", ["--config", "{cfg:deep}"], "nested too deeply", False),
    ("config: latents a string", ["--config", "{cfg:latents_str}"], "latents must be a list of latent indices", False),
    ("config: n_tokens 10**100", ["--config", "{cfg:huge}"], "harvest n_tokens must be at most", False),
]


@pytest.mark.parametrize("flags,message,loads", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_in_one_line_before_the_harvest(tripwires, capsys, tmp_path, flags, message, loads):
    (tmp_path / "file").write_text("x")
    files = {
        "source_list": config_file(tmp_path, "source_list", source=[1, 2]),
        "source_int": config_file(tmp_path, "source_int", source={"sae": 5}),
        "deep": config_file(tmp_path, "deep", text='{"config": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "latents_str": config_file(tmp_path, "latents_str", config={"latents": "abc"}),
        "huge": config_file(tmp_path, "huge", config={"harvest": {"n_tokens": 10**100}}),
    }
    argv = [f.format(file=tmp_path / "file") if "{file}" in f else f for f in flags]
    argv = [files[a[5:-1]] if a.startswith("{cfg:") else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    code, err = run_cli(capsys, "run", *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("sae-autointerp: error: "), err
    assert re.search(message, err), err
    if not loads:
        assert tripwires == [], "the SAE or the model was loaded before the bad input was refused"


@pytest.fixture(scope="module")
def small_store(bridge_model, embedded_sae, tmp_path_factory):
    """The shipped SAE on 4k tokens of the embedded corpus (a few seconds)."""
    return embedded_sae.autointerp.harvest(
        bridge_model,
        embedded.load_corpus(),
        n_tokens=4096,
        ctx_len=128,
        store_dir=tmp_path_factory.mktemp("small"),
        progress=False,
    )


def test_explanations_without_latents_score_only_those(bridge_model, embedded_sae, small_store, tmp_path):
    """R17: run(explanations={latent: text}) without latents= scores those latents, not all 2,048."""
    wanted = {int(i): "words" for i in small_store.stats["n_fire_examples"].argsort()[-2:]}
    result = embedded_sae.autointerp.run(
        bridge_model,
        store=small_store,
        explanations=wanted,
        llm=ScriptedClient(sensible),
        scorers=["detection"],
        sampling={"n_explain": 8, "n_test_pos": 4, "n_test_neg": 4},
        controls=False,
        out_dir=tmp_path,
        progress=False,
    )
    assert sorted(r["latent"] for r in result.records) == sorted(wanted) and not result.incomplete
