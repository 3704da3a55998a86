"""Explain and score many latents: bounded concurrency, one record per finished latent, resumable.

Torch work (harvest) runs first, in the caller's thread; LLM work then runs on an asyncio loop with at most
``concurrency`` latents in flight (each scorer bounds its own requests too). Latents go in blocks of
:data:`~sae_lens_autointerp.controls.CONTROL_BLOCK` (in the order given): first every latent of the block is
sampled and explained, then scored, together with its controls (see ``controls.py``).

Failures are of two kinds. The judge's (an unparseable answer, a refusal) are counted in ``n_failed`` and
the latent finishes. Infrastructure failures (connection errors, timeouts after retries, malformed
responses, replay-mode cache misses, the budget) never finish a latent: what it completed (its explanation,
finished scorers) is written as an ``incomplete`` record, and the next run with the same run key redoes only
what is missing, with the response cache serving every answer already paid for. After
``max_consecutive_failures`` latents in a row fail that way, the run stops with one message (circuit breaker).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._version import __version__
from .config import CONFIG_FORMAT, RunConfig
from .controls import (
    CONTROL_BLOCK,
    RelabelledClient,
    check_fraction,
    choose_control,
    control_explanation,
    control_sample,
    fraction_for,
    scored_examples,
)
from .errors import ConfigError, PluginError
from .harvest.store import LatentStore
from .heuristics import DEFAULT_THRESHOLD, flag_summary, has_heuristic_stats, heuristic_flags
from .lens import write_run_views
from .llm import BudgetExceeded, LLMError, UsageTracker
from .loading import default_dataset, default_model, sae_provenance
from .locks import folder_lock
from .paths import cache_dir
from .records import PROMPT_VERSION, Context, Explanation, ScorerOutput
from .registry import get_client, get_registry
from .results import ResultsFile, ScoreResult, encode_record
from .sampling import LatentSample, SamplingConfig, sample_latent
from .subjects import as_subject
from .text import Renderer

T = TypeVar("T")
DEFAULT_SCORERS = ("detection", "fuzzing")
#: The explainer whose explanation flagged latents get with ``heuristic_explanations=True``.
HEURISTIC_EXPLAINER = "top-tokens"
log = logging.getLogger(__name__)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` that also works inside a running loop (Jupyter): then it runs in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="sae-autointerp-loop")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_latents(latents: Iterable[int] | int | None, d_sae: int) -> list[int]:
    if latents is None:
        return list(range(d_sae))
    if isinstance(latents, int):
        latents = [latents]
    out = []
    for latent in latents:
        if isinstance(latent, bool) or not isinstance(latent, int) and not hasattr(latent, "__index__"):
            raise ConfigError(f"latent indices must be integers, got {latent!r}")
        latent = int(latent)
        if not 0 <= latent < d_sae:
            raise ConfigError(f"latent {latent} is out of range: this SAE has d_sae={d_sae} (0..{d_sae - 1})")
        out.append(latent)
    if not out:
        raise ConfigError("latents is empty; pass at least one latent index (or None for all)")
    return list(dict.fromkeys(out))


def coerce_explanations(
    explanations: Mapping[int, Any] | None, d_sae: int | None = None
) -> dict[int, Explanation] | None:
    if explanations is None:
        return None
    if not isinstance(explanations, Mapping):
        raise ConfigError(f"explanations must map latent -> str or Explanation, got {type(explanations).__name__}")
    out: dict[int, Explanation] = {}
    for latent, value in explanations.items():
        if isinstance(latent, bool) or not isinstance(latent, numbers.Integral):
            raise ConfigError(f"explanations keys are latent indices (integers), got {latent!r}")
        latent = int(latent)
        if d_sae is not None and not 0 <= latent < d_sae:
            raise ConfigError(f"explanations has latent {latent}, out of range for d_sae={d_sae} (0..{d_sae - 1})")
        if isinstance(value, Explanation):
            out[latent] = value
        elif isinstance(value, str):
            if not value.strip():
                raise ConfigError(f"the explanation of latent {latent} is empty")
            out[latent] = Explanation(latent, value.strip())
        else:
            raise ConfigError(
                f"explanations must map latent -> str or Explanation; latent {latent} has {type(value).__name__}"
            )
    return out


def sampling_config(sampling: SamplingConfig | Mapping[str, Any] | None, seed: int) -> SamplingConfig:
    """``sampling=`` as a :class:`SamplingConfig` (a mapping's keys are checked by name)."""
    if isinstance(sampling, SamplingConfig):
        return sampling
    if sampling is not None and not isinstance(sampling, Mapping):
        raise ConfigError(f"sampling must be a SamplingConfig or a dict, got {type(sampling).__name__}")
    known = [f.name for f in fields(SamplingConfig)]
    unknown = sorted(set(sampling or {}) - set(known))
    if unknown:
        raise ConfigError(f"unknown sampling option(s) {unknown}; valid: {', '.join(known)}")
    return SamplingConfig(**{"seed": seed, **dict(sampling or {})})


def _make(kind: str, name: str, kwargs: Mapping[str, Any] | None) -> Any:
    obj = get_registry().create(kind, name, **dict(kwargs or {}))
    needed = ("explain",) if kind == "explainers" else ("score",)
    if not all(callable(getattr(obj, m, None)) for m in needed) or not getattr(obj, "name", None):
        plugin = get_registry().get(kind, name).plugin
        raise PluginError(
            f"plugin {plugin!r}: {kind[:-1]} {name!r} returned a {type(obj).__name__} without "
            f"a name and async {needed[0]}()"
        )
    return obj


def provenance(kind: str, name: str) -> dict[str, Any]:
    """Which plugin, distribution and version provide ``name`` (stored with every record)."""
    return dict(get_registry().provenance(kind, name))


def client_identity(client: Any) -> dict[str, Any] | None:
    """What about the LLM client changes answers (never a key): backend and model, where it is served
    (the cache namespace holds the base URL without credentials), and the response-cache mode."""
    if client is None:
        return None
    cache = getattr(client, "cache", None)
    return {
        "name": getattr(client, "name", type(client).__name__),
        "served_by": getattr(client, "cache_namespace", None),
        "cache_mode": getattr(cache, "mode", "off") if cache is not None else "off",
    }


def versions() -> dict[str, str | None]:
    """The versions of what a run depends on (recorded in run.json)."""
    import importlib.metadata
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "sae-lens-autointerp",
        "sae-lens",
        "transformer-lens",
        "torch",
        "transformers",
        "llama-cpp-python",
        "sentence-transformers",
        "openai",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _positive_int(value: Any, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}; {hint}")
    return value


@dataclass
class _Plan:
    """Everything a run resolved from its configuration before any expensive work."""

    config: RunConfig
    d_sae: int
    latents: list[int]
    given: dict[int, Explanation] | None
    scorer_names: list[str]
    explainer: str | None
    scorer_objs: dict[str, Any]
    explainer_obj: Any
    providers: dict[str, Any]
    sampling: SamplingConfig
    control_fractions: dict[str, float]
    usage: UsageTracker
    needs_llm: bool
    llm: Any  # a backend name, a client object, or None
    tokenizer: Any


class _Unset:
    def __repr__(self) -> str:
        return "<from the config>"


#: Default of run()'s keyword sugar: "take the field from ``config`` (or RunConfig's default)".
UNSET: Any = _Unset()


def build_config(config: RunConfig | None, options: Mapping[str, Any]) -> tuple[RunConfig, Any, Any]:
    """(the run's RunConfig, a client object passed as ``llm=`` or None, explanation objects or None): the
    keyword arguments given override ``config``'s fields (each validated by RunConfig)."""
    if config is not None and not isinstance(config, RunConfig):
        raise ConfigError(
            f"config must be a RunConfig, got {type(config).__name__} (RunConfig.from_json(path) reads one)"
        )
    opts = {k: v for k, v in options.items() if v is not UNSET}
    client = None
    if opts.get("llm") is not None and not isinstance(opts["llm"], str):
        client = opts["llm"]
        opts["llm"] = None
    objects = opts.get("explanations")
    if "harvest_kwargs" in opts:
        opts["harvest"] = dict(opts.pop("harvest_kwargs") or {})
    for name in ("llm_kwargs", "explainer_kwargs", "scorer_kwargs"):
        if name in opts and opts[name] is None:
            opts[name] = {}
    if "scorers" in opts and not isinstance(opts["scorers"], str):
        opts["scorers"] = tuple(opts["scorers"])
    base = config or RunConfig()
    seed = opts.get("seed", base.seed)
    if opts.get("sampling") is None:
        opts.pop("sampling", None)
        if config is None:  # the sampling seed follows the run's seed unless a sampling config says otherwise
            opts["sampling"] = SamplingConfig(seed=seed)
    elif not isinstance(opts["sampling"], SamplingConfig):
        opts["sampling"] = sampling_config(opts["sampling"], seed)
    if "latents" in opts and opts["latents"] is not None and not isinstance(opts["latents"], (int, numbers.Integral)):
        opts["latents"] = tuple(opts["latents"])
    try:
        return replace(base, **opts), client, objects
    except TypeError as exc:  # a wrong type the dataclass machinery met before our checks
        raise ConfigError(f"bad run option: {exc}") from None


#: The latent filters of SamplingConfig that a protocol may set (``latent_filters`` on its explainer / scorer).
FILTER_FIELDS = ("min_activating", "max_frequency")


def protocol_filters(sampling: SamplingConfig, objects: Mapping[Any, Any]) -> SamplingConfig:
    """A protocol that chooses its own latents (SAEBench scores dense and rare latents the core's filters
    skip) declares ``latent_filters = {"max_frequency": 1.0, ...}`` on its explainer or scorer. A filter still
    at its default takes the protocol's value; one the user set stays (with a warning when they differ); two
    protocols that disagree fail before any work."""
    default = SamplingConfig()
    wanted: dict[str, tuple[Any, str]] = {}
    for name, obj in objects.items():
        for key, value in (getattr(obj, "latent_filters", None) or {}).items():
            if key not in FILTER_FIELDS:
                raise PluginError(f"{name!r} declares latent_filters[{key!r}]; only {FILTER_FIELDS} can be set")
            if key in wanted and wanted[key][0] != value:
                raise ConfigError(
                    f"{wanted[key][1]!r} and {name!r} need different {key} ({wanted[key][0]} vs {value}); run them "
                    "separately"
                )
            wanted[key] = (value, str(name))
    changes = {}
    for key, (value, name) in wanted.items():
        current = getattr(sampling, key)
        if current == getattr(default, key):
            changes[key] = value
        elif current != value:
            log.warning("%s selects latents with %s=%s; keeping your %s=%s", name, key, value, key, current)
    return replace(sampling, **changes) if changes else sampling


def preflight(
    sae: Any,
    model: Any,
    config: RunConfig,
    *,
    store: LatentStore | None = None,
    llm: Any = None,
    explanations: Mapping[int, Any] | None = None,
) -> _Plan:
    """Check everything about a run that can be checked without a harvest or an LLM call, and resolve the
    plugins: a bad input fails in a second, before any expensive work (the CLI calls this before it
    harvests). ``llm``: a client object that replaces ``config.llm``; ``explanations``: Explanation objects
    that replace ``config.explanations`` (the texts)."""
    cfg = config
    d_sae = int(sae.cfg.d_sae)
    latent_list = check_latents(cfg.latents, d_sae)
    given = coerce_explanations(explanations if explanations is not None else cfg.explanations, d_sae)
    scorer_names = list(cfg.scorers)
    explainer = None if given is not None else cfg.explainer
    control_fractions = check_fraction(cfg.controls)
    unknown = sorted(set(control_fractions) - {"*"} - set(scorer_names))
    if unknown:
        raise ConfigError(f"controls names scorers this run does not use: {unknown}; scorers: {scorer_names}")
    sampling_cfg = cfg.sampling
    pool_sizes = (
        (store.settings.n_stratified, store.settings.n_random_windows)
        if store is not None
        else (cfg.harvest.n_stratified, cfg.harvest.n_random_windows)
    )
    sampling_cfg.check_against(*pool_sizes)
    if scorer_names and min(sampling_cfg.n_test_pos, sampling_cfg.n_test_neg) < 1:
        raise ConfigError("scoring needs test examples: n_test_pos and n_test_neg must be >= 1")
    # Resolve every plugin name before any expensive work, so a typo fails in a second.
    scorer_objs = {n: _make("scorers", n, cfg.scorer_kwargs.get(n)) for n in scorer_names}
    explainer_obj = _make("explainers", explainer, cfg.explainer_kwargs) if explainer else None
    sampling_cfg = protocol_filters(sampling_cfg, {explainer: explainer_obj, **scorer_objs})
    providers = {
        "scorers": {n: provenance("scorers", n) for n in scorer_names},
        "explainer": provenance("explainers", explainer) if explainer else None,
    }
    needs_llm = (
        explainer_obj is not None
        and getattr(explainer_obj, "needs_llm", True)
        or any(getattr(s, "needs_llm", True) for s in scorer_objs.values())
    )
    usage = UsageTracker(prices=cfg.prices, budget_tokens=cfg.budget_tokens, budget_dollars=cfg.budget_dollars)
    backend = llm if llm is not None else cfg.llm
    if llm is not None and (
        cfg.budget_tokens is not None or cfg.budget_dollars is not None or cfg.prices or cfg.llm_kwargs
    ):
        raise ConfigError(
            "budget_tokens / budget_dollars / prices / llm_kwargs apply when llm is a name; for a client object, "
            "give it a UsageTracker(prices=..., budget_tokens=...) instead"
        )
    if needs_llm and backend is None:
        raise ConfigError("these explainers / scorers need an LLM: pass llm='local', 'openai:MODEL', ...")
    tokenizer = as_subject(model).tokenizer if model is not None else None
    if tokenizer is None:
        raise ConfigError("pass model= (its tokenizer renders the examples)")
    if isinstance(backend, str):  # a bad llm= fails in a second, needed or not
        prefix = backend.partition(":")[0]
        if not prefix:
            raise ConfigError(f"llm={backend!r}: expected 'local', 'openai:MODEL', 'vllm:MODEL' or 'prefix:model'")
        get_registry().get("llm_clients", prefix)
    if cfg.out_dir is not None and Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise ConfigError(f"out_dir {cfg.out_dir} is a file; pass a folder (it is created if missing)")
    return _Plan(
        cfg,
        d_sae,
        latent_list,
        given,
        scorer_names,
        explainer,
        scorer_objs,
        explainer_obj,
        providers,
        sampling_cfg,
        control_fractions,
        usage,
        needs_llm,
        backend,
        tokenizer,
    )


def run(
    sae: Any,
    model: Any = None,
    dataset: Any = None,
    *,
    config: RunConfig | None = None,
    store: LatentStore | None = None,
    latents: Iterable[int] | int | None = UNSET,
    llm: Any = UNSET,
    explainer: str | None = UNSET,
    scorers: Iterable[str] = UNSET,
    explanations: Mapping[int, Any] | None = UNSET,
    explainer_kwargs: Mapping[str, Any] | None = UNSET,
    scorer_kwargs: Mapping[str, Mapping[str, Any]] | None = UNSET,
    llm_kwargs: Mapping[str, Any] | None = UNSET,
    sampling: SamplingConfig | Mapping[str, Any] | None = UNSET,
    harvest_kwargs: Mapping[str, Any] | None = UNSET,
    out_dir: str | os.PathLike[str] | None = UNSET,
    concurrency: int = UNSET,
    budget_tokens: int | None = UNSET,
    budget_dollars: float | None = UNSET,
    prices: Mapping[str, Any] | None = UNSET,
    seed: int = UNSET,
    controls: float | bool | Mapping[str, float] = UNSET,
    max_consecutive_failures: int = UNSET,
    heuristics: bool | float = UNSET,
    heuristic_explanations: bool = UNSET,
    executor: str = UNSET,
    ray_address: str | None = UNSET,
    workers: int | None = UNSET,
    worker_gpus: float | None = UNSET,
    progress: bool = True,
    runner_factory: Callable[[RunnerArgs], _Runner] | None = None,
) -> ScoreResult:
    """Explain (unless ``explanations`` are given) and score ``latents``; see README for every option.

    ``config``: a :class:`~sae_lens_autointerp.config.RunConfig`; every keyword given next to it overrides
    that field (without ``config`` the keywords build one; the defaults are RunConfig's). ``llm`` may also be a
    client object. ``controls``: the share of each latent's test examples also scored with another latent's
    explanation (True = 0.2, False = off; ``{"embedding": 1.0}`` per scorer, ``"*"`` for the rest).
    ``max_consecutive_failures``: infrastructure failures in a row (latents left incomplete) that stop the run.
    ``heuristics``: flag positional / unigram latents from the harvest's sums (True: threshold 0.9 of the
    activation variance, a number: that threshold, False: off; columns ``heuristic``, ``positional_r2``,
    ``unigram_r2`` of ``result.table``); ``heuristic_explanations=True`` gives flagged latents the ``top-tokens``
    explanation instead of an LLM call (``result.heuristics`` counts the calls saved). See ``heuristics.py``.
    ``executor="ray"`` (with ``ray_address``, ``workers``, ``worker_gpus``) shards the latents over Ray actors:
    call it through ``sae.autointerp.run`` (docs/scale.md). ``runner_factory``: how the distributed executor
    replaces the in-process runner (the same records, results.jsonl and run key).
    """
    options = dict(
        latents=latents,
        llm=llm,
        explainer=explainer,
        scorers=scorers,
        explanations=explanations,
        explainer_kwargs=explainer_kwargs,
        scorer_kwargs=scorer_kwargs,
        llm_kwargs=llm_kwargs,
        sampling=sampling,
        harvest_kwargs=harvest_kwargs,
        out_dir=out_dir,
        concurrency=concurrency,
        budget_tokens=budget_tokens,
        budget_dollars=budget_dollars,
        prices=prices,
        seed=seed,
        controls=controls,
        max_consecutive_failures=max_consecutive_failures,
        heuristics=heuristics,
        heuristic_explanations=heuristic_explanations,
        executor=executor,
        ray_address=ray_address,
        workers=workers,
        worker_gpus=worker_gpus,
    )
    cfg, client_object, objects = build_config(config, options)
    if cfg.executor != "local" and runner_factory is None:
        raise ConfigError(
            f"executor={cfg.executor!r} runs through sae.autointerp.run(...) (or sae_lens_autointerp.distributed.run); "
            "pipeline.run alone runs in this process"
        )
    if store is None and dataset is None and model is not None:
        dataset = default_dataset(sae)  # the SAE's training dataset, or an error naming dataset=
    if model is None and sae_provenance(sae)["model_name"]:
        model = default_model(sae)  # logged: the model the SAE was trained on
    plan = preflight(sae, model, cfg, store=store, llm=client_object, explanations=objects)
    d_sae, latent_list, given, scorer_names = plan.d_sae, plan.latents, plan.given, plan.scorer_names
    explainer, scorer_objs, explainer_obj, providers = (
        plan.explainer,
        plan.scorer_objs,
        plan.explainer_obj,
        plan.providers,
    )
    sampling_cfg, control_fractions, usage, needs_llm = (
        plan.sampling,
        plan.control_fractions,
        plan.usage,
        plan.needs_llm,
    )
    tokenizer, llm, seed = plan.tokenizer, plan.llm, cfg.seed
    own_client = isinstance(llm, str)
    client = None
    if needs_llm:  # resolved before any harvest
        client = get_client(llm, usage=usage, **cfg.llm_kwargs) if own_client else get_client(llm)
    if store is None:
        if dataset is None:
            raise ConfigError("pass model= and dataset= (or store= from sae.autointerp.harvest())")
        from .harvest import harvest

        store = harvest(sae, model, dataset, progress=progress, **cfg.harvest.to_dict())
    if store.d_sae != d_sae:
        raise ConfigError(f"the store has d_sae={store.d_sae} but the SAE has {d_sae}; harvest this SAE")
    flags, threshold = _heuristic_flags(store, latent_list, cfg)
    substitute = heuristic_substitute(cfg, flags, explainer_obj)
    # The run key: the RunConfig fields that change answers, the store, the client's identity and the
    # versions of the prompts and plugins (out_dir, latents, concurrency, budgets and harvest settings do not
    # change a latent's answers; the store key covers the harvest).
    ident = {
        "store": store.key,
        "explainer": explainer,
        "explainer_kwargs": cfg.explainer_kwargs or None,
        "explainer_prompt": getattr(explainer_obj, "prompt_id", None),
        "scorers": scorer_names,
        "scorer_kwargs": cfg.scorer_kwargs or None,
        "scorer_prompts": {n: getattr(o, "prompt_id", None) for n, o in scorer_objs.items()},
        "providers": providers,
        "sampling": asdict(sampling_cfg),
        "llm": client_identity(client),
        "seed": seed,
        "controls": control_fractions,
        "prompt_version": PROMPT_VERSION,
        "explanations": None if given is None else {k: v.text for k, v in sorted(given.items())},
    }
    if substitute is not None:  # only then do the heuristics change answers (old run keys stay as they were)
        ident["heuristic_explanations"] = {
            "threshold": threshold,
            "explainer": HEURISTIC_EXPLAINER,
            "prompt": getattr(substitute, "prompt_id", None),
            "provider": provenance("explainers", HEURISTIC_EXPLAINER),
        }
    run_key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    folder = Path(cfg.out_dir) if cfg.out_dir is not None else cache_dir("runs") / run_key[:16]
    results = ResultsFile(folder / "results.jsonl")
    tracker = client.usage if client is not None else usage
    args = RunnerArgs(plan, sae, model, store, client, client_object, objects, results, run_key, flags, progress)
    runner = make_runner(args) if runner_factory is None else runner_factory(args)

    async def run_and_close() -> str | None:
        try:
            return await runner.run(latent_list, cfg.concurrency)
        finally:  # on the run's own loop: its HTTP connections belong to it
            if client is not None and own_client:
                await client.aclose()

    # One run folder, one run: a concurrent run of the same key waits here, then finds its latents done.
    with folder_lock(folder, "run"):
        _claim(folder, run_key, ident)
        (folder / "run.json").write_text(
            json.dumps(
                {
                    "run_key": run_key,
                    "version": __version__,
                    "versions": versions(),
                    **ident,
                    "llm": getattr(client, "name", None),
                    "llm_identity": ident["llm"],
                    "store_path": str(store.path),  # "store" (from ident) is the store's key
                    "sae_source": sae_provenance(sae),  # SAELens release / id, Neuronpedia id, model, dataset
                    "config": cfg.to_dict(),
                    "format": CONFIG_FORMAT,
                },
                indent=1,
                default=str,
            )
        )
        # the pages' views of the model (token pieces, decoder logits and neighbours): cheap, once per run
        write_run_views(folder, model, sae, tokenizer, latent_list)
        stopped = run_sync(run_and_close())
    heuristics_summary = _heuristics_summary(flags, threshold, runner, tracker, explainer_obj, substitute)
    # read from the file on demand; records finished by an earlier run without the heuristics get them too
    records = results.result_records(run_key, latent_list).with_overlay(flags)
    summary = tracker.summary()
    if heuristics_summary:
        summary["heuristics"] = heuristics_summary
    (folder / "usage.json").write_text(json.dumps(summary, indent=1, default=str))
    return ScoreResult(
        records=records,
        path=folder / "results.jsonl",
        usage=summary,
        stopped=stopped,
        incomplete=dict(runner.incomplete),
        run_key=run_key,
        heuristics=heuristics_summary,
    )


@dataclass
class RunnerArgs:
    """What builds a run's runner: the plan, the subject, the store, the LLM client (``client_object``: the one
    passed as ``llm=``, ``explanations``: Explanation objects passed as such), the results file and run key."""

    plan: _Plan
    sae: Any
    model: Any
    store: LatentStore
    client: Any
    client_object: Any
    explanations: Any
    results: Any  # a ResultsFile (the distributed workers give theirs to the driver instead)
    run_key: str
    flags: dict[int, dict[str, Any]] | None
    progress: bool


def heuristic_substitute(cfg: RunConfig, flags: Any, explainer_obj: Any) -> Any:
    """The explainer that flagged latents get with ``heuristic_explanations=True`` (or None)."""
    if cfg.heuristic_explanations and flags is not None and explainer_obj is not None:
        return _make("explainers", HEURISTIC_EXPLAINER, None)
    return None


def make_runner(args: RunnerArgs, cls: type[_Runner] | None = None) -> _Runner:
    """The runner of one run (``cls``: a subclass of the in-process runner, e.g. the distributed one)."""
    plan, cfg = args.plan, args.plan.config
    tracker = args.client.usage if args.client is not None else plan.usage
    ctx = Context(
        llm=args.client,
        renderer=Renderer(plan.tokenizer),
        store=args.store,
        seed=cfg.seed,
        sae=args.sae,
        model=args.model,
        usage=tracker,
    )
    from .negatives import make_source

    negatives = make_source(plan.sampling.negatives, renderer=ctx.renderer, sae=args.sae, model=args.model)
    return (cls or _Runner)(
        ctx,
        plan.explainer_obj,
        plan.scorer_objs,
        plan.providers,
        plan.sampling,
        args.results,
        args.run_key,
        plan.given,
        args.progress,
        negatives,
        plan.control_fractions,
        cfg.max_consecutive_failures,
        args.flags,
        heuristic_substitute(cfg, args.flags, plan.explainer_obj),
    )


#: Latents per call of :func:`heuristic_flags` (bounds its transient tensors; the flags are the same).
HEURISTIC_CHUNK = 8192


def _heuristic_flags(
    store: LatentStore, latents: list[int], cfg: RunConfig
) -> tuple[dict[int, dict[str, Any]] | None, float | None]:
    """Per latent the record entry of the heuristic filters (None when off, or when the store predates them),
    and the threshold used."""
    if cfg.heuristics is False and not cfg.heuristic_explanations:
        return None, None
    threshold = DEFAULT_THRESHOLD if isinstance(cfg.heuristics, bool) else float(cfg.heuristics)
    if not has_heuristic_stats(store):
        log.warning(
            "the store %s has no per-position / per-token sums (harvested by an older version): no heuristic "
            "flags in this run; harvest again to get them",
            store.path,
        )
        return None, None
    out: dict[int, dict[str, Any]] = {}
    # in chunks: the sums of every run latent at once (float64 rows per position bucket and token) were a
    # transient of ~0.5 GiB at 100k latents, the run's peak; each latent's flags depend on its own rows only
    for i in range(0, len(latents), HEURISTIC_CHUNK):
        table = heuristic_flags(store, latents[i : i + HEURISTIC_CHUNK], threshold)
        for row in table.itertuples(index=False):
            out[int(row.latent)] = {
                "flag": row.flag,
                "positional_r2": _finite(row.positional_r2),
                "unigram_r2": _finite(row.unigram_r2),
                "unigram_complete": bool(row.unigram_complete),
                "tokens": list(row.tokens),
                "positions": list(row.positions),
                "threshold": threshold,
            }
    return out, threshold


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _heuristics_summary(
    flags: dict[int, dict[str, Any]] | None,
    threshold: float | None,
    runner: _Runner,
    tracker: UsageTracker,
    explainer_obj: Any,
    substitute: Any,
) -> dict[str, Any]:
    """What the heuristic filters found, and (``heuristic_explanations``) the explainer calls they saved: one
    per latent explained by the heuristic instead of an LLM explainer in this run, and the tokens those calls
    would have cost at this run's mean tokens per LLM explanation (None when no latent was explained by the LLM)."""
    if flags is None:
        return {}
    import pandas as pd

    out: dict[str, Any] = {"threshold": threshold}
    out.update(flag_summary(pd.DataFrame({"flag": [f["flag"] for f in flags.values()]})))
    out["heuristic_explanations"] = substitute is not None
    saves_llm = substitute is not None and bool(getattr(explainer_obj, "needs_llm", True))
    n_saved = len(runner.heuristic_explained) if saves_llm else 0
    # latents whose record was written left the tracker (the runner counted them); the others are still in it
    explained = [
        totals
        for (stage, latent), totals in tracker.by_latent().items()
        if stage == "explain" and latent is not None and latent not in runner.heuristic_explained
    ]
    n_explained = len(explained) + runner.n_explained
    tokens = sum(t.total_tokens for t in explained) + runner.explain_tokens
    per_call = tokens / n_explained if n_explained else None
    out["explained_by_heuristic"] = len(runner.heuristic_explained)
    out["llm_calls_saved"] = n_saved
    out["tokens_saved_estimate"] = None if per_call is None or not saves_llm else round(n_saved * per_call)
    return out


def _claim(folder: Path, run_key: str, ident: dict[str, Any]) -> None:
    """A folder that holds another run's results is refused, naming both runs and what differs."""
    run_file = folder / "run.json"
    if not run_file.is_file():
        return
    try:
        previous = json.loads(run_file.read_text())
    except ValueError:
        return
    other = previous.get("run_key")
    if not other or other == run_key:
        return

    def canonical(value: Any) -> str:  # as run.json holds it (JSON object keys are strings)
        return json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True)

    differ = sorted(k for k in ident if canonical(previous.get(k)) != canonical(ident[k]))
    raise ConfigError(
        f"{folder} holds the results of another run ({other[:12]}, explainer {previous.get('explainer')!r}, scorers "
        f"{previous.get('scorers')}); this run is {run_key[:12]} and differs in: {', '.join(differ) or 'its identity'}. "
        f"Results of two runs are never mixed: pass another out_dir, or delete {folder}"
    )


class _Incomplete(Exception):
    """A latent could not finish because of the infrastructure (never the judge)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage, self.error = stage, error


@dataclass
class _Prepared:
    sample: LatentSample
    explanation: Explanation | None
    scores: dict[str, Any] = field(default_factory=dict)  # finished in an earlier, incomplete attempt
    controls: dict[str, Any] = field(default_factory=dict)


class _Runner:
    def __init__(
        self,
        ctx: Context,
        explainer: Any,
        scorers: dict[str, Any],
        providers: dict[str, Any],
        sampling: SamplingConfig,
        results: ResultsFile,
        run_key: str,
        given: dict[int, Explanation] | None,
        progress: bool,
        negatives: Any,
        control_fractions: dict[str, float],
        max_consecutive_failures: int,
        heuristics: dict[int, dict[str, Any]] | None = None,
        heuristic_explainer: Any = None,
    ) -> None:
        self.ctx, self.explainer, self.scorers, self.sampling = ctx, explainer, scorers, sampling
        self.providers, self.negatives = providers, negatives
        self.results, self.run_key, self.given, self.progress = results, run_key, given, progress
        self.control_fractions, self.max_failures = control_fractions, max_consecutive_failures
        self.heuristics, self.heuristic_explainer = heuristics, heuristic_explainer
        self.heuristic_explained: set[int] = set()  # latents this run explained by the heuristic explainer
        self.stopped: str | None = None
        self.incomplete: dict[int, str] = {}
        self.written: set[int] = set()  # latents of the current block written as finished
        # the explain-stage tokens of latents explained by the LLM, once their usage rows left the tracker
        self.explain_tokens, self.n_explained = 0, 0
        self._failures_in_a_row = 0
        self._bar: Any = None

    async def run(self, latents: list[int], concurrency: int) -> str | None:
        """Run every latent not finished yet; the records go to ``self.results`` (nothing is kept here)."""
        from tqdm.auto import tqdm

        self.results.repair()
        finished = self.results.finished(self.run_key)
        partial = self.results.partial(self.run_key)
        is_done = np.isin(np.asarray(latents, dtype=np.int64), finished)
        del finished
        n_done = int(is_done.sum())
        self._bar = tqdm(
            total=len(latents), initial=n_done, unit="latent", desc="autointerp", disable=not self.progress
        )
        try:
            for i in range(0, len(latents), CONTROL_BLOCK):
                block, block_done = latents[i : i + CONTROL_BLOCK], is_done[i : i + CONTROL_BLOCK]
                todo = [lat for lat, d in zip(block, block_done, strict=True) if not d]
                if not todo:
                    continue
                if self.stopped:
                    for lat in todo:
                        self.incomplete.setdefault(lat, f"not started: {self.stopped}")
                    continue
                prepared = await self._prepare_block(todo, partial, concurrency)
                texts: dict[int, str | None] = dict(
                    self.results.explanation_texts(
                        self.run_key, [x for x, d in zip(block, block_done, strict=True) if d]
                    )
                )
                texts.update(
                    {
                        lat: p.explanation.text
                        for lat, p in prepared.items()
                        if p.explanation is not None and not p.explanation.failed
                    }
                )
                pool: dict[int, str] = {k: v for k, v in texts.items() if v}
                await self._finish_block(prepared, [lat for lat in todo if lat in prepared], pool, concurrency)
                for lat in todo:
                    if lat not in self.written and lat not in self.incomplete:
                        self.incomplete[lat] = f"not started: {self.stopped}" if self.stopped else "not started"
                self.written.clear()
                self.results.sync()
        finally:
            self.results.close()
            self._bar.close()
        return self.stopped

    async def _prepare_block(
        self, todo: list[int], partial: dict[int, dict[str, Any]], concurrency: int
    ) -> dict[int, _Prepared]:
        """Sample and explain a block's latents (what a latent finished before is reused)."""
        prepared: dict[int, _Prepared] = {}

        async def prepare(latent: int) -> None:
            item = await self._prepare(latent, partial.get(latent))
            if item is not None:
                prepared[latent] = item

        await _bounded(todo, prepare, concurrency, lambda: self.stopped is not None)
        return prepared

    async def _finish_block(
        self, prepared: dict[int, _Prepared], latents: list[int], pool: dict[int, str], concurrency: int
    ) -> None:
        """Score a block's latents and their controls (control explanations from ``pool``)."""

        async def finish(latent: int) -> None:
            await self._finish(latent, prepared[latent], pool)

        await _bounded(latents, finish, concurrency, lambda: self.stopped is not None)

    # ------------------------------------------------------------------ per latent

    def _base(self, latent: int, sample: LatentSample) -> dict[str, Any]:
        base = {"run_key": self.run_key, "latent": latent, "stats": sample.stats}
        if self.heuristics is not None:
            base["heuristic"] = self.heuristics[latent]
        return base

    def _append(self, record: dict[str, Any]) -> None:
        """Append ``record``, encoded once. Where a plugin's output cannot be written (not JSON, a NaN), that
        scorer's entry (or control) becomes the error it is, naming the plugin, and the rest is kept."""
        try:
            line = encode_record(record)
        except (TypeError, ValueError):
            _quarantine(record)
            line = encode_record(record)  # anything still failing is a bug of ours: it raises
        self.results.append(record, line)

    def _write(self, record: dict[str, Any]) -> None:
        self._append(record)
        self.written.add(record["latent"])
        self._failures_in_a_row = 0
        self._bar.update(1)

    def _failed(self, latent: int, record: dict[str, Any], failure: _Incomplete) -> None:
        """Keep what the latent finished (an ``incomplete`` record the next run resumes from) and count the
        infrastructure failure; trip the breaker after too many in a row."""
        record["incomplete"] = {"stage": failure.stage, "error": f"{type(failure.error).__name__}: {failure.error}"}
        self._append(record)
        self.incomplete[latent] = str(failure)
        if isinstance(failure.error, BudgetExceeded):
            self.stopped = self.stopped or str(failure.error)
            return
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= self.max_failures and not self.stopped:
            who = (client_identity(self.ctx.llm) or {}).get("served_by") or getattr(self.ctx.llm, "name", "?")
            self.stopped = (
                f"stopped after {self._failures_in_a_row} latents in a row failed on the LLM backend {who}: "
                f"{failure}. Finished latents and every answer already received are kept; rerun the same command "
                "once the backend works again and only the unfinished latents are redone."
            )

    async def _prepare(self, latent: int, partial: dict[str, Any] | None) -> _Prepared | None:
        args = (self.ctx.store, latent, self.sampling, self.negatives)
        if getattr(self.negatives, "inline", False):
            sample = sample_latent(*args)
        else:
            sample = await asyncio.to_thread(sample_latent, *args)
        if sample.skipped:
            self._write({**self._base(latent, sample), "skipped": sample.skipped})
            return None
        if partial is not None and partial.get("explanation") is not None:
            return _Prepared(
                sample,
                _explanation_from(partial["explanation"]),
                dict(partial.get("scores") or {}),
                dict(partial.get("controls") or {}),
            )
        explanation: Explanation | None = None
        if self.given is not None:
            explanation = self.given.get(latent)
            if explanation is None:
                self._write({**self._base(latent, sample), "skipped": "no explanation given for this latent"})
                return None
        elif self.explainer is not None:
            try:
                flag = (self.heuristics or {}).get(latent, {}).get("flag")
                if self.heuristic_explainer is not None and flag is not None:
                    explanation = await self._explain(sample, self.heuristic_explainer, HEURISTIC_EXPLAINER)
                    self.heuristic_explained.add(latent)
                else:
                    explanation = await self._explain(sample)
            except LLMError as exc:
                self._failed(latent, self._base(latent, sample), _Incomplete("explain", exc))
                return None
        return _Prepared(sample, explanation)

    async def _finish(self, latent: int, item: _Prepared, pool: dict[int, str]) -> None:
        start = time.perf_counter()
        sample, explanation = item.sample, item.explanation
        record = self._base(latent, sample)
        record["explanation"] = explanation.to_dict() if explanation is not None else None
        record["examples"] = {
            "explain": [e.token_id for e in sample.explain],
            "test_pos": [e.token_id for e in sample.test_pos],
            "test_neg": [e.token_id for e in sample.test_neg],
            "excluded_overlap": dict(sample.holdout),
        }
        scores, controls = dict(item.scores), dict(item.controls)
        usable = explanation is not None and not explanation.failed
        controlled = usable and any(fraction_for(self.control_fractions, n) > 0 for n in self.scorers)
        source = choose_control(latent, pool, self.ctx.seed) if controlled else None
        failure: _Incomplete | None = None
        for name, scorer in self.scorers.items():
            if failure is not None and getattr(scorer, "needs_llm", True):
                continue  # the backend is failing: skip this latent's other LLM scorers, still run local ones
            fraction = fraction_for(self.control_fractions, name)
            wants_control = getattr(scorer, "needs_explanation", True) and fraction > 0 and usable
            try:
                if name not in scores:
                    scores[name] = await self._score(name, scorer, sample, explanation)
                if wants_control and name not in controls:
                    controls[name] = await self._control(name, scorer, sample, source, pool, fraction, scores[name])
            except LLMError as exc:
                failure = _Incomplete(name, exc)
                if isinstance(exc, BudgetExceeded):
                    break
        record["scores"], record["controls"] = scores, controls
        if failure is not None:
            self._failed(latent, record, failure)
            return
        usage = self.ctx.usage.for_latent(latent) if self.ctx.usage is not None else {}
        record["usage"] = {stage: totals.as_dict() for stage, totals in usage.items()}
        record["seconds"] = round(time.perf_counter() - start, 3)
        self._write(record)
        if self.ctx.usage is not None:  # the record holds them now: keep the tracker small on long runs
            rows = self.ctx.usage.forget_latent(latent)
            if "explain" in rows and latent not in self.heuristic_explained:
                self.explain_tokens += rows["explain"].total_tokens
                self.n_explained += 1

    async def _explain(self, sample: LatentSample, explainer: Any = None, registered: str | None = None) -> Explanation:
        """The explainer's answer; a crash or a wrong return type becomes a failed explanation naming the plugin
        (never scored), so one broken explainer plugin does not take the run down. Transport errors and the
        budget propagate (the latent stays incomplete). ``explainer`` (registered under the name
        ``registered``) replaces the run's explainer (the heuristic explanations)."""
        explainer = explainer if explainer is not None else self.explainer
        name = getattr(explainer, "name", "?")
        provider = self.providers["explainer"] if registered is None else provenance("explainers", registered)
        try:
            out = await explainer.explain(sample, self.ctx)
        except LLMError:
            raise
        except Exception as exc:
            error = f"crashed: {type(exc).__name__}: {exc}"
        else:
            if isinstance(out, Explanation):
                return replace(out, provider=provider)
            error = f"returned {type(out).__name__}, not an Explanation"
        who = f"plugin {provider['plugin']!r}, " if provider else ""
        return Explanation(
            sample.latent, "", str(name), failed=True, error=f"{who}explainer {name!r} {error}", provider=provider
        )

    async def _score(
        self, name: str, scorer: Any, sample: LatentSample, explanation: Explanation | None, ctx: Context | None = None
    ) -> dict[str, Any]:
        """One scorer's output as a record entry (with its provider and its judge). A crash or an output that
        breaks the contract becomes an entry with ``error`` naming the plugin; LLM errors propagate."""
        provider = self.providers["scorers"][name]
        needs_llm = getattr(scorer, "needs_llm", True)
        extra = {
            "provider": provider,
            "judge_kind": "llm" if needs_llm else "local",
            "judge": getattr(self.ctx.llm, "name", None) if needs_llm else None,
            "needs_explanation": bool(getattr(scorer, "needs_explanation", True)),
        }
        if getattr(scorer, "needs_explanation", True) and (explanation is None or explanation.failed):
            why = "no explanation" if explanation is None else f"explanation failed: {explanation.error}"
            return {**ScorerOutput(scorer=name, score=None, n_examples=0, n_failed=0, error=why).to_dict(), **extra}
        checked: dict[str, Any] = {}  # out.to_dict(), once _check_output has made it
        try:
            out = await scorer.score(sample, explanation, ctx or self.ctx)
        except LLMError:
            raise
        except Exception as exc:  # one broken scorer must not take the others down
            out = ScorerOutput(
                scorer=name,
                score=None,
                n_examples=0,
                n_failed=0,
                error=f"plugin {provider['plugin']!r}, scorer {name!r} crashed: {type(exc).__name__}: {exc}",
            )
        else:
            problem, checked = _check_output(out)
            if problem is not None:
                out = ScorerOutput(
                    scorer=name,
                    score=None,
                    n_examples=0,
                    n_failed=0,
                    error=f"plugin {provider['plugin']!r}: scorer {name!r} {problem}",
                )
        entry = {**(checked if checked else out.to_dict()), **extra, "scorer": name}
        if entry.get("score") is not None and entry.get("metric") is None:
            entry.update(_guess_headline(entry))
        return entry

    async def _control(
        self,
        name: str,
        scorer: Any,
        sample: LatentSample,
        source: int | None,
        pool: dict[int, str],
        fraction: float,
        main: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The scorer on a subset of the examples ``main`` (its score) judged, with another latent's explanation."""
        if source is None:
            return {"score": None, "error": "no other latent of this block of the run has an explanation"}
        subset = control_sample(sample, fraction, self.ctx.seed, scored_examples(main))
        ctx = replace(self.ctx, llm=RelabelledClient(self.ctx.llm)) if self.ctx.llm is not None else self.ctx
        entry = await self._score(name, scorer, subset, control_explanation(sample.latent, source, pool[source]), ctx)
        return {
            "explanation_from": source,
            "explanation": pool[source],
            **{
                k: entry.get(k)
                for k in ("score", "metric", "low", "high", "chance", "n_examples", "n_failed", "error", "predictions")
            },
        }


async def _bounded(items: list[int], job: Any, concurrency: int, stop: Any) -> None:
    """Run ``job(item)`` for every item with at most ``concurrency`` in flight, until ``stop()``."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            if stop():
                return
            await job(item)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))


def _usable_text(explanation: Mapping[str, Any] | None) -> str | None:
    if not explanation or explanation.get("failed"):
        return None
    return explanation.get("text") or None


def _explanation_from(d: Mapping[str, Any]) -> Explanation:
    known = {f.name for f in fields(Explanation)}
    e = {k: v for k, v in d.items() if k in known}
    e["examples_shown"] = tuple(e.get("examples_shown") or ())
    return Explanation(**e)


def _guess_headline(entry: Mapping[str, Any]) -> dict[str, Any]:
    """For plugins that do not declare their headline: the metric whose value equals the score, if any."""
    m = entry.get("metrics") or {}
    for key in ("balanced_accuracy", "accuracy", "pearson", "auc", "mean_diff"):
        if key in m and m[key] is not None and entry.get("score") is not None and abs(m[key] - entry["score"]) < 1e-12:
            return {
                "metric": key,
                "low": m.get(f"{key}_low"),
                "high": m.get(f"{key}_high"),
                "chance": m.get(f"chance_{key}"),
            }
    return {}


def _check_output(out: Any) -> tuple[str | None, dict[str, Any]]:
    """What is wrong with a scorer's return value (the plugin contract), or None; and ``out.to_dict()`` once it
    is known to be a ScorerOutput (checked, so the caller need not copy it again). Whether it can be written
    to results.jsonl is checked when the record is written (:func:`_quarantine`): encoded once, not twice."""
    if not isinstance(out, ScorerOutput):
        return f"returned {type(out).__name__}, not a ScorerOutput", {}
    score = out.score
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score)
    ):
        return f"returned score={score!r}; a score is a finite number or None", {}
    for field_name in ("n_examples", "n_failed"):
        value = getattr(out, field_name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            return f"returned {field_name}={value!r}; it must be a non-negative integer", {}
    return None, out.to_dict()


def _unwritable(entry: Any) -> str | None:
    """Why ``entry`` cannot be written to results.jsonl, or None."""
    try:
        encode_record(entry)
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _quarantine(record: dict[str, Any]) -> None:
    """Replace each scorer entry and control of ``record`` that cannot be written with the error it is."""
    for name, entry in list((record.get("scores") or {}).items()):
        problem = _unwritable(entry)
        if problem is None:
            continue
        provider = entry.get("provider") or {}
        error = (
            f"plugin {provider.get('plugin')!r}: scorer {name!r} returned a ScorerOutput that cannot be written to "
            f"results.jsonl: {problem}"
        )
        kept = {k: entry.get(k) for k in ("provider", "judge_kind", "judge", "needs_explanation")}
        failed = ScorerOutput(scorer=name, score=None, n_examples=0, n_failed=0, error=error).to_dict()
        record["scores"][name] = {**failed, **kept, "scorer": name}
    for name, control in list((record.get("controls") or {}).items()):
        problem = _unwritable(control)
        if problem is not None:
            record["controls"][name] = {
                "explanation_from": control.get("explanation_from"),
                "explanation": control.get("explanation"),
                "score": None,
                "error": f"scorer {name!r} returned a control that cannot be written to results.jsonl: {problem}",
            }
