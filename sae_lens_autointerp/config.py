"""Typed configuration of a harvest and of a run, validated on construction and saved whole in run.json.

In the style of SAELens's config dataclasses: plain, typed, frozen, with ``to_dict`` / ``from_dict`` and JSON
round trips. ``sae.autointerp.run(model, dataset, config=RunConfig(...))``; the keyword arguments of
``explain`` / ``score`` / ``run`` / ``harvest`` are sugar that builds the same objects, and a keyword given
next to ``config=`` overrides that field. ``RunConfig.from_json(path)`` reads a config file or a run's
``run.json``, so a run folder can reproduce itself (``sae-autointerp run --config runs/x/run.json``).

Client objects (``llm=MyClient()``) and loaded models are not configuration: they are passed to ``run``
beside the config, and ``run.json`` records the client's identity (backend, model, where it is served).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .controls import check_fraction
from .errors import ConfigError
from .harvest.config import EXECUTORS, HarvestConfig
from .options import check_int, check_names, check_number, option
from .sampling import SamplingConfig

if TYPE_CHECKING:
    from .llm.types import LLMSpec
    from .records import Explanation

__all__ = [
    "CONFIG_FORMAT",
    "EXECUTORS",
    "CompareOptions",
    "ExplainOptions",
    "HarvestConfig",
    "RunConfig",
    "RunOptions",
    "ScoreOptions",
]

CONFIG_FORMAT = "sae-lens-autointerp/RunConfig/1"
log = logging.getLogger(__name__)

#: What a secret of ``llm_kwargs`` becomes when a config is written (run.json, ``to_json``): secrets never reach
#: the disk. Reading a config back drops every marker (never sent as a key or a header); the key then comes from
#: the environment (``OPENAI_API_KEY``).
REDACTED_KEY = "<redacted: taken from OPENAI_API_KEY on reproduce>"
REDACTED = "<redacted>"
#: In a URL (userinfo, query values): a marker that survives URL parsing unchanged.
REDACTED_URL_PART = "REDACTED"
#: llm_kwargs whose whole value is a secret, and the endings of names that hold one (``hf_token``, ``x_api_key``).
SECRET_KWARGS = ("api_key",)
SECRET_ENDINGS = ("_key", "token", "secret", "password")
HEADER_KWARGS = ("default_headers", "headers", "extra_headers")


def _plain(value: Any) -> Any:
    """Paths as strings (so options like ``llm_kwargs={"cache": Path(...)}`` survive the JSON round trip)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _json_ready(value: Any, name: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be JSON-serialisable (it is saved in run.json): {exc}") from None


def _secret_name(name: str) -> bool:
    low = str(name).lower()
    return low in SECRET_KWARGS or low.endswith(SECRET_ENDINGS)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and each query value replaced by :data:`REDACTED_URL_PART` (they may hold a
    password or a token; scheme, host, port and path stay, so the served-by identity is unchanged)."""
    parts = urlsplit(url)
    if not parts.username and not parts.password and not parts.query:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = f"{REDACTED_URL_PART}@{host}"
    query = urlencode([(k, REDACTED_URL_PART) for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def _unredact_url(url: str) -> str:
    """``url`` without the parts :func:`redact_url` replaced (never sent as credentials), with a warning."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in query if v != REDACTED_URL_PART]
    if parts.username != REDACTED_URL_PART and len(kept) == len(query):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username not in (None, REDACTED_URL_PART):
        host = f"{parts.netloc.rpartition('@')[0]}@{host}"
    clean = urlunsplit((parts.scheme, host, parts.path, urlencode(kept), ""))
    log.warning(
        "llm_kwargs base_url %s had credentials, redacted when it was saved; pass the URL again with them "
        "(--base-url URL) if the server needs them",
        clean,
    )
    return clean


def _map_urls(base_url: Any, fn: Any) -> Any:
    """``fn`` applied to each URL of ``base_url`` (a URL, a list of URLs or of ``{"base_url": ...}`` dicts)."""
    if isinstance(base_url, str):
        return fn(base_url)
    if isinstance(base_url, Mapping):
        return {k: (_map_urls(v, fn) if k == "base_url" else v) for k, v in base_url.items()}
    if isinstance(base_url, (list, tuple)):
        return [_map_urls(u, fn) for u in base_url]
    return base_url


def redact_llm_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``llm_kwargs`` as a config file holds them: no API key (:data:`REDACTED_KEY`), no header value, no other
    secret-named option (``*_key``, ``*token``, ``*secret``, ``*password``), no URL userinfo or query value."""
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in HEADER_KWARGS and isinstance(value, Mapping):
            out[name] = {k: REDACTED for k in value}
        elif name == "base_url":
            out[name] = _map_urls(value, redact_url)
        elif _secret_name(name) and value is not None and value != "":
            out[name] = REDACTED_KEY if name == "api_key" else REDACTED
        else:
            out[name] = value
    return out


def _is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("<redacted")


def unredact_llm_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``llm_kwargs`` read from a config file, without the markers :func:`redact_llm_kwargs` left: a redacted
    key is dropped (the client then reads ``OPENAI_API_KEY``), a redacted header or option too, with a warning."""
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in HEADER_KWARGS and isinstance(value, Mapping):
            lost = sorted(k for k, v in value.items() if _is_marker(v))
            if lost:
                log.warning("llm_kwargs %s %s were redacted when saved; pass them again in llm_kwargs", name, lost)
            kept = {k: v for k, v in value.items() if not _is_marker(v)}
            if kept:
                out[name] = kept
        elif name == "base_url":
            out[name] = _map_urls(value, _unredact_url)
        elif _is_marker(value):
            if name != "api_key":
                log.warning("llm_kwargs %s was redacted when saved; pass it again in llm_kwargs", name)
        else:
            out[name] = value
    return out


def _check_prices(prices: Any) -> None:
    """The shapes the usage tracker's price table takes, per model: ``[input, output]`` or ``[input, output,
    cached_input]`` ($ / M tokens), or a dict of those names; each a finite number >= 0 (cached_input may be
    None), so a bad price fails here, not inside the first answer."""
    if prices is None:
        return
    shape = "prices must be a dict {MODEL: [input $/M tokens, output $/M tokens]}"
    if not isinstance(prices, Mapping):
        raise ConfigError(f"{shape}, got {type(prices).__name__}")
    names = ("input", "output", "cached_input")
    for model, pair in prices.items():
        if isinstance(pair, Mapping):
            ok = set(pair) <= set(names) and {"input", "output"} <= set(pair)
            values = dict(pair) if ok else {}
        elif isinstance(pair, (list, tuple)) and len(pair) in (2, 3):
            ok, values = True, dict(zip(names, pair))
        else:
            ok, values = False, {}
        for name, v in values.items():
            if name == "cached_input" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                ok = False
        if not ok:
            raise ConfigError(
                f"{shape} (or {{'input': .., 'output': .., 'cached_input': ..}}) of finite numbers >= 0; "
                f"prices[{model!r}] is {pair!r}"
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run of ``sae.autointerp.run`` (the answers depend on nothing else but the SAE,
    the model, the data and the LLM client's identity, which run.json records beside it)."""

    latents: tuple[int, ...] | None = option(None, doc="the latents to explain and score (None: all of the SAE's)")
    llm: str | None = option(
        "local", doc="the LLM: 'local', 'openai:MODEL', 'vllm:MODEL', a plugin's 'prefix:model', or None for none"
    )
    llm_kwargs: dict[str, Any] = option(
        doc="options of the LLM client, e.g. {'base_url': ..., 'cache': ...} (docs/llm.md)", factory=dict
    )
    explainer: str | None = option("default", doc="the explainer (any registered one; sae-autointerp plugins)")
    explainer_kwargs: dict[str, Any] = option(doc="options of the explainer", factory=dict)
    scorers: tuple[str, ...] = option(("detection", "fuzzing"), doc="the scorers (any registered ones)")
    scorer_kwargs: dict[str, dict[str, Any]] = option(
        doc="options per scorer, e.g. {'detection': {'examples_per_prompt': 5}}", factory=dict
    )
    explanations: dict[int, str] | None = option(
        None, doc="explanations to score, {latent: text}, instead of explaining the latents"
    )
    sampling: SamplingConfig = option(
        doc="how each latent's examples are drawn: a SamplingConfig or a dict of its fields", factory=SamplingConfig
    )
    harvest: HarvestConfig = option(
        doc="the harvest when no store is given: a HarvestConfig or a dict of its fields", factory=HarvestConfig
    )
    out_dir: str | None = option(None, doc="the run folder (default: a folder per run key under the cache)")
    concurrency: int = option(4, doc="latents in flight at once")
    budget_tokens: int | None = option(None, doc="stop the run after this many LLM tokens")
    budget_dollars: float | None = option(None, doc="stop the run after this many dollars (needs prices)")
    prices: dict[str, Any] | None = option(
        None, doc="{MODEL: [input $ / M tokens, output $ / M tokens]} for the cost and the dollar budget"
    )
    seed: int = option(0, doc="the run's seed (and the sampling's, unless sampling gives its own)")
    controls: float | dict[str, float] = option(
        0.2,
        doc="share of each latent's test examples also scored with another latent's explanation (the control "
        "behind lift and the judge check); 0 or False: off; {scorer: share} per scorer, '*' for the rest",
    )
    max_consecutive_failures: int = option(
        3, doc="latents in a row left incomplete by the LLM backend that stop the run"
    )
    heuristics: bool | float = option(
        True,
        doc="flag positional / unigram latents (heuristics.py): True at 0.9 of the activation variance, a number "
        "in (0, 1] for that threshold, False: off; reporting only, not part of the run key",
    )
    heuristic_explanations: bool = option(
        False,
        doc="give flagged latents the top-tokens explanation instead of an LLM call; part of the run key when on",
    )
    executor: str = option(
        "local",
        doc="where latents are explained and scored: 'local' (this process) or 'ray' (Ray actors, docs/scale.md); "
        "neither this nor the Ray options change an answer or the run key",
    )
    ray_address: str | None = option(
        None, doc="the Ray cluster to join ('auto', 'ray://head:10001'); None: an initialised Ray, else a local one"
    )
    workers: int | None = option(
        None, doc="Ray actors, each with its own LLM client; default one per GPU for vllm:, else one per CPU"
    )
    worker_gpus: float | None = option(None, doc="GPUs per Ray actor; default 1 for llm='vllm:...', else 0")

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if self.latents is not None:
            if isinstance(self.latents, (str, bytes, Mapping)):
                raise ConfigError(f"latents must be a list of latent indices (or None for all), got {self.latents!r}")
            latents = [self.latents] if isinstance(self.latents, numbers.Integral) else list(self.latents)
            for latent in latents:
                check_int(latent, "latents[...]", low=0)
            set_(self, "latents", tuple(int(x) for x in latents))
        if self.llm is not None and not isinstance(self.llm, str):
            raise ConfigError(
                "RunConfig.llm is a backend name ('local', 'openai:MODEL', ...); pass a client object "
                "to run(llm=...) beside the config instead"
            )
        if self.explainer is not None and not isinstance(self.explainer, str):
            raise ConfigError(f"explainer must be a name, got {self.explainer!r}")
        if isinstance(self.scorers, str):
            raise ConfigError(
                f"scorers must be a list of names, got the string {self.scorers!r}; use [{self.scorers!r}]"
            )
        set_(self, "scorers", tuple(self.scorers))
        if not all(isinstance(s, str) and s for s in self.scorers):
            raise ConfigError(f"scorers must be non-empty names, got {list(self.scorers)!r}")
        for name in ("llm_kwargs", "explainer_kwargs", "scorer_kwargs"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} must be a dict, got {type(value).__name__}")
            set_(self, name, _plain(dict(value)))
        set_(self, "llm_kwargs", unredact_llm_kwargs(self.llm_kwargs))  # a saved config's markers never go out
        for scorer, kwargs in self.scorer_kwargs.items():
            if not isinstance(kwargs, Mapping):
                raise ConfigError(f"scorer_kwargs[{scorer!r}] must be a dict of that scorer's options, got {kwargs!r}")
        if self.explanations is not None:
            if not isinstance(self.explanations, Mapping):
                raise ConfigError("explanations must map latent -> text")
            texts: dict[int, str] = {}
            for latent, text in self.explanations.items():
                key = int(latent) if isinstance(latent, str) and latent.isdigit() else latent
                if isinstance(key, bool) or not isinstance(key, numbers.Integral) or key < 0:
                    raise ConfigError(f"explanations keys are latent indices (integers >= 0), got {latent!r}")
                texts[int(key)] = text if isinstance(text, str) else getattr(text, "text", text)
                if not isinstance(texts[int(key)], str):
                    raise ConfigError(f"the explanation of latent {key} must be text, got {type(text).__name__}")
            set_(self, "explanations", texts)
        if isinstance(self.sampling, Mapping):
            set_(self, "sampling", SamplingConfig(**_known(SamplingConfig, self.sampling, "sampling")))
        if not isinstance(self.sampling, SamplingConfig):
            raise ConfigError(f"sampling must be a SamplingConfig or a dict, got {type(self.sampling).__name__}")
        if isinstance(self.harvest, Mapping):
            set_(self, "harvest", HarvestConfig.from_dict(self.harvest))
        if not isinstance(self.harvest, HarvestConfig):
            raise ConfigError(f"harvest must be a HarvestConfig or a dict, got {type(self.harvest).__name__}")
        if self.out_dir is not None:
            set_(self, "out_dir", os.fspath(self.out_dir))
        check_int(self.concurrency, "concurrency", low=1)
        check_int(self.budget_tokens, "budget_tokens", low=0, optional=True)
        check_number(self.budget_dollars, "budget_dollars", low=0, optional=True, finite=True)
        _check_prices(self.prices)
        check_int(self.seed, "seed", low=0)
        fractions = check_fraction(self.controls)
        set_(self, "controls", fractions["*"] if set(fractions) == {"*"} else fractions)
        check_int(self.max_consecutive_failures, "max_consecutive_failures", low=1)
        if not isinstance(self.heuristics, bool):
            if not isinstance(self.heuristics, numbers.Real) or not 0 < self.heuristics <= 1:
                raise ConfigError(
                    f"heuristics must be True, False or a threshold in (0, 1] (share of variance), got {self.heuristics!r}"
                )
            set_(self, "heuristics", float(self.heuristics))
        if not isinstance(self.heuristic_explanations, bool):
            raise ConfigError(f"heuristic_explanations must be True or False, got {self.heuristic_explanations!r}")
        for name in ("llm_kwargs", "explainer_kwargs", "scorer_kwargs", "prices"):
            _json_ready(getattr(self, name), name)
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.ray_address is not None and not (isinstance(self.ray_address, str) and self.ray_address):
            raise ConfigError(
                f"ray_address must be a Ray address ('auto', 'ray://host:10001'), got {self.ray_address!r}"
            )
        check_int(self.workers, "workers", low=1, optional=True)
        check_number(self.worker_gpus, "worker_gpus", low=0, optional=True)
        if self.executor == "local":
            given = [n for n in ("ray_address", "workers", "worker_gpus") if getattr(self, n) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} apply to executor='ray'; pass executor='ray' (or drop them)")

    # ------------------------------------------------------------------ conversion

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values, secrets of ``llm_kwargs`` redacted (see :func:`redact_llm_kwargs`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["latents"] = None if self.latents is None else list(self.latents)
        d["scorers"] = list(self.scorers)
        d["sampling"] = asdict(self.sampling)
        d["harvest"] = self.harvest.to_dict()
        d["llm_kwargs"] = redact_llm_kwargs(self.llm_kwargs)  # what is written never holds a secret
        if self.explanations is not None:
            d["explanations"] = {str(k): v for k, v in sorted(self.explanations.items())}
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        return cls(**_known(cls, data, "run"))

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"format": CONFIG_FORMAT, "config": self.to_dict()}, indent=1))
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> RunConfig:
        """A config file written by :meth:`to_json`, or a run folder's ``run.json`` (or the folder itself)."""
        return cls.from_dict(read_config_file(path)["config"])

    def with_(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document of a config file or a run's ``run.json`` (or its folder), checked to hold a
    ``config`` object; a file that is missing, not JSON or nested too deeply is one :class:`ConfigError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "run.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config at {path}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not a config: its JSON is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{path} holds no RunConfig (no 'config' object); write one with RunConfig.to_json()")
    return data


class _CommonOptions(TypedDict, total=False):
    """The :class:`RunConfig` fields that every entry point takes as a keyword (see :class:`RunOptions`)."""

    llm_kwargs: Mapping[str, Any] | None
    explainer_kwargs: Mapping[str, Any] | None
    scorer_kwargs: Mapping[str, Mapping[str, Any]] | None
    sampling: SamplingConfig | Mapping[str, Any] | None
    harvest: HarvestConfig | Mapping[str, Any] | None
    out_dir: str | os.PathLike[str] | None
    concurrency: int
    budget_tokens: int | None
    budget_dollars: float | None
    prices: Mapping[str, Any] | None
    seed: int
    controls: float | bool | Mapping[str, float]
    max_consecutive_failures: int
    heuristics: bool | float
    heuristic_explanations: bool
    executor: str
    ray_address: str | None
    workers: int | None
    worker_gpus: float | None


class RunOptions(_CommonOptions, total=False):
    """The keyword arguments of ``run()`` that are :class:`RunConfig` fields: every field, each typed as what
    the keyword accepts (``llm`` also a client object, ``latents`` any iterable, a dict for a nested config).
    ``tests/test_options.py`` checks that the keys are exactly the fields."""

    latents: Iterable[int] | int | None
    llm: LLMSpec
    explainer: str | None
    scorers: Iterable[str]
    explanations: Mapping[int, str | Explanation] | None


class ExplainOptions(_CommonOptions, total=False):
    """The options of ``sae.explain`` / ``sae.autointerp.explain`` beyond its named parameters (``latents``,
    ``llm``, ``explainer``): every :class:`RunConfig` field but ``scorers`` (it scores nothing)."""

    explanations: Mapping[int, str | Explanation] | None


class ScoreOptions(_CommonOptions, total=False):
    """The options of ``sae.score`` / ``sae.autointerp.score`` beyond its named parameters (``explanations``,
    ``scorers``, ``llm``): every other :class:`RunConfig` field."""

    latents: Iterable[int] | int | None
    explainer: str | None


class CompareOptions(_CommonOptions, total=False):
    """The options of ``sai.compare``: every :class:`RunConfig` field but ``latents`` (compare draws them)."""

    llm: LLMSpec
    explainer: str | None
    scorers: Iterable[str]
    explanations: Mapping[int, str | Explanation] | None


def option_names(options: type) -> frozenset[str]:
    """The keys of one of the ``TypedDict`` s above."""
    return frozenset(options.__required_keys__ | options.__optional_keys__)  # type: ignore[attr-defined]


def _known(cls: Any, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    check_names(data, [f.name for f in fields(cls)], what)
    return dict(data)
