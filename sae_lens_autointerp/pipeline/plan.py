"""A run's plan: its options checked and resolved before any expensive work.

:func:`build_config` turns ``run()``'s keyword arguments (and ``config=``) into one :class:`RunConfig`;
:func:`preflight` checks everything about a run that can be checked without a harvest or an LLM call and
resolves the plugins into a frozen :class:`Plan`, so a bad input fails in a second (the CLI and ``compare``
call it before they harvest).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..config import RunConfig, RunOptions, option_names
from ..controls import check_fraction
from ..errors import ConfigError, PluginError
from ..harvest.store import LatentStore
from ..llm import UsageTracker
from ..options import check_names
from ..records import Explanation
from ..registry import get_registry
from ..sampling import SamplingConfig
from ..subjects import as_subject

log = logging.getLogger("sae_lens_autointerp.pipeline")

#: The keyword arguments of ``run()`` that are RunConfig fields.
RUN_OPTIONS = option_names(RunOptions)
#: Old names still taken, with a FutureWarning: {old: the option's name}.
RENAMED = {"harvest_kwargs": "harvest"}


@dataclass(frozen=True)
class Plan:
    """Everything a run resolved from its configuration before any expensive work."""

    config: RunConfig
    d_sae: int
    latents: list[int]
    given: dict[int, Explanation] | None  # explanations to score instead of explaining
    scorer_names: list[str]
    explainer: str | None
    scorer_objs: dict[str, Any]
    explainer_obj: Any
    providers: dict[str, Any]  # which plugin provides each scorer and the explainer
    sampling: SamplingConfig  # with the protocols' latent filters
    control_fractions: dict[str, float]
    usage: UsageTracker  # the usage of a client built from a name
    needs_llm: bool
    llm: Any  # a backend name, a client object, or None
    tokenizer: Any

    @property
    def client_object(self) -> Any:
        """The client object passed as ``llm=`` (None when the LLM is a backend name, or there is none)."""
        return None if self.llm is None or isinstance(self.llm, str) else self.llm


def check_run_options(options: Mapping[str, Any], where: str, keywords: Iterable[str] = ()) -> dict[str, Any]:
    """``options`` with old names mapped to the option's name (and a FutureWarning); an unknown name is a
    :class:`ConfigError` naming the closest of the run options and ``keywords`` (the entry point's own)."""
    out = dict(options)
    for old, new in RENAMED.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}() got both {old}= and {new}=; {old} is the old name of {new}: pass {new}= only")
        warnings.warn(f"{where}(): {old}= is deprecated; pass {new}= (the same option)", FutureWarning, stacklevel=3)
        out[new] = out.pop(old)
    check_names(out, sorted(RUN_OPTIONS | set(keywords)), where)
    return out


def build_config(config: RunConfig | None, options: Mapping[str, Any]) -> tuple[RunConfig, Any, Any]:
    """(the run's RunConfig, a client object passed as ``llm=`` or None, explanation objects or None): the
    keyword arguments given override ``config``'s fields (each validated by RunConfig)."""
    if config is not None and not isinstance(config, RunConfig):
        raise ConfigError(
            f"config must be a RunConfig, got {type(config).__name__} (RunConfig.from_json(path) reads one)"
        )
    opts = check_run_options(options, "run")
    client = None
    if opts.get("llm") is not None and not isinstance(opts["llm"], str):
        client = opts["llm"]
        opts["llm"] = None
    objects = opts.get("explanations")
    if "harvest" in opts and opts["harvest"] is None:
        opts["harvest"] = {}
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
    latents = opts.get("latents")
    if latents is not None and not isinstance(latents, (int, numbers.Integral, str, bytes, Mapping)):
        opts["latents"] = tuple(opts["latents"])
    try:
        return replace(base, **opts), client, objects
    except TypeError as exc:  # a wrong type the dataclass machinery met before our checks
        raise ConfigError(f"bad run option: {exc}") from None


def sampling_config(sampling: SamplingConfig | Mapping[str, Any] | None, seed: int) -> SamplingConfig:
    """``sampling=`` as a :class:`SamplingConfig` (a mapping's keys are checked by name)."""
    if isinstance(sampling, SamplingConfig):
        return sampling
    if sampling is not None and not isinstance(sampling, Mapping):
        raise ConfigError(f"sampling must be a SamplingConfig or a dict, got {type(sampling).__name__}")
    check_names(sampling or {}, [f.name for f in fields(SamplingConfig)], "sampling")
    return SamplingConfig(**{"seed": seed, **dict(sampling or {})})


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


def make_plugin(kind: str, name: str, kwargs: Mapping[str, Any] | None) -> Any:
    """The explainer or scorer registered as ``name``, checked against the plugin contract."""
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


def backend_name(client: Any) -> str:
    """Where the LLM client's answers come from (its served-by namespace, else its name), for messages."""
    return str((client_identity(client) or {}).get("served_by") or getattr(client, "name", "?"))


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


def check_llm_options(backend: str, llm_kwargs: Mapping[str, Any]) -> None:
    """Build the client of ``backend`` with ``llm_kwargs`` once and drop it: every backend checks its options
    in its constructor (a server listed twice, an unknown option, a bad timeout) and connects or loads its model
    only on first use, so a bad option fails here, before the harvest, not after it."""
    from ..registry import get_client

    get_client(backend, usage=UsageTracker(), **dict(llm_kwargs))


def check_out_dir(out_dir: str | None) -> None:
    """``out_dir`` is a folder or can be made one: neither it nor any folder above it is a file."""
    if out_dir is None:
        return
    path = Path(out_dir)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"is under {part}, which is a file"
            raise ConfigError(f"out_dir {out_dir} {where}; pass a folder (it is created if missing)")


def check_ray_address(cfg: RunConfig) -> None:
    """A ``ray://`` address needs the Ray client (``ray[client]``, which brings grpc): say so before any work."""
    import importlib.util

    address = cfg.ray_address or ""
    if cfg.executor == "ray" and address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ConfigError(
            f"ray_address {address!r} joins a cluster through the Ray client, which is not installed: "
            "pip install 'ray[client]' (or run on the cluster's head with ray_address='auto')"
        )


def preflight(
    sae: Any,
    model: Any,
    config: RunConfig,
    *,
    store: LatentStore | None = None,
    llm: Any = None,
    explanations: Mapping[int, Any] | None = None,
) -> Plan:
    """Check everything about a run that can be checked without a harvest or an LLM call, and resolve the
    plugins: a bad input fails in a second, before any expensive work (the CLI calls this before it
    harvests). ``llm``: a client object that replaces ``config.llm``; ``explanations``: Explanation objects
    that replace ``config.explanations`` (the texts)."""
    cfg = config
    d_sae = int(sae.cfg.d_sae)
    given = coerce_explanations(explanations if explanations is not None else cfg.explanations, d_sae)
    # explanations without latents score those latents (as sae.score does), not every latent of the SAE
    latent_list = check_latents(sorted(given) if cfg.latents is None and given else cfg.latents, d_sae)
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
    scorer_objs = {n: make_plugin("scorers", n, cfg.scorer_kwargs.get(n)) for n in scorer_names}
    explainer_obj = make_plugin("explainers", explainer, cfg.explainer_kwargs) if explainer else None
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
        if needs_llm:
            check_llm_options(backend, cfg.llm_kwargs)
    check_out_dir(cfg.out_dir)
    check_ray_address(cfg)
    return Plan(
        config=cfg,
        d_sae=d_sae,
        latents=latent_list,
        given=given,
        scorer_names=scorer_names,
        explainer=explainer,
        scorer_objs=scorer_objs,
        explainer_obj=explainer_obj,
        providers=providers,
        sampling=sampling_cfg,
        control_fractions=control_fractions,
        usage=usage,
        needs_llm=bool(needs_llm),
        llm=backend,
        tokenizer=tokenizer,
    )
