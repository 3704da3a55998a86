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
import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .controls import check_fraction
from .errors import ConfigError
from .sampling import SamplingConfig

CONFIG_FORMAT = "sae-lens-autointerp/RunConfig/1"
#: Where a run explains and scores its latents (RunConfig.executor).
EXECUTORS = ("local", "ray")


def _int(value: Any, name: str, *, low: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    kind = "a positive integer" if low == 1 else "an integer" if low is None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        raise ConfigError(f"{name} must be {kind}, got {value!r}")


def _number(value: Any, name: str, *, low: float | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value!r}")


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


@dataclass(frozen=True)
class HarvestConfig:
    """What ``harvest()`` reads and keeps (see :func:`sae_lens_autointerp.harvest.harvest` for each field)."""

    n_tokens: int = 1_000_000
    ctx_len: int | None = None
    batch_size: int = 16
    example_len: int = 32
    top_k: int = 50
    n_stratified: int = 100
    n_random_windows: int = 1000
    threshold: float = 0.0
    seed: int = 0
    n_position_buckets: int = 64
    n_token_slots: int = 64
    text_column: str = "text"
    split: str = "train"
    streaming: bool = True
    dataset_config: str | None = None
    store_dir: str | None = None
    checkpoint_every_s: float = 30.0

    def __post_init__(self) -> None:
        _int(self.n_tokens, "harvest n_tokens", low=1)
        _int(self.ctx_len, "harvest ctx_len", low=2, optional=True)
        _int(self.batch_size, "harvest batch_size", low=1)
        _int(self.example_len, "harvest example_len", low=1)
        if self.ctx_len is not None and self.example_len > self.ctx_len:
            raise ConfigError(f"harvest example_len={self.example_len} must be <= ctx_len={self.ctx_len}")
        if self.ctx_len is not None and self.ctx_len % self.example_len:
            raise ConfigError(
                f"harvest ctx_len={self.ctx_len} must be a multiple of example_len={self.example_len}: each example "
                "is shown as its fixed chunk of example_len tokens (a partial chunk would be shorter)"
            )
        _int(self.top_k, "harvest top_k", low=1)
        _int(self.n_stratified, "harvest n_stratified", low=1)
        _int(self.n_random_windows, "harvest n_random_windows", low=0)
        _number(self.threshold, "harvest threshold")
        _int(self.seed, "harvest seed")
        _int(self.n_position_buckets, "harvest n_position_buckets", low=1)
        _int(self.n_token_slots, "harvest n_token_slots", low=1)
        _number(self.checkpoint_every_s, "harvest checkpoint_every_s", low=0)
        if self.store_dir is not None and not isinstance(self.store_dir, str):
            object.__setattr__(self, "store_dir", os.fspath(self.store_dir))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HarvestConfig:
        data = dict(data)
        if data.pop("peak_offset", None) is not None:  # configs saved before windows became fixed chunks
            raise ConfigError(
                "harvest peak_offset was removed: a window with the peak always at one index lets a judge that never "
                "reads the explanation score above chance, so every example is now shown as its fixed chunk of "
                "example_len tokens; delete peak_offset from the config"
            )
        return cls(**_known(cls, data, "harvest"))


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run of ``sae.autointerp.run`` (the answers depend on nothing else but the SAE,
    the model, the data and the LLM client's identity, which run.json records beside it)."""

    latents: tuple[int, ...] | None = None
    llm: str | None = "local"
    llm_kwargs: dict[str, Any] = field(default_factory=dict)
    explainer: str | None = "default"
    explainer_kwargs: dict[str, Any] = field(default_factory=dict)
    scorers: tuple[str, ...] = ("detection", "fuzzing")
    scorer_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    explanations: dict[int, str] | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    out_dir: str | None = None
    concurrency: int = 4
    budget_tokens: int | None = None
    budget_dollars: float | None = None
    prices: dict[str, Any] | None = None
    seed: int = 0
    controls: float | dict[str, float] = 0.2
    max_consecutive_failures: int = 3
    #: Known-heuristic filters (``heuristics.py``): True flags positional / unigram latents at the default
    #: threshold (0.9 of the activation variance), a number in (0, 1] sets the threshold, False turns them off.
    #: Reporting only (columns of ``result.table``); it changes no answer and is not part of the run key.
    heuristics: bool | float = True
    #: Flagged latents get the ``top-tokens`` explainer's explanation instead of the run's explainer (no LLM
    #: call for them); part of the run key when on.
    heuristic_explanations: bool = False
    #: Where latents are explained and scored: ``"local"`` (this process) or ``"ray"`` (shards on Ray actors,
    #: ``distributed/``). Neither these nor the three fields below change an answer or the run key.
    executor: str = "local"
    #: The Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None: an initialised Ray, else a local one.
    ray_address: str | None = None
    #: Ray actors (each with its own LLM client); None: one per GPU for ``vllm:``, else one per CPU of the cluster.
    workers: int | None = None
    #: GPUs per actor; None: 1 for ``llm="vllm:..."`` (one engine per GPU), else 0.
    worker_gpus: float | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise once, here
        if self.latents is not None:
            latents = [self.latents] if isinstance(self.latents, numbers.Integral) else list(self.latents)
            for latent in latents:
                _int(latent, "latents[...]", low=0)
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
        _int(self.concurrency, "concurrency", low=1)
        _int(self.budget_tokens, "budget_tokens", low=0, optional=True)
        _number(self.budget_dollars, "budget_dollars", low=0, optional=True)
        if self.prices is not None and not isinstance(self.prices, Mapping):
            raise ConfigError("prices must be a dict {MODEL: [input $/M tokens, output $/M tokens]}")
        _int(self.seed, "seed")
        fractions = check_fraction(self.controls)
        set_(self, "controls", fractions["*"] if set(fractions) == {"*"} else fractions)
        _int(self.max_consecutive_failures, "max_consecutive_failures", low=1)
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
        _int(self.workers, "workers", low=1, optional=True)
        _number(self.worker_gpus, "worker_gpus", low=0, optional=True)
        if self.executor == "local":
            given = [n for n in ("ray_address", "workers", "worker_gpus") if getattr(self, n) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} apply to executor='ray'; pass executor='ray' (or drop them)")

    # ------------------------------------------------------------------ conversion

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["latents"] = None if self.latents is None else list(self.latents)
        d["scorers"] = list(self.scorers)
        d["sampling"] = asdict(self.sampling)
        d["harvest"] = self.harvest.to_dict()
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
        path = Path(path)
        if path.is_dir():
            path = path / "run.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no config at {path}") from None
        except ValueError as exc:
            raise ConfigError(f"{path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ConfigError(f"{path} holds no RunConfig (no 'config' object); write one with RunConfig.to_json()")
        return cls.from_dict(data["config"])

    def with_(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _known(cls: Any, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}; valid: {', '.join(names)}")
    return dict(data)


#: The keyword arguments of ``run`` that are RunConfig fields (the rest: model, dataset, store, a client
#: object, progress).
RUN_FIELDS = tuple(f.name for f in fields(RunConfig))
