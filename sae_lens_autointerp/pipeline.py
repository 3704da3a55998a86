"""Explain and score many latents: bounded concurrency, one record per finished latent, resumable.

Torch work (harvest) runs first, in the caller's thread; LLM work then runs on an asyncio loop with at most
``concurrency`` latents in flight (each scorer bounds its own requests too). Everything a run pays for is
kept: LLM answers in the response cache, finished latents in results.jsonl. A budget that runs out stops
new requests; finished latents stay, the rest run on the next call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import numbers
import os
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, PluginError
from .harvest.store import ActivationStore
from .llm import BudgetExceeded, UsageTracker, get_client
from .paths import cache_dir
from .plugin import get_registry
from .records import Context, Explanation, ScorerOutput
from .results import ResultsFile, ScoreResult, _json_default
from .sampling import SamplingConfig, sample_latent
from .text import Renderer

T = TypeVar("T")
DEFAULT_SCORERS = ("detection", "fuzzing")


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


def coerce_explanations(explanations: Mapping[int, Any] | None) -> dict[int, Explanation] | None:
    if explanations is None:
        return None
    out = {}
    for latent, value in explanations.items():
        if isinstance(value, Explanation):
            out[int(latent)] = value
        elif isinstance(value, str):
            if not value.strip():
                raise ConfigError(f"the explanation of latent {latent} is empty")
            out[int(latent)] = Explanation(int(latent), value.strip())
        else:
            raise ConfigError(f"explanations must map latent -> str or Explanation; latent {latent} has {type(value).__name__}")
    return out


def _make(kind: str, name: str, kwargs: Mapping[str, Any] | None) -> Any:
    obj = get_registry().create(kind, name, **dict(kwargs or {}))
    needed = ("explain",) if kind == "explainers" else ("score",)
    if not all(callable(getattr(obj, m, None)) for m in needed) or not getattr(obj, "name", None):
        plugin = get_registry().get(kind, name).plugin
        raise PluginError(f"plugin {plugin!r}: {kind[:-1]} {name!r} returned a {type(obj).__name__} without "
                          f"a name and async {needed[0]}()")
    return obj


def run(
    sae: Any,
    model: Any = None,
    dataset: Any = None,
    *,
    store: ActivationStore | None = None,
    latents: Iterable[int] | int | None = None,
    llm: Any = "local",
    explainer: str | None = "default",
    scorers: Iterable[str] = DEFAULT_SCORERS,
    explanations: Mapping[int, Any] | None = None,
    explainer_kwargs: Mapping[str, Any] | None = None,
    scorer_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    llm_kwargs: Mapping[str, Any] | None = None,
    sampling: SamplingConfig | Mapping[str, Any] | None = None,
    harvest_kwargs: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    concurrency: int = 4,
    budget_tokens: int | None = None,
    budget_dollars: float | None = None,
    prices: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ScoreResult:
    """Explain (unless ``explanations`` are given) and score ``latents``; see README for every option."""
    d_sae = int(sae.cfg.d_sae)
    latent_list = check_latents(latents, d_sae)
    given = coerce_explanations(explanations)
    scorer_names = list(scorers)
    if given is not None:
        explainer = None
    sampling_cfg = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig(seed=seed, **dict(sampling or {}))
    # Resolve every plugin name before any expensive work, so a typo fails in a second.
    scorer_objs = {n: _make("scorers", n, (scorer_kwargs or {}).get(n)) for n in scorer_names}
    explainer_obj = _make("explainers", explainer, explainer_kwargs) if explainer else None
    needs_llm = explainer_obj is not None and getattr(explainer_obj, "needs_llm", True) or any(
        getattr(s, "needs_llm", True) for s in scorer_objs.values()
    )
    usage = UsageTracker(prices=prices, budget_tokens=budget_tokens, budget_dollars=budget_dollars)
    own_client = isinstance(llm, str)
    if not own_client and llm is not None and (budget_tokens is not None or budget_dollars is not None or prices or llm_kwargs):
        raise ConfigError(
            "budget_tokens / budget_dollars / prices / llm_kwargs apply when llm is a name; for a client object, "
            "give it a UsageTracker(prices=..., budget_tokens=...) instead"
        )
    if needs_llm and llm is None:
        raise ConfigError("these explainers / scorers need an LLM: pass llm='local', 'openai:MODEL', ...")
    if store is None:
        if model is None or dataset is None:
            raise ConfigError("pass model= and dataset= (or store= from sae.autointerp.harvest())")
        from .harvest import harvest

        store = harvest(sae, model, dataset, progress=progress, **dict(harvest_kwargs or {}))
    if store.d_sae != d_sae:
        raise ConfigError(f"the store has d_sae={store.d_sae} but the SAE has {d_sae}; harvest this SAE")
    client = None
    if needs_llm:
        client = get_client(llm, usage=usage, **dict(llm_kwargs or {})) if own_client else get_client(llm)
    llm_name = getattr(client, "name", None)
    run_key = _run_key(store, explainer, explainer_kwargs, scorer_names, scorer_kwargs, sampling_cfg, llm_name, given, seed)
    folder = Path(out_dir) if out_dir is not None else cache_dir("runs") / run_key[:16]
    results = ResultsFile(folder / "results.jsonl")
    tokenizer = getattr(model, "tokenizer", None) if model is not None else None
    if tokenizer is None:
        raise ConfigError("pass model= (its tokenizer renders the examples)")
    tracker = client.usage if client is not None else usage
    ctx = Context(llm=client, renderer=Renderer(tokenizer), store=store, seed=seed, sae=sae, model=model, usage=tracker)
    (folder / "run.json").write_text(json.dumps({
        "run_key": run_key, "store": str(store.path), "explainer": explainer, "scorers": scorer_names,
        "sampling": asdict(sampling_cfg), "llm": llm_name, "seed": seed,
    }, indent=1, default=str))
    from .negatives import make_source

    negatives = make_source(sampling_cfg.negatives, renderer=ctx.renderer, sae=sae, model=model)
    runner = _Runner(ctx, explainer_obj, scorer_objs, sampling_cfg, results, run_key, given, progress, negatives)
    try:
        records, stopped = run_sync(runner.run(latent_list, concurrency))
    finally:
        if client is not None and own_client:
            run_sync(client.aclose())
    summary = tracker.summary()
    (folder / "usage.json").write_text(json.dumps(summary, indent=1, default=str))
    return ScoreResult(records=records, path=folder / "results.jsonl", usage=summary, stopped=stopped)


def _run_key(store, explainer, explainer_kwargs, scorers, scorer_kwargs, sampling, llm_name, given, seed) -> str:  # type: ignore[no-untyped-def]
    ident = {
        "store": store.key, "explainer": explainer, "explainer_kwargs": explainer_kwargs, "scorers": scorers,
        "scorer_kwargs": scorer_kwargs, "sampling": asdict(sampling), "llm": llm_name, "seed": seed,
        "explanations": None if given is None else {k: v.text for k, v in sorted(given.items())},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


class _Runner:
    def __init__(self, ctx, explainer, scorers, sampling, results, run_key, given, progress, negatives) -> None:  # type: ignore[no-untyped-def]
        self.ctx, self.explainer, self.scorers, self.sampling = ctx, explainer, scorers, sampling
        self.negatives = negatives
        self.results, self.run_key, self.given, self.progress = results, run_key, given, progress
        self.stopped: str | None = None

    async def run(self, latents: list[int], concurrency: int) -> tuple[list[dict[str, Any]], str | None]:
        from tqdm.auto import tqdm

        done = self.results.done(self.run_key)
        todo = [lat for lat in latents if lat not in done]
        bar = tqdm(total=len(latents), initial=len(latents) - len(todo), unit="latent", desc="autointerp",
                   disable=not self.progress)
        queue = iter(todo)
        fresh: dict[int, dict[str, Any]] = {}

        async def worker() -> None:
            for latent in queue:
                if self.stopped:
                    return
                try:
                    record = await self.one(latent)
                except BudgetExceeded as exc:
                    self.stopped = str(exc)
                    return
                self.results.append(record)
                fresh[latent] = record
                bar.update(1)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        bar.close()
        merged = {**done, **fresh}
        return [merged[lat] for lat in latents if lat in merged], self.stopped

    async def one(self, latent: int) -> dict[str, Any]:
        start = time.perf_counter()
        sample = await asyncio.to_thread(sample_latent, self.ctx.store, latent, self.sampling, self.negatives)
        record: dict[str, Any] = {"run_key": self.run_key, "latent": latent, "stats": sample.stats}
        if sample.skipped:
            record["skipped"] = sample.skipped
            return record
        explanation = None
        if self.given is not None:
            explanation = self.given.get(latent)
            if explanation is None:
                record["skipped"] = "no explanation given for this latent"
                return record
        elif self.explainer is not None:
            explanation = await self._explain(sample)
        record["explanation"] = explanation.to_dict() if explanation is not None else None
        record["examples"] = {
            "explain": [e.token_id for e in sample.explain],
            "test_pos": [e.token_id for e in sample.test_pos],
            "test_neg": [e.token_id for e in sample.test_neg],
        }
        scores: dict[str, Any] = {}
        for name, scorer in self.scorers.items():
            scores[name] = (await self._score(name, scorer, sample, explanation)).to_dict()
        record["scores"] = scores
        record["usage"] = {
            stage: totals.as_dict() for (stage, lat), totals in self.ctx.usage.by_latent().items() if lat == latent
        }
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record

    async def _explain(self, sample: Any) -> Explanation:
        """The explainer's answer; a crash or a wrong return type becomes a failed explanation naming the plugin
        (never scored), so one broken explainer plugin does not take the run down."""
        name = getattr(self.explainer, "name", "?")
        try:
            out = await self.explainer.explain(sample, self.ctx)
        except BudgetExceeded:
            raise
        except Exception as exc:
            error = f"crashed: {type(exc).__name__}: {exc}"
        else:
            if isinstance(out, Explanation):
                return out
            error = f"returned {type(out).__name__}, not an Explanation"
        item = get_registry().items("explainers").get(name)
        who = f"plugin {item.plugin!r}, " if item else ""
        return Explanation(sample.latent, "", str(name), failed=True, error=f"{who}explainer {name!r} {error}")

    async def _score(self, name: str, scorer: Any, sample: Any, explanation: Explanation | None) -> ScorerOutput:
        if getattr(scorer, "needs_explanation", True) and (explanation is None or explanation.failed):
            why = "no explanation" if explanation is None else f"explanation failed: {explanation.error}"
            return ScorerOutput(scorer=name, score=None, n_examples=0, n_failed=0, error=why)
        try:
            out = await scorer.score(sample, explanation, self.ctx)
        except BudgetExceeded:
            raise
        except Exception as exc:  # one broken scorer must not take the others down
            plugin = get_registry().items("scorers").get(name)
            who = f"plugin {plugin.plugin!r}, " if plugin else ""
            return ScorerOutput(scorer=name, score=None, n_examples=0, n_failed=0,
                                error=f"{who}scorer {name!r} crashed: {type(exc).__name__}: {exc}")
        problem = _check_output(out)
        if problem is not None:
            plugin = get_registry().items("scorers").get(name)
            return ScorerOutput(scorer=name, score=None, n_examples=0, n_failed=0,
                                error=f"plugin {plugin.plugin if plugin else '?'!r}: scorer {name!r} {problem}")
        out.scorer = name
        return out


def _check_output(out: Any) -> str | None:
    """What is wrong with a scorer's return value for results.jsonl, or None (the plugin contract)."""
    if not isinstance(out, ScorerOutput):
        return f"returned {type(out).__name__}, not a ScorerOutput"
    score = out.score
    if score is not None and (isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score)):
        return f"returned score={score!r}; a score is a finite number or None"
    for field in ("n_examples", "n_failed"):
        value = getattr(out, field)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            return f"returned {field}={value!r}; it must be a non-negative integer"
    try:
        json.dumps(out.to_dict(), default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"returned a ScorerOutput that cannot be written to results.jsonl: {type(exc).__name__}: {exc}"
    return None
