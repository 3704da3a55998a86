"""The distributed harvest on Ray (``harvest(..., executor="ray")``; the ``ray`` extra, imported lazily).

The driver tokenizes the corpus and cuts the sequences into *shards* (``shard_batches`` batches of
consecutive sequences, the same blocks the local loop folds its float sums in; ``stats.py``). Actors, each
owning a copy of the model and the SAEs (one per GPU, else one per CPU), harvest one shard at a time into
fresh statistics and send them back. The driver checkpoints each finished shard in
``<store>/shards/<first sequence>.safetensors``, then folds the shards into the store in shard order
(:meth:`LatentStats.merge`): the merged store equals the local harvest's, value for value. A task whose actor
dies is given, with the same shard, to a fresh actor; an interrupted run resumes from the store's checkpoint
and the shard files left beside it.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import pickle
import time
import uuid
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from . import jobs as jobs_module
from .corpus import CorpusSpec
from .jobs import HarvestJob, StatsWorker, harvest_batch, record_batch, run_local, sequence_stream
from .model import ModelAdapter
from .stats import LatentStats
from .store import append, disk_errors, save_checkpoint

log = logging.getLogger(__name__)

#: Named actors live in this Ray namespace (a test or an operator can find them there).
RAY_NAMESPACE = "sae_lens_autointerp"
#: A shard whose actors keep dying is given up after this many tries (a bug, not bad luck).
MAX_TRIES = 4


def check_ray(n_workers: int | None, worker_options: dict[str, Any] | None) -> None:
    """Refuse a Ray harvest that cannot start, before any lock or forward pass."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"executor='ray' needs Ray ({err}); pip install 'sae-lens-autointerp[ray]', or use executor='local'"
        ) from None
    if n_workers is not None and (not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1):
        raise ConfigError(f"n_workers must be a positive integer, got {n_workers!r}")
    if worker_options is not None and not isinstance(worker_options, dict):
        raise ConfigError(f"worker_options must be a dict of ray.remote options, got {type(worker_options).__name__}")


def _new_context_var(name: str, has_default: bool, default: Any) -> contextvars.ContextVar[Any]:
    return contextvars.ContextVar(name, default=default) if has_default else contextvars.ContextVar(name)


def dump_for_workers(obj: Any) -> bytes:
    """cloudpickle ``obj`` (the model and the SAEs) for the actors. A TransformerBridge that has run a forward
    pass holds ``contextvars.ContextVar`` objects in its hook closures, which pickle refuses; a context
    variable's values live in the context, not in the variable, so in a fresh process a new variable of the
    same name and default is the same thing (one per original: the pickler's memo keeps them shared)."""
    from ray import cloudpickle

    class Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, value: Any) -> Any:
            if isinstance(value, contextvars.ContextVar):
                try:
                    default, has_default = contextvars.Context().run(value.get), True
                except LookupError:
                    default, has_default = None, False
                return _new_context_var, (value.name, has_default, default)
            return super().reducer_override(value)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


class HarvestWorker:
    """A Ray actor's state: the model and the SAEs, ready to harvest any shard."""

    def __init__(self, payload: bytes) -> None:
        model, saes = pickle.loads(payload)  # our own dump_for_workers bytes, from the driver
        self.jobs: list[HarvestJob] = []
        for name, sae, settings in saes:
            adapter = ModelAdapter(model, sae)
            in_slice = None
            if adapter.spec.seqpos_slice is not None:
                in_slice = torch.zeros(settings.ctx_len, dtype=torch.bool)
                in_slice[slice(*adapter.spec.seqpos_slice)] = True
            job = HarvestJob(name, sae, adapter, settings, Path(), {}, LatentStats(0, settings), in_slice=in_slice)
            job.special = torch.tensor(adapter.special_token_ids(), dtype=torch.long)
            self.jobs.append(job)

    def run_shard(self, first_seq: int, sequences: list[list[int]]) -> list[dict[str, Any]]:
        """Harvest sequences ``first_seq, ...`` (one shard) into fresh statistics, one per SAE."""
        settings = self.jobs[0].settings
        stats = [job.fresh_stats() for job in self.jobs]
        tokens: list[list[bytes]] = [[] for _ in self.jobs]
        n_valid = [0] * len(self.jobs)
        n_batches = 0
        # folds overlap the next forward where that pays, as locally
        worker = StatsWorker(background=jobs_module.overlap_stats(self.jobs[0].adapter.device))
        try:
            with torch.inference_mode():
                for lo in range(0, len(sequences), settings.batch_size):
                    batch = sequences[lo : lo + settings.batch_size]
                    for i, res in enumerate(harvest_batch(self.jobs, stats, batch, first_seq + lo, fold=worker.fold)):
                        tokens[i].append(res.tokens)
                        n_valid[i] += res.n_valid
                    n_batches += 1
            worker.drain()
        finally:
            worker.abandon()
        for part in stats:
            part.end_shard()
        return [
            {"state": part.state_dict(), "tokens": b"".join(t), "n_valid": v, "n_batches": n_batches}
            for part, t, v in zip(stats, tokens, n_valid)
        ]


def _shard_path(job: HarvestJob, first_seq: int) -> Path:
    return job.folder / "shards" / f"{first_seq:012d}.safetensors"


def _save_shard(job: HarvestJob, first_seq: int, n_seqs: int, part: dict[str, Any]) -> None:
    """A finished shard's statistics and tokens, in one atomically renamed file (its checkpoint)."""
    from safetensors.torch import save_file

    path = _shard_path(job, first_seq)
    path.parent.mkdir(exist_ok=True)
    tensors = {k: v.contiguous() for k, v in part["state"].items()}
    tensors["shard.tokens"] = torch.frombuffer(bytearray(part["tokens"]), dtype=torch.int32).clone()
    info = {"key": job.meta["key"], "first_seq": first_seq, "n_seqs": n_seqs}
    info.update(n_valid=part["n_valid"], n_batches=part["n_batches"])
    tmp = path.with_name(path.name + ".tmp")
    with disk_errors(job.folder, f"the shard {path.name}"):
        save_file(tensors, str(tmp), metadata={"shard": json.dumps(info)})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _load_shard(job: HarvestJob, first_seq: int, n_seqs: int) -> dict[str, Any] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = _shard_path(job, first_seq)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {})["shard"])
        state = load_file(str(path))
    except Exception:  # a torn or foreign file: harvest the shard again
        return None
    if info.get("key") != job.meta["key"] or info.get("n_seqs") != n_seqs:
        return None
    tokens = state.pop("shard.tokens").numpy().tobytes()
    return {"state": state, "tokens": tokens, "n_valid": info["n_valid"], "n_batches": info["n_batches"]}


def _default_workers(worker_options: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    import ray

    resources = ray.cluster_resources()
    n_gpus = int(resources.get("GPU", 0))
    if worker_options is None:
        worker_options = {"num_gpus": 1} if n_gpus else {"num_cpus": 1}
    if worker_options.get("num_gpus"):
        n = max(1, int(n_gpus // float(worker_options["num_gpus"])))
    else:
        n = max(1, int(resources.get("CPU", 1) // float(worker_options.get("num_cpus", 1) or 1)))
    return n, worker_options


def run_on_ray(
    jobs: list[HarvestJob],
    model: Any,
    corpus: CorpusSpec,
    *,
    n_workers: int | None,
    worker_options: dict[str, Any] | None,
    checkpoint_every_s: float,
    progress: bool,
) -> None:
    """Harvest ``jobs`` (opened, maybe resumed) on Ray actors; leaves each job's statistics, counters and
    tokens.bin as the local loop would, ready for :func:`jobs.finish`."""
    import ray

    if not ray.is_initialized():
        ray.init()  # a local cluster, or the one RAY_ADDRESS names
    s = jobs[0].settings
    ctx, total, per_shard = s.ctx_len, s.n_sequences, s.shard_sequences
    # A checkpoint from the middle of a shard (a local run): finish that shard here first.
    furthest = max(j.done for j in jobs)
    boundary = min(total, -(-furthest // per_shard) * per_shard)
    if any(j.done < boundary for j in jobs):
        run_local(jobs, corpus, checkpoint_every_s=checkpoint_every_s, progress=progress, stop_at=boundary)
    start = min(j.done for j in jobs)
    if start >= total or (start > 0 and start % per_shard):  # the corpus ran out before the total
        return
    sequences = list(islice(sequence_stream(corpus, jobs[0].adapter, ctx, skip=start), total - start))
    shards = [(start + lo, sequences[lo : lo + per_shard]) for lo in range(0, len(sequences), per_shard)]
    if not shards:
        return
    # Shards already checkpointed by an interrupted run are not harvested again.
    results: dict[int, list[dict[str, Any]]] = {}
    for first, seqs in shards:
        loaded = [_load_shard(job, first, len(seqs)) for job in jobs]
        found = [p for p in loaded if p is not None]
        if len(found) == len(jobs):
            results[first] = found
    pending = [(first, seqs) for first, seqs in shards if first not in results]

    default_n, options = _default_workers(worker_options)
    n = min(n_workers or default_n, max(len(pending), 1))
    remote_cls = ray.remote(**options)(HarvestWorker)
    payload = ray.put(dump_for_workers((model, [(job.name, job.sae, s) for job in jobs])))
    tag = uuid.uuid4().hex[:8]
    made = 0

    def new_actor() -> Any:
        nonlocal made
        made += 1
        name = f"harvest-{tag}-{made}"
        return remote_cls.options(name=name, namespace=RAY_NAMESPACE).remote(payload)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(shards), initial=len(results), unit="shard", desc="harvest (ray)", disable=not progress)
    tries: dict[int, int] = {}
    in_flight: dict[Any, tuple[Any, int, list[list[int]]]] = {}
    idle = [new_actor() for _ in range(n)] if pending else []
    redone = 0
    next_fold = 0
    last_checkpoint = time.monotonic()

    def submit(actor: Any, first: int, seqs: list[list[int]]) -> None:
        tries[first] = tries.get(first, 0) + 1
        in_flight[actor.run_shard.remote(first, seqs)] = (actor, first, seqs)

    def fold_ready() -> None:
        """Fold finished shards into the stores, in shard order, and checkpoint now and then."""
        nonlocal next_fold, last_checkpoint
        folded = []
        while next_fold < len(shards) and shards[next_fold][0] in results:
            first, seqs = shards[next_fold]
            for job, part in zip(jobs, results.pop(first)):
                with disk_errors(job.folder, "tokens.bin"), open(job.folder / "tokens.bin", "ab", buffering=0) as fh:
                    append(fh, part["tokens"])
                    os.fsync(fh.fileno())
                job.stats.merge(LatentStats.from_state_dict(part["state"], s, job.sae.device))
                record_batch(job, len(seqs), part["n_valid"], part["n_batches"])
            folded.append(first)
            next_fold += 1
        last = next_fold == len(shards)
        if folded and (last or time.monotonic() - last_checkpoint >= checkpoint_every_s):
            for job in jobs:
                save_checkpoint(job.folder, job.stats, job.meta)
                for old in sorted((job.folder / "shards").glob("*.safetensors")):
                    if int(old.stem) < job.done:  # covered by the checkpoint now
                        old.unlink()
            last_checkpoint = time.monotonic()

    try:
        while pending or in_flight:
            while pending and idle:
                first, seqs = pending.pop(0)
                submit(idle.pop(), first, seqs)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            actor, first, seqs = in_flight.pop(ref)
            try:
                parts = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                if tries[first] >= MAX_TRIES:
                    raise RuntimeError(f"shard at sequence {first} failed {tries[first]} times; last: {err}") from err
                log.warning("a harvest actor died (%s); its shard at sequence %d is redone", type(err).__name__, first)
                redone += 1
                ray.kill(actor, no_restart=True)
                idle.append(new_actor())
                pending.insert(0, (first, seqs))
                continue
            idle.append(actor)
            for job, part in zip(jobs, parts):
                _save_shard(job, first, len(seqs), part)
            results[first] = parts
            bar.update(1)
            fold_ready()
        fold_ready()
    finally:
        for actor in idle + [a for a, _, _ in in_flight.values()]:
            ray.kill(actor, no_restart=True)
        bar.close()
    for job in jobs:
        job.meta["ray"] = {"n_workers": n, "n_shards": len(shards), "shards_redone": redone}
        shard_dir = job.folder / "shards"
        if shard_dir.is_dir() and not any(shard_dir.iterdir()):
            shard_dir.rmdir()
