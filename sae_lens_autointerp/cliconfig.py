"""The run config the command line builds: a config file (a RunConfig file or an earlier run's run.json) with
the flags given explicitly merged in, each command's defaults, and what a file may not choose on its own (where
your API key goes, which cluster runs)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import RunConfig

SOURCE_DEFAULTS = {
    "sae": "embedded",
    "sae_id": None,
    "model": "embedded",
    "model_kind": "auto",
    "dataset": "embedded",
}
#: Each command's own defaults for config fields (the rest are RunConfig's / HarvestConfig's).
RUN_DEFAULTS: dict[str, Any] = {"out_dir": "autointerp-out"}
COMPARE_DEFAULTS: dict[str, Any] = {
    "llm": "local",
    "scorers": ("embedding", "detection"),
    "out_dir": "autointerp-compare",
    "harvest": {"n_tokens": 60_000, "ctx_len": 128},
}
HARVEST_DEFAULTS: dict[str, Any] = {"n_tokens": 200_000}
#: Fields that a flag given next to ``--config`` merges into (the others it replaces).
MERGED = ("harvest", "sampling", "llm_kwargs")


def base_urls(value: str) -> str | list[str]:
    """``--base-url a,b,c``: a fleet of servers (each request to the least-loaded one)."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    return urls[0] if len(urls) == 1 else urls


def shortcuts(args: argparse.Namespace, options: dict[str, Any], n_test: int | None = None) -> dict[str, Any]:
    """``options`` with the short forms folded in: ``--n-explain`` / ``--n-test`` (sampling), ``--base-url``
    (llm_kwargs) and ``--ray ADDRESS`` (executor and ray_address)."""
    sampling = dict(options.get("sampling") or {})
    if args.n_explain is not None:
        sampling["n_explain"] = args.n_explain
    n_test = args.n_test if args.n_test is not None else n_test
    if n_test is not None:
        sampling.update(n_test_pos=n_test, n_test_neg=n_test)
    if sampling:
        options["sampling"] = sampling
    if getattr(args, "base_url", None):
        options["llm_kwargs"] = {**options.get("llm_kwargs", {}), "base_url": base_urls(args.base_url)}
    if getattr(args, "ray", None) is not None:
        options.update(executor="ray", ray_address=args.ray)
    return options


def run_config(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The RunConfig of ``sae-autointerp run``, and where its SAE / model / data come from: from ``--config``
    (a RunConfig file or an earlier run's run.json) with the flags given explicitly overriding its fields (and
    merged into its harvest, sampling and llm_kwargs), else from the flags."""
    from dataclasses import replace

    from .cliargs import RUN_FLAGS, given
    from .config import RunConfig, read_config_file
    from .pipeline import build_config

    explicit = {k: getattr(args, k) for k in SOURCE_DEFAULTS if getattr(args, k) is not None}
    options = shortcuts(args, given(args, RUN_FLAGS))
    if not args.config:
        cfg, _, _ = build_config(None, {**RUN_DEFAULTS, **options})
        return cfg, {**SOURCE_DEFAULTS, **explicit}
    document = read_config_file(args.config)
    cfg = trusted(RunConfig.from_dict(document["config"]), args)
    source = {**SOURCE_DEFAULTS, **saved_source(document.get("source"), args.config), **explicit}
    if "harvest" in options:
        options["harvest"] = replace(cfg.harvest, **options["harvest"])
    if "sampling" in options:
        options["sampling"] = replace(cfg.sampling, **options["sampling"])
    if "llm_kwargs" in options:
        options["llm_kwargs"] = {**cfg.llm_kwargs, **options["llm_kwargs"]}
    cfg, _, _ = build_config(cfg, options)
    return cfg, source


def saved_source(saved: Any, path: str) -> dict[str, Any]:
    """run.json's ``source`` (how the CLI loaded the SAE, model and data): names, checked before any loading."""
    from .errors import ConfigError

    if saved is None:
        return {}
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(k), str) or saved.get(k) is None for k in SOURCE_DEFAULTS
    ):
        raise ConfigError(
            f"{path}: 'source' must map sae / sae_id / model / model_kind / dataset to names, got {saved!r}; "
            "fix it or drop it (the flags --sae, --model and --dataset say the same)"
        )
    return {k: v for k, v in saved.items() if k in SOURCE_DEFAULTS and v is not None}


def servers(base_url: Any) -> set[str]:
    """The servers ``base_url`` names (one URL, a comma list, a list of URLs or of dicts), without credentials."""
    from .llm.openai_client import public_url

    if isinstance(base_url, str):
        items: list[Any] = [u for u in base_url.split(",") if u.strip()]
    elif isinstance(base_url, dict):
        items = [base_url]
    else:
        items = list(base_url or [])
    urls = [i.get("base_url") if isinstance(i, dict) else i for i in items]
    return {public_url(u.strip()) if isinstance(u, str) else repr(u) for u in urls}


def trusted(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """A config file chooses what runs, never where your credentials go: the client sends ``OPENAI_API_KEY``
    to its base URL, so a ``base_url`` from the file must be one you gave (``--base-url`` or ``OPENAI_BASE_URL``),
    and the file's ``executor`` / ``ray_address`` (a cluster to join) apply only with ``--ray``."""
    import logging
    import os

    from .errors import ConfigError

    from_file = cfg.llm_kwargs.get("base_url")
    if from_file and not getattr(args, "base_url", None):
        env = os.environ.get("OPENAI_BASE_URL")
        if not env or servers(from_file) != servers(env):
            named = ", ".join(sorted(servers(from_file)))
            raise ConfigError(
                f"{args.config} sends the LLM requests (and your API key) to {named}, a server the file names; "
                f"pass --base-url URL to confirm it (or to choose another)"
            )
    if args.ray is None and (cfg.executor != "local" or cfg.ray_address is not None):
        logging.getLogger("sae_lens_autointerp.cli").warning(
            "%s asks for executor=%r at ray_address=%r; ignored (this run is local): pass --ray ADDRESS to run on Ray",
            args.config,
            cfg.executor,
            cfg.ray_address,
        )
        cfg = cfg.with_(executor="local", ray_address=None, workers=None, worker_gpus=None)
    return cfg
