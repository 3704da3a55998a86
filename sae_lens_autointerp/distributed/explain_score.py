"""Explain and score on Ray: latents sharded over actors, one results.jsonl written by the driver.

The driver runs ``pipeline.run`` itself: everything a one-process run does before the LLM work (argument checks,
harvest or reuse, the run key, run.json, the run views), after it (usage.json, the ScoreResult), and the runner
with its block logic (``pipeline.Runner``: blocks of CONTROL_BLOCK latents, sampled and explained, then scored
with their controls), given this module's :class:`RayWork` as its work. Only the per-latent work goes to the
actors, each running the in-process ``pipeline.LatentWork``: each owns its LLM client (an in-process vLLM engine
on its GPU, or its share of a fleet of OpenAI-compatible servers), opens the store from its folder (a shared
disk) and gets the model and SAE once from Ray's object store. An actor sends back what it would
have written; the driver writes it (the one writer of results.jsonl), so records, resume, incomplete records,
the breaker and the run key are those of the one-process run.

A killed actor's unfinished latents go to another actor (its answers already paid for come from the response
cache) and a replacement is started, up to ``workers`` replacements in all; nothing it did not finish was
written, so no latent is lost or written twice. Usage is counted by each actor and added to the driver's
tracker as each latent returns. A token / dollar budget is split evenly over the actors.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..errors import ConfigError
from ..harvest.store import LatentStore
from ..pipeline import (
    Incomplete,
    LatentWork,
    Outcomes,
    Prepared,
    RunParts,
    Tally,
    backend_name,
    check_run_options,
    open_client,
    preflight,
)
from ..pipeline import build_config as build_run_config
from ..pipeline import run as run_pipeline
from ..results import ScoreResult

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..config import RunOptions

log = logging.getLogger(__name__)

#: Seconds the driver waits for the actors to start (model, SAE and LLM client loaded) before it gives up.
START_TIMEOUT_S = 600.0
ACTOR_PREFIX = "sae-autointerp-worker"
#: The keyword arguments of :func:`run` that are not RunConfig fields.
RAY_KEYWORDS = ("config", "store", "progress", "model_loader", "sae_loader")


def run(
    sae: Any,
    model: Any = None,
    dataset: Any = None,
    *,
    config: RunConfig | None = None,
    store: LatentStore | None = None,
    progress: bool = True,
    model_loader: Callable[[], Any] | None = None,
    sae_loader: Callable[[], Any] | None = None,
    **options: Unpack[RunOptions],
) -> ScoreResult:
    """``sae.autointerp.run(...)`` with ``executor="ray"``: the same arguments, the same result and run folder.

    ``ray_address``: the cluster to join (``"auto"``, ``"ray://head:10001"``); None uses an initialised Ray,
    else starts a local one (shut down again at the end). ``workers``: actors (default: one per GPU for
    ``llm="vllm:..."``, else one per CPU); ``worker_gpus``: GPUs per actor (default 1 for ``vllm:``, else 0).
    The model and SAE go to the actors through Ray's object store, once; one that cannot be pickled (a
    TransformerBridge) is loaded in each actor by ``model_loader`` / ``sae_loader`` instead: a function without
    arguments, e.g. ``model_loader=sai.embedded.load_model``.
    """
    opts = check_run_options({**options, "executor": "ray"}, "run", RAY_KEYWORDS)
    cfg, client_object, _ = build_run_config(config, opts)
    ray = _import_ray()
    _check_shippable(ray, client_object, opts.get("explanations"))
    own = not ray.is_initialized()
    if own:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read at init by Ray only; the caller's value wins
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    elif cfg.ray_address is not None:
        log.warning("Ray is already initialised; ray_address=%r is not used", cfg.ray_address)
    try:
        size, gpus = _resources(ray, cfg)
        subject = _ship(ray, {"sae": (sae, sae_loader), "model": (model, model_loader)})
        return run_pipeline(
            sae,
            model,
            dataset,
            config=config,
            store=store,
            progress=progress,
            work=lambda parts: RayWork(parts, size, gpus, subject),
            **opts,
        )
    finally:
        if own:
            ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"executor='ray' needs Ray ({exc}): pip install 'sae-lens-autointerp[ray]', or use executor='local'"
        ) from None
    return ray


def _check_shippable(ray: Any, client: Any, explanations: Any) -> None:
    for what, obj in (("llm", client), ("explanations", explanations)):
        if obj is None or isinstance(obj, str):
            continue
        try:
            ray.cloudpickle.dumps(obj)
        except Exception as exc:
            raise ConfigError(
                f"executor='ray' sends {what}= to every actor, but this {type(obj).__name__} cannot be pickled "
                f"({type(exc).__name__}: {exc}); pass llm as a name ('openai:MODEL' with base_url=, 'vllm:MODEL') "
                "so each actor builds its own client"
            ) from None


def _ship(ray: Any, parts: Mapping[str, tuple[Any, Any]]) -> Any:
    """The model and SAE in Ray's object store (or the functions that load them in each actor), before any
    harvest: one that cannot be sent fails here, naming the fix."""
    out: dict[str, Any] = {}
    for name, (obj, loader) in parts.items():
        if loader is not None and not callable(loader):
            raise ConfigError(f"{name}_loader must be a function without arguments that returns the {name}")
        out[name], out[f"{name}_loader"] = (None, loader) if loader is not None else (obj, None)
        try:
            out[name] = ray.put(out[name]) if out[name] is not None else None
        except Exception as exc:
            raise ConfigError(
                f"executor='ray' sends the {name} to every actor, but this {type(obj).__name__} cannot be pickled "
                f"({type(exc).__name__}); pass {name}_loader= a function that loads it in each actor (e.g. "
                f"{name}_loader=sai.embedded.load_{name} for the embedded one)"
            ) from None
    return out


def _resources(ray: Any, cfg: RunConfig) -> tuple[int, float]:
    """(actors, GPUs per actor), checked against what the cluster has (an actor that cannot be placed would
    wait forever)."""
    have = ray.cluster_resources()
    cpus, n_gpus = int(have.get("CPU", 0)), float(have.get("GPU", 0))
    on_vllm = isinstance(cfg.llm, str) and cfg.llm.startswith("vllm:")
    gpus = cfg.worker_gpus if cfg.worker_gpus is not None else (1.0 if on_vllm else 0.0)
    if gpus > 0 and n_gpus < gpus:
        raise ConfigError(
            f"each Ray actor needs {gpus:g} GPU(s) but the cluster has {n_gpus:g}; pass worker_gpus=0 (vLLM on "
            "CPU) or join a cluster with GPUs (ray_address=)"
        )
    default = int(n_gpus // gpus) if gpus > 0 else cpus
    size = cfg.workers if cfg.workers is not None else max(1, default)
    need_gpus = size * gpus
    if size > cpus or need_gpus > n_gpus + 1e-9:
        raise ConfigError(
            f"workers={size} actors need {size} CPUs and {need_gpus:g} GPUs; the cluster has {cpus} and {n_gpus:g}. "
            "Pass fewer workers (or worker_gpus=)"
        )
    return size, gpus


def _actor_kwargs(llm_kwargs: Mapping[str, Any], index: int, size: int, namespace: str | None) -> dict[str, Any]:
    """The LLM options of actor ``index``: a fleet of base URLs is shared out (actor i gets every size-th
    server) when there are at least as many servers as actors; the cache identity stays the fleet's."""
    out = dict(llm_kwargs)
    urls = out.get("base_url")
    if isinstance(urls, (list, tuple)) and len(urls) >= size > 1:
        out["base_url"] = list(urls[index::size])
        if namespace is not None:
            out.setdefault("cache_namespace", namespace)
    return out


def _delta(now: Mapping[str, Any], before: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a UsageTracker counted since its export ``before`` (in :meth:`UsageTracker.export`'s form)."""
    if before is None:
        return dict(now)

    def sub(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> dict[str, Any]:
        return {k: v - (b or {}).get(k, 0) for k, v in a.items()}

    old_latents = {(s, lat): v for s, lat, v in before["latents"]}
    latents = []
    for stage, lat, v in now["latents"]:
        if old_latents.get((stage, lat)) != v:
            latents.append([stage, lat, sub(v, old_latents.get((stage, lat)))])
    return {
        "total": sub(now["total"], before["total"]),
        "stages": {k: sub(v, before["stages"].get(k)) for k, v in now["stages"].items()},
        "latents": latents,
        "models": {k: sub(v, before["models"].get(k)) for k, v in now["models"].items()},
        "budget": {
            "exhausted": now["budget"]["exhausted"],
            "refused": now["budget"]["refused"] - before["budget"]["refused"],
        },
    }


# ---------------------------------------------------------------------------------------------------- the actor


class _Outbox:
    """What an actor's work would have written, kept per latent for the driver (an :class:`Outcomes`)."""

    def __init__(self) -> None:
        self.events: dict[int | None, list[tuple[Any, ...]]] = {}  # None: not about one latent

    def write(self, record: dict[str, Any]) -> None:
        self.events.setdefault(record["latent"], []).append(("write", record))

    def fail(self, latent: int, record: dict[str, Any], failure: Incomplete) -> None:
        self.events.setdefault(latent, []).append(("failed", record, failure.stage, failure.error))

    def stop(self, reason: str) -> None:
        self.events.setdefault(None, []).append(("stop", reason))

    def take(self, latent: int) -> list[tuple[Any, ...]]:
        """The events of ``latent``, and any reason to stop, to send to the driver."""
        return self.events.pop(latent, []) + self.events.pop(None, [])


class Worker:
    """One Ray actor: its own LLM client, the store opened from its folder, the model and SAE from the driver."""

    def __init__(self, spec: Mapping[str, Any], llm_kwargs: Mapping[str, Any]) -> None:
        sae = spec["sae_loader"]() if spec["sae_loader"] is not None else _get(spec["sae"])
        model = spec["model_loader"]() if spec["model_loader"] is not None else _get(spec["model"])
        cfg = RunConfig.from_dict(spec["config"])
        store = LatentStore(spec["store_path"])
        client_object = spec["client_object"]
        plan = preflight(sae, model, cfg, store=store, llm=client_object, explanations=spec["explanations"])
        client = open_client(plan, llm_kwargs)
        self.client, self.own_client = client, client_object is None
        self.work = LatentWork(RunParts(plan, sae, model, store, client, spec["run_key"], spec["flags"]))
        self.outbox = _Outbox()
        self.prepared: dict[int, Prepared] = {}
        self._reported: dict[str, Any] | None = None

    async def ready(self) -> int:
        return os.getpid()

    def _report(self, latent: int, prepared: Prepared | None = None) -> dict[str, Any]:
        usage = self.work.ctx.usage
        now = usage.export() if usage is not None else None
        delta = _delta(now, self._reported) if now is not None else None
        self._reported = now
        return {
            "events": self.outbox.take(latent),
            "prepared": prepared.state() if prepared is not None else None,
            "heuristic": latent in self.work.tally.heuristic_explained,
            "usage": delta,
        }

    async def prepare(self, latent: int, partial: dict[str, Any] | None) -> dict[str, Any]:
        """Sample and explain one latent (the first half of a block)."""
        item = await self.work.prepare(latent, partial, self.outbox)
        if item is not None:
            self.prepared[latent] = item
        return self._report(latent, item)

    async def finish(self, latent: int, state: dict[str, Any], pool: dict[int, str]) -> dict[str, Any]:
        """Score one latent and its controls; a latent prepared by another (lost) actor is sampled again."""
        item = self.prepared.pop(latent, None) or Prepared.from_state(state)
        await self.work.finish(latent, item, pool, self.outbox)
        return self._report(latent)

    async def close(self) -> None:
        if self.client is not None and self.own_client and hasattr(self.client, "aclose"):
            await self.client.aclose()


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref) if ref is not None else None


# ---------------------------------------------------------------------------------------------------- the driver


class _Slot:
    def __init__(self, handle: Any, ready: Any) -> None:
        self.handle, self.ready, self.load = handle, ready, 0
        self.up, self.dead = False, False


class _Pool:
    """The actors: each call goes to the least-loaded live one (or the one named by ``prefer``); an actor that
    dies is replaced (at most ``restarts`` times) and the call goes elsewhere."""

    def __init__(self, ray: Any, make: Any, size: int, restarts: int) -> None:
        self.ray, self.make, self.size, self.restarts = ray, make, size, restarts
        self.slots: list[_Slot] = []
        self.spawned = 0
        self.lost: list[str] = []

    def _spawn(self) -> _Slot:
        handle = self.make(self.spawned)
        self.spawned += 1
        slot = _Slot(handle, asyncio.ensure_future(self._start(handle)))
        self.slots.append(slot)
        return slot

    async def _start(self, handle: Any) -> int:
        return int(await handle.ready.remote())

    async def start(self) -> None:
        slots = [self._spawn() for _ in range(self.size)]
        try:
            await asyncio.wait_for(asyncio.gather(*(s.ready for s in slots)), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ConfigError(
                f"the {self.size} Ray actors did not start within {START_TIMEOUT_S:g} s; check the cluster "
                "(ray status) and its resources"
            ) from None
        for s in slots:
            s.up = True

    async def _choose(self, prefer: _Slot | None) -> _Slot | None:
        while True:
            live = [s for s in self.slots if s.up and not s.dead]
            if prefer is not None and prefer in live:
                return prefer
            if live:
                return min(live, key=lambda s: s.load)
            pending = [s for s in self.slots if not s.up and not s.dead]
            if not pending:
                return None
            await asyncio.wait([s.ready for s in pending], return_when=asyncio.FIRST_COMPLETED)
            for s in pending:
                if s.ready.done():
                    if s.ready.exception() is None:
                        s.up = True
                    else:
                        self._lost(s, s.ready.exception())

    def _lost(self, slot: _Slot, error: BaseException | None) -> None:
        if slot.dead:
            return
        slot.dead = True
        self.lost.append(f"{type(error).__name__}: {error}")
        log.warning("a Ray actor died (%s); its unfinished latents go to another actor", type(error).__name__)
        if self.spawned - self.size < self.restarts:
            self._spawn()

    async def call(self, method: str, *args: Any, prefer: _Slot | None = None) -> tuple[dict[str, Any], _Slot] | None:
        """(the actor's answer, the actor) or None when no actor is left."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        while True:
            slot = await self._choose(prefer)
            if slot is None:
                return None
            slot.load += 1
            try:
                return await getattr(slot.handle, method).remote(*args), slot
            except (RayActorError, ActorUnavailableError) as exc:
                self._lost(slot, exc)
                prefer = None
            finally:
                slot.load -= 1

    async def close(self) -> None:
        live = [s for s in self.slots if s.up and not s.dead]
        closing = [s.handle.close.remote() for s in live]
        if closing:
            await asyncio.wait([asyncio.ensure_future(_awaitable(c)) for c in closing], timeout=30)
        for s in self.slots:
            if not s.ready.done():
                s.ready.cancel()
            self.ray.kill(s.handle)


async def _awaitable(ref: Any) -> Any:
    return await ref


class RayWork:
    """The :class:`~sae_lens_autointerp.pipeline.Work` of a run on Ray: each latent's two halves go to an actor
    (the least-loaded, the same one for both where it lives), and what the actor would have written is written
    by the driver's runner, with the actor's usage added to the driver's tracker."""

    def __init__(self, parts: RunParts, size: int, gpus: float, subject: Mapping[str, Any]) -> None:
        import ray

        plan, cfg = parts.plan, parts.plan.config
        share: dict[str, Any] = {"executor": "local", "ray_address": None, "workers": None, "worker_gpus": None}
        if cfg.budget_tokens is not None:
            share["budget_tokens"] = cfg.budget_tokens // size
        if cfg.budget_dollars is not None:
            share["budget_dollars"] = cfg.budget_dollars / size
        spec = {
            **subject,  # object refs (or loaders) of the model and SAE, put once
            "store_path": str(parts.store.path),
            "config": cfg.with_(**share).to_dict(),
            "client_object": plan.client_object,
            "explanations": plan.given,
            "run_key": parts.run_key,
            "flags": parts.flags,
        }
        spec_ref = ray.put(spec)
        namespace = getattr(parts.client, "cache_namespace", None) if plan.client_object is None else None
        actor = ray.remote(Worker)
        options = {"num_cpus": 1, "num_gpus": gpus, "max_concurrency": max(2, cfg.concurrency + 1), "max_restarts": 0}
        prefix = f"{ACTOR_PREFIX}-{parts.run_key[:12]}-{os.getpid()}"

        def make(i: int) -> Any:
            kwargs = _actor_kwargs(cfg.llm_kwargs, i % size, size, namespace)
            return actor.options(name=f"{prefix}-{i}", **options).remote(spec_ref, kwargs)

        self.pool = _Pool(ray, make, size, restarts=size)
        self.where: dict[int, _Slot] = {}
        self.parallel, self.backend, self.tally = size, backend_name(parts.client), Tally()
        self.usage = parts.client.usage if parts.client is not None else plan.usage

    async def open(self) -> None:
        await self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    def _gone(self) -> str:
        return (
            f"every Ray actor died ({'; '.join(self.pool.lost[-3:])}); finished latents are kept, rerun to do the rest"
        )

    def _replay(self, latent: int, answer: Mapping[str, Any], out: Outcomes) -> None:
        """Write what the actor would have written, through the runner's bookkeeping."""
        if answer["usage"] is not None and self.usage is not None:
            self.usage.absorb(answer["usage"])
        if answer["heuristic"]:
            self.tally.heuristic_explained.add(latent)
        for event in answer["events"]:
            if event[0] == "write":
                out.write(event[1])
            elif event[0] == "failed":
                _, record, stage, error = event
                out.fail(latent, record, Incomplete(stage, error))
            else:
                out.stop(event[1])

    async def prepare(self, latent: int, partial: dict[str, Any] | None, out: Outcomes) -> Prepared | None:
        answer = await self.pool.call("prepare", latent, partial)
        if answer is None:
            out.stop(self._gone())
            return None
        reply, slot = answer
        self._replay(latent, reply, out)
        if reply["prepared"] is None:
            return None
        self.where[latent] = slot
        # the driver needs only the explanation (the controls' pool); the sample stays on the actor
        return Prepared.from_state(reply["prepared"])

    async def finish(self, latent: int, item: Prepared, pool: dict[int, str], out: Outcomes) -> None:
        answer = await self.pool.call("finish", latent, item.state(), pool, prefer=self.where.pop(latent, None))
        if answer is None:
            out.stop(self._gone())
            return
        self._replay(latent, answer[0], out)
