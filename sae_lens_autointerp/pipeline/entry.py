"""``run()``: explain and score many latents, composed of the pipeline's pieces.

Torch work (harvest) runs first, in the caller's thread: the options are checked and resolved (``plan.py``),
the store harvested or reused, the heuristic flags read (``flags.py``) and the run folder claimed
(``folder.py``). LLM work then runs on an asyncio loop: the runner (``runner.py``) takes the latents in
blocks, with at most ``concurrency`` in flight, each done by the run's work (``work.py``; on Ray, the
distributed executor's), one record per finished latent, resumable.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import RunConfig
from ..errors import ConfigError
from ..harvest.store import LatentStore
from ..lens import write_run_views
from ..loading import default_dataset, default_model, sae_provenance
from ..registry import get_client
from ..results import ScoreResult
from .flags import heuristic_substitute, heuristics_summary, latent_flags, substitute_identity
from .folder import RunFolder
from .plan import Plan, build_config, check_run_options, preflight
from .runner import Runner, Work
from .work import LatentWork, RunParts

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..config import RunOptions

T = TypeVar("T")
DEFAULT_SCORERS = RunConfig().scorers
#: run()'s keyword arguments that are not RunConfig fields.
RUN_KEYWORDS = ("config", "store", "progress", "work")


def run(
    sae: Any,
    model: Any = None,
    dataset: Any = None,
    *,
    config: RunConfig | None = None,
    store: LatentStore | None = None,
    progress: bool = True,
    work: Callable[[RunParts], Work] | None = None,
    **options: Unpack[RunOptions],
) -> ScoreResult:
    """Explain (unless ``explanations`` are given) and score ``latents``; returns a :class:`ScoreResult`.

    The options are the fields of :class:`~sae_lens_autointerp.config.RunConfig` (each documented there),
    given as ``config=`` and / or as keywords, which override its fields (without ``config`` the keywords
    build one; the defaults are RunConfig's); a name that is no field is an error naming the closest one.
    ``llm`` may also be a client object, ``harvest`` (the harvest when no ``store`` is given) a dict.
    ``executor="ray"`` runs through ``sae.autointerp.run`` (docs/scale.md). ``work``: what does each latent's
    work, built from the run's :class:`~.work.RunParts` (default :class:`~.work.LatentWork`, in this process;
    the distributed executor passes its own: the same records, results.jsonl and run key).
    """
    cfg, client_object, objects = build_config(config, check_run_options(options, "run", RUN_KEYWORDS))
    if cfg.executor != "local" and work is None:
        raise ConfigError(
            f"executor={cfg.executor!r} runs through sae.autointerp.run(...) (or sae_lens_autointerp.distributed.run); "
            "pipeline.run alone runs in this process"
        )
    if store is None and dataset is None and model is not None:
        dataset = default_dataset(sae)  # the SAE's training dataset, or an error naming dataset=
    if model is None and sae_provenance(sae)["model_name"]:
        model = default_model(sae)  # logged: the model the SAE was trained on
    plan = preflight(sae, model, cfg, store=store, llm=client_object, explanations=objects)
    client = open_client(plan)  # before any harvest: a bad backend fails first
    store = store if store is not None else _harvest(plan, sae, model, dataset, progress)
    if store.d_sae != plan.d_sae:
        raise ConfigError(f"the store has d_sae={store.d_sae} but the SAE has {plan.d_sae}; harvest this SAE")
    flags, threshold = latent_flags(store, plan.latents, cfg)
    substitute = heuristic_substitute(cfg, flags, plan.explainer_obj)
    folder = RunFolder.of(plan, store, client, substitute_identity(substitute, threshold))
    results = folder.open_results()
    parts = RunParts(plan, sae, model, store, client, folder.run_key, flags)
    latent_work = LatentWork(parts) if work is None else work(parts)
    runner = Runner(latent_work, results, folder.run_key, max_failures=cfg.max_consecutive_failures, progress=progress)
    own = client if client is not None and plan.client_object is None else None
    with folder.claimed():  # one folder, one run: a concurrent run of the same key waits here
        folder.write_run_json(plan, client, store, sae)
        # the pages' views of the model (token pieces, decoder logits and neighbours): cheap, once per run
        write_run_views(folder.path, model, sae, plan.tokenizer, plan.latents)
        stopped = run_sync(_run_and_close(runner, plan.latents, cfg.concurrency, own))
    tracker = client.usage if client is not None else plan.usage
    found = heuristics_summary(flags, threshold, latent_work.tally, tracker, plan.explainer_obj, substitute)
    summary = tracker.summary()
    if found:
        summary["heuristics"] = found
    folder.write_usage(summary)
    return ScoreResult(
        # read from the file on demand; records finished by an earlier run without the heuristics get them too
        records=results.result_records(folder.run_key, plan.latents).with_overlay(flags),
        path=results.path,
        usage=summary,
        stopped=stopped,
        incomplete=dict(runner.incomplete),
        run_key=folder.run_key,
        heuristics=found,
    )


def open_client(plan: Plan, llm_kwargs: Mapping[str, Any] | None = None) -> Any:
    """The run's LLM client: built from the backend's name (with ``llm_kwargs``, default the config's, and the
    plan's usage tracker), or the client object given; None when nothing in the run needs an LLM."""
    if not plan.needs_llm:
        return None
    if plan.client_object is not None:
        return get_client(plan.client_object)
    kwargs = plan.config.llm_kwargs if llm_kwargs is None else llm_kwargs
    return get_client(plan.llm, usage=plan.usage, **kwargs)


def _harvest(plan: Plan, sae: Any, model: Any, dataset: Any, progress: bool) -> LatentStore:
    if dataset is None:
        raise ConfigError("pass model= and dataset= (or store= from sae.autointerp.harvest())")
    from ..harvest import harvest

    return harvest(sae, model, dataset, config=plan.config.harvest, progress=progress)


async def _run_and_close(runner: Runner, latents: list[int], concurrency: int, client: Any) -> str | None:
    try:
        return await runner.run(latents, concurrency)
    finally:  # on the run's own loop: its HTTP connections belong to it
        if client is not None:
            await client.aclose()


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
