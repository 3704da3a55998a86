"""Options are declared once: every RunConfig / HarvestConfig field reaches the keyword arguments of the entry
points (typed by the TypedDicts beside the dataclasses) and the command line's flags, and nothing else does; a
wrong option name is an error naming the closest valid one, everywhere (no keyword swallowed)."""

from __future__ import annotations

import argparse
import warnings
from dataclasses import fields

import pytest

import sae_lens_autointerp as sai
from sae_lens_autointerp import cli, cliargs, cliconfig
from sae_lens_autointerp.config import (
    CompareOptions,
    ExplainOptions,
    HarvestConfig,
    RunConfig,
    RunOptions,
    ScoreOptions,
    option_names,
)
from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.harvest.config import HarvestManyOptions, HarvestOptions, HarvestSettings, StoreSettings
from sae_lens_autointerp.options import doc
from sae_lens_autointerp.pipeline import build_config, check_run_options
from sae_lens_autointerp.sampling import SamplingConfig

RUN_FIELDS = {f.name for f in fields(RunConfig)}
HARVEST_FIELDS = {f.name for f in fields(HarvestConfig)}

#: Per RunConfig field: (the keyword's value, its command-line flags, the field's value in the RunConfig). Every
#: value differs from the field's default, so a field that does not reach the config fails below. A new field
#: fails test_every_field_has_an_example until it is given one here (and then must reach run() and the CLI).
RUN_EXAMPLES = {
    "latents": ([3, 1], ["--latents", "3,1"], (3, 1)),
    "llm": ("openai:m", ["--llm", "openai:m"], "openai:m"),
    "llm_kwargs": (
        {"base_url": "http://h/v1"},
        ["--llm-kwargs", '{"base_url": "http://h/v1"}'],
        {"base_url": "http://h/v1"},
    ),
    "explainer": ("top-tokens", ["--explainer", "top-tokens"], "top-tokens"),
    "explainer_kwargs": ({"n": 2}, ["--explainer-kwargs", '{"n": 2}'], {"n": 2}),
    "scorers": (["embedding", "detection"], ["--scorers", "embedding,detection"], ("embedding", "detection")),
    "scorer_kwargs": ({"detection": {"k": 5}}, ["--scorer-kwargs", '{"detection": {"k": 5}}'], {"detection": {"k": 5}}),
    "explanations": ({7: "months"}, ["--explanations", '{"7": "months"}'], {7: "months"}),
    "sampling": ({"n_explain": 8}, ["--sampling", '{"n_explain": 8}'], SamplingConfig(n_explain=8, seed=5)),
    "out_dir": ("runs/x", ["--out-dir", "runs/x"], "runs/x"),
    "concurrency": (2, ["--concurrency", "2"], 2),
    "budget_tokens": (100, ["--budget-tokens", "100"], 100),
    "budget_dollars": (1.5, ["--budget-dollars", "1.5"], 1.5),
    "prices": ({"m": [0.1, 0.2]}, ["--prices", '{"m": [0.1, 0.2]}'], {"m": [0.1, 0.2]}),
    "seed": (5, ["--seed", "5"], 5),
    "controls": (0.5, ["--controls", "0.5"], 0.5),
    "max_consecutive_failures": (7, ["--max-consecutive-failures", "7"], 7),
    "heuristics": (0.8, ["--heuristics", "0.8"], 0.8),
    "heuristic_explanations": (True, ["--heuristic-explanations"], True),
    "executor": ("ray", ["--executor", "ray"], "ray"),
    "ray_address": ("auto", ["--ray-address", "auto"], "auto"),
    "workers": (2, ["--workers", "2"], 2),
    "worker_gpus": (0.5, ["--worker-gpus", "0.5"], 0.5),
}
#: The same for HarvestConfig; the flag is the one of the ``harvest`` command (``run`` prefixes the names a run
#: field has too with ``harvest-``).
HARVEST_EXAMPLES = {
    "n_tokens": (5000, ["--n-tokens", "5000"]),
    "ctx_len": (64, ["--ctx-len", "64"]),
    "batch_size": (8, ["--batch-size", "8"]),
    "example_len": (16, ["--example-len", "16"]),
    "top_k": (20, ["--top-k", "20"]),
    "n_stratified": (30, ["--n-stratified", "30"]),
    "n_random_windows": (40, ["--n-random-windows", "40"]),
    "threshold": (0.5, ["--threshold", "0.5"]),
    "seed": (3, ["--seed", "3"]),
    "n_position_buckets": (32, ["--n-position-buckets", "32"]),
    "n_token_slots": (16, ["--n-token-slots", "16"]),
    "shard_batches": (4, ["--shard-batches", "4"]),
    "text_column": ("content", ["--text-column", "content"]),
    "split": ("test", ["--split", "test"]),
    "streaming": (False, ["--no-streaming"]),
    "dataset_config": ("wikitext-2", ["--dataset-config", "wikitext-2"]),
    "store_dir": ("/tmp/a-store", ["--store-dir", "/tmp/a-store"]),
    "checkpoint_every_s": (5.0, ["--checkpoint-every-s", "5"]),
    "pin_malloc": (True, ["--pin-malloc"]),
    "executor": ("ray", ["--executor", "ray"]),
    "n_workers": (2, ["--n-workers", "2"]),
    "worker_options": ({"num_cpus": 1}, ["--worker-options", '{"num_cpus": 1}']),
    "hook_module": ("model.layers.3", ["--hook-module", "model.layers.3"]),
}
#: The keyword types that accept more than the field holds (a client object for ``llm``, any iterable for
#: ``latents``, a dict for a nested config, ...); every other key of the TypedDicts has the field's own type.
WIDER = {
    "latents": "Iterable[int] | int | None",
    "llm": "LLMSpec",
    "llm_kwargs": "Mapping[str, Any] | None",
    "explainer_kwargs": "Mapping[str, Any] | None",
    "scorers": "Iterable[str]",
    "scorer_kwargs": "Mapping[str, Mapping[str, Any]] | None",
    "explanations": "Mapping[int, str | Explanation] | None",
    "sampling": "SamplingConfig | Mapping[str, Any] | None",
    "harvest": "HarvestConfig | Mapping[str, Any] | None",
    "out_dir": "str | os.PathLike[str] | None",
    "prices": "Mapping[str, Any] | None",
    "controls": "float | bool | Mapping[str, float]",
    "store_dir": "str | os.PathLike[str] | None",
}
#: Flags of the commands that are no config field: where the SAE, model and data come from, and short forms.
NOT_FIELDS = {
    "--help",
    "--config",
    "--sae",
    "--sae-id",
    "--model",
    "--model-kind",
    "--dataset",
    "--device",
    "--n-latents",
    "--n-explain",
    "--n-test",
    "--base-url",
    "--ray",
    "--baselines",
    "--out",
}


def _annotations(typed_dict: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for klass in reversed(typed_dict.__mro__):
        out.update(getattr(klass, "__annotations__", {}))
    text = {k: getattr(v, "__forward_arg__", v) for k, v in out.items()}  # a TypedDict keeps them as ForwardRefs
    return {k: v for k, v in text.items() if k in option_names(typed_dict)}


def _run_options() -> dict:
    return {name: value for name, (value, _, _) in RUN_EXAMPLES.items()}


def _harvest_options() -> dict:
    return {name: value for name, (value, _) in HARVEST_EXAMPLES.items()}


def _expected_harvest() -> HarvestConfig:
    return HarvestConfig(**_harvest_options())


def test_every_field_has_an_example_that_is_not_its_default():
    assert set(RUN_EXAMPLES) == RUN_FIELDS - {"harvest"}
    assert set(HARVEST_EXAMPLES) == HARVEST_FIELDS
    for f in fields(RunConfig):
        assert doc(f), f"RunConfig.{f.name} has no doc (the CLI's help text)"
        if f.name in RUN_EXAMPLES:
            assert RUN_EXAMPLES[f.name][2] != getattr(RunConfig(), f.name), f.name
    for f in fields(HarvestConfig):
        assert doc(f), f"HarvestConfig.{f.name} has no doc"
        assert HARVEST_EXAMPLES[f.name][0] != getattr(HarvestConfig(), f.name), f.name


def test_the_typed_keywords_are_exactly_the_fields():
    assert option_names(RunOptions) == RUN_FIELDS
    assert option_names(ExplainOptions) | {"latents", "llm", "explainer", "scorers"} == RUN_FIELDS
    assert option_names(ScoreOptions) | {"explanations", "scorers", "llm"} == RUN_FIELDS
    assert option_names(CompareOptions) | {"latents"} == RUN_FIELDS
    assert option_names(HarvestOptions) == HARVEST_FIELDS
    assert option_names(HarvestManyOptions) | {"store_dir"} == HARVEST_FIELDS
    for typed, klass in (
        (RunOptions, RunConfig),
        (ExplainOptions, RunConfig),
        (ScoreOptions, RunConfig),
        (CompareOptions, RunConfig),
        (HarvestOptions, HarvestConfig),
        (HarvestManyOptions, HarvestConfig),
    ):
        types = {f.name: f.type for f in fields(klass)}
        for name, annotation in _annotations(typed).items():
            assert annotation in (types[name], WIDER.get(name)), (typed.__name__, name, annotation, types[name])


def test_the_entry_points_take_their_options_typed_from_the_config():
    import importlib
    import inspect

    from sae_lens_autointerp import distributed, pipeline
    from sae_lens_autointerp.harvest import run as harvest_run
    from sae_lens_autointerp.namespace import AutointerpNamespace

    for function, typed in (
        (pipeline.run, "RunOptions"),
        (distributed.run, "RunOptions"),
        (AutointerpNamespace.run, "RunOptions"),
        (AutointerpNamespace.explain, "ExplainOptions"),
        (AutointerpNamespace.score, "ScoreOptions"),
        (importlib.import_module("sae_lens_autointerp.compare").compare, "CompareOptions"),
        (harvest_run.harvest, "HarvestOptions"),
        (AutointerpNamespace.harvest, "HarvestOptions"),
        (harvest_run.harvest_many, "HarvestManyOptions"),
    ):
        var_keyword = [p for p in inspect.signature(function).parameters.values() if p.kind is p.VAR_KEYWORD]
        assert [p.annotation for p in var_keyword] == [f"Unpack[{typed}]"], function.__qualname__


def test_every_run_field_reaches_the_run_config_and_the_cli():
    options = {**_run_options(), "harvest": _harvest_options()}
    by_keywords, _, _ = build_config(None, options)
    argv = ["run"] + [a for _, args, _ in RUN_EXAMPLES.values() for a in args]
    for name, (_, args) in HARVEST_EXAMPLES.items():
        argv += [args[0].replace("--", "--harvest-", 1) if name in RUN_FIELDS else args[0], *args[1:]]
    by_flags, _ = cliconfig.run_config(cli.build_parser().parse_args(argv))
    for name, (_, _, expected) in RUN_EXAMPLES.items():
        assert getattr(by_keywords, name) == expected, name
        assert getattr(by_flags, name) == expected, name
    assert by_keywords.harvest == by_flags.harvest == _expected_harvest()


def test_every_harvest_field_reaches_harvest_and_the_cli(monkeypatch):
    from sae_lens_autointerp.harvest import run as harvest_run

    seen = {}

    def harvest_many(saes, model, dataset, *, config, store_dirs, progress, hook_fn):
        seen.update(config=config, store_dirs=store_dirs)
        return {"sae": "the store"}

    monkeypatch.setattr(harvest_run, "harvest_many", harvest_many)
    assert harvest_run.harvest("sae", "model", ["text"], **_harvest_options()) == "the store"
    expected = _expected_harvest()
    assert seen["config"].to_dict() == {**expected.to_dict(), "store_dir": None}
    assert seen["store_dirs"] == {"sae": expected.store_dir}
    argv = ["harvest"] + [a for _, args in HARVEST_EXAMPLES.values() for a in args]
    options = cliargs.given(cli.build_parser().parse_args(argv), cliargs.HARVEST_FLAGS)
    assert HarvestConfig(**options) == expected


def test_every_compare_option_reaches_compare_from_the_cli():
    argv = ["compare"] + [a for name, (_, args, _) in RUN_EXAMPLES.items() if name != "latents" for a in args]
    for name, (_, args) in HARVEST_EXAMPLES.items():
        argv += [args[0].replace("--", "--harvest-", 1) if name in RUN_FIELDS else args[0], *args[1:]]
    options = cliargs.given(cli.build_parser().parse_args(argv), cliargs.COMPARE_FLAGS)
    assert set(options) == RUN_FIELDS - {"latents"}
    cfg, _, _ = build_config(None, options)
    for name, (_, _, expected) in RUN_EXAMPLES.items():
        if name != "latents":
            assert getattr(cfg, name) == expected, name
    assert cfg.harvest == _expected_harvest()


def test_every_flag_is_a_field_or_named_as_none():
    """The reverse: no flag of run / compare / harvest is an option that no config field declares."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, derived, wanted in (
        ("run", cliargs.RUN_FLAGS, RUN_FIELDS),
        ("compare", cliargs.COMPARE_FLAGS, RUN_FIELDS - {"latents"}),
        ("harvest", cliargs.HARVEST_FLAGS, HARVEST_FIELDS),
    ):
        declared = {flag.nested or flag.name for flag in derived}
        assert declared == wanted, command
        if command != "harvest":
            assert {flag.name for flag in derived if flag.nested} == HARVEST_FIELDS, command
        flags = {f for a in commands[command]._actions for f in a.option_strings if f.startswith("--")}
        names = {flag.flag for flag in derived} | {"--no-" + flag.flag[2:] for flag in derived}
        assert flags - names <= NOT_FIELDS, (command, sorted(flags - names - NOT_FIELDS))


def test_a_field_of_a_type_the_cli_cannot_read_is_refused_when_the_parser_is_built():
    from dataclasses import dataclass

    from sae_lens_autointerp.options import option

    @dataclass(frozen=True)
    class Odd:
        when: complex = option(1j, doc="a complex option")

    with pytest.raises(TypeError, match="Odd.when: no command-line parser"):
        cliargs.config_flags(Odd)


def test_harvest_settings_are_the_store_settings_resolved():
    """HarvestSettings is StoreSettings with ctx_len resolved, plus the legacy ``peak_offset`` (None: windows are
    fixed chunks; set only in stores of format 1-2); what it writes (the store's key hashes it) is this dict."""
    assert [f.name for f in fields(HarvestSettings)] == [f.name for f in fields(StoreSettings)] + ["peak_offset"]
    settings = HarvestSettings(n_tokens=1000, ctx_len=64, threshold=0)
    assert settings.to_dict() == {
        "n_tokens": 1000,
        "ctx_len": 64,
        "batch_size": 16,
        "example_len": 32,
        "top_k": 50,
        "n_stratified": 100,
        "n_random_windows": 1000,
        "threshold": 0.0,
        "seed": 0,
        "n_position_buckets": 64,
        "n_token_slots": 64,
        "shard_batches": 16,
        "peak_offset": None,
    }
    assert isinstance(settings.to_dict()["threshold"], float)
    with pytest.raises(TypeError):
        HarvestSettings(n_tokens=1000)  # ctx_len is resolved: no default


def test_the_removed_peak_offset_is_refused_with_its_reason():
    """peak_offset was an option until windows became fixed chunks: every way in names why it went."""
    from sae_lens_autointerp.harvest import harvest_config

    with pytest.raises(ConfigError, match="peak_offset was removed.*fixed chunk"):
        harvest_config(None, {"peak_offset": 24})
    with pytest.raises(ConfigError, match="peak_offset was removed"):
        HarvestConfig.from_dict({"n_tokens": 100, "peak_offset": 24})
    assert HarvestConfig.from_dict({"n_tokens": 100, "peak_offset": None}).n_tokens == 100  # an old run.json


# ------------------------------------------------------------------------------------------- unknown names


def test_an_unknown_run_option_names_the_closest(bridge_model, embedded_sae):
    from sae_lens_autointerp.pipeline import run

    with pytest.raises(ConfigError, match=r"unknown run option\(s\) \['scorer'\]; did you mean 'scorers'\?"):
        run(embedded_sae, bridge_model, scorer=["detection"])
    with pytest.raises(ConfigError, match=r"\['harvest_kwarg'\]; did you mean 'harvest'\?"):
        embedded_sae.autointerp.run(bridge_model, harvest_kwarg={"n_tokens": 1})
    with pytest.raises(ConfigError, match=r"unknown explain option\(s\) \['latent'\]; did you mean 'latents'\?"):
        embedded_sae.explain(bridge_model, ["x"], latent=[1])
    with pytest.raises(ConfigError, match=r"unknown score option\(s\) \['concurency'\]; did you mean 'concurrency'\?"):
        embedded_sae.score(bridge_model, ["x"], {1: "x"}, concurency=2)
    with pytest.raises(ConfigError, match="explain\\(\\) scores nothing"):
        embedded_sae.explain(bridge_model, ["x"], scorers=["detection"])
    with pytest.raises(ConfigError, match=r"\['sampling_config'\]; did you mean 'sampling'\?"):
        sai.for_sae(embedded_sae).run(bridge_model, sampling_config={})


def test_an_unknown_compare_option_names_the_closest(bridge_model, embedded_sae):
    with pytest.raises(ConfigError, match=r"unknown compare option\(s\) \['n_latent'\]; did you mean 'n_latents'\?"):
        sai.compare({"a": embedded_sae}, bridge_model, ["x"], n_latent=3)
    with pytest.raises(ConfigError, match=r"unknown harvest option\(s\) \['n_token'\]; did you mean 'n_tokens'\?"):
        sai.compare({"a": embedded_sae}, bridge_model, ["x"], harvest={"n_token": 20_000})


def test_compare_takes_the_old_harvest_kwargs_name_and_harvests_what_it_says(bridge_model, embedded_sae, monkeypatch):
    """The issue's new user: ``compare(..., harvest_kwargs={"n_tokens": 20_000})`` harvested the default
    1,000,064 tokens without a word. It is the old name of ``harvest`` now: a FutureWarning, and the harvest
    gets its settings."""
    from sae_lens_autointerp.namespace import AutointerpNamespace

    class Harvested(Exception):
        pass

    seen = {}

    def harvest(self, model, dataset, *, config=None, progress=True, **options):
        seen.update(config=config, progress=progress, options=options)
        raise Harvested

    monkeypatch.setattr(AutointerpNamespace, "harvest", harvest)
    with pytest.warns(FutureWarning, match="harvest_kwargs= is deprecated; pass harvest="), pytest.raises(Harvested):
        sai.compare(
            {"a": embedded_sae},
            bridge_model,
            ["x"],
            harvest_kwargs={"n_tokens": 20_000},
            llm=None,
            scorers=["embedding"],
            explainer="top-tokens",
        )
    assert seen["config"].n_tokens == 20_000 and not seen["options"]
    with pytest.raises(ConfigError, match="got both harvest_kwargs= and harvest="):
        sai.compare({"a": embedded_sae}, bridge_model, ["x"], harvest_kwargs={}, harvest={})


def test_run_takes_the_old_harvest_kwargs_name_with_a_warning():
    with pytest.warns(FutureWarning, match=r"run\(\): harvest_kwargs= is deprecated"):
        cfg, _, _ = build_config(None, {"harvest_kwargs": {"n_tokens": 20_000}})
    assert cfg.harvest.n_tokens == 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_run_options({"harvest": {}}, "run") == {"harvest": {}}


def test_an_unknown_harvest_option_names_the_closest(bridge_model, embedded_sae):
    with pytest.raises(ConfigError, match=r"unknown harvest option\(s\) \['n_token'\]; did you mean 'n_tokens'\?"):
        embedded_sae.autointerp.harvest(bridge_model, ["x"], n_token=100)
    with pytest.raises(ConfigError, match=r"\['batchsize'\]; did you mean 'batch_size'\?"):
        sai.harvest_many({"a": embedded_sae}, bridge_model, ["x"], batchsize=4)
    with pytest.raises(ConfigError, match="pass store_dirs=\\{name: folder\\} instead of store_dir"):
        sai.harvest_many({"a": embedded_sae}, bridge_model, ["x"], store_dir="/tmp/x")
    with pytest.raises(ConfigError, match=r"\['n_token'\]; did you mean 'n_tokens'\?"):
        sai.RunConfig(harvest={"n_token": 100})


@pytest.mark.parametrize(
    "argv,closest",
    [
        (["run", "--n-tokns", "5"], "--n-tokens"),
        (["run", "--scorer", "detection"], "--scorers"),
        (["compare", "--harvest-sed", "2"], "--harvest-seed"),
        (["harvest", "--ctx-lem", "64"], "--ctx-len"),
    ],
)
def test_an_unknown_flag_names_the_closest(argv, closest, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{argv[1]} (did you mean {closest}?)" in err, err
    assert err.startswith(f"sae-autointerp: error: {argv[0]}: unrecognized arguments")
