"""The machinery one harvest of one or several SAEs shares between the local loop and the Ray workers.

A :class:`HarvestJob` is one SAE's harvest: its adapter, settings, store folder, statistics and counters.
:func:`prepare_jobs` checks the arguments and opens (or resumes) each store; :func:`harvest_batch` runs one
batch of sequences through the model once for all jobs and folds it into each job's statistics;
:func:`run_local` is the single-process loop; :func:`finish` seals a store. A job's batches are always the
same global blocks of ``batch_size`` sequences and its shards the same blocks of ``shard_batches`` batches,
whichever loop runs them, so every path does the same arithmetic (see ``stats.py``).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

from ..errors import ConfigError
from ..locks import folder_lock
from ..paths import cache_dir
from .config import HarvestSettings
from .corpus import CorpusSpec, batched, iter_sequences
from .model import ModelAdapter, capture_many
from .stats import LatentStats
from .store import (
    PAD_TOKEN,
    STORE_FORMAT_VERSION,
    LatentStore,
    append,
    checkpoint_meta,
    disk_errors,
    read_meta,
    save_checkpoint,
    seal,
)

if TYPE_CHECKING:
    from sae_lens import SAE

log = logging.getLogger(__name__)


def sae_fingerprint(sae: SAE) -> dict[str, Any]:
    """Identity of an SAE: its config and a hash of every parameter."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    cfg = json.loads(json.dumps(sae.cfg.to_dict(), default=str, sort_keys=True))
    cfg.pop("device", None)
    return {"class": type(sae).__name__, "cfg": cfg, "weights_sha256": digest.hexdigest()}


def resolve_ctx_len(ctx_len: int | None, adapter: ModelAdapter) -> int:
    if ctx_len is None:
        ctx_len = int(adapter.spec.context_size or 128)
        if adapter.n_ctx:
            ctx_len = min(ctx_len, adapter.n_ctx)
    if not isinstance(ctx_len, int) or ctx_len < 2:
        raise ConfigError(f"ctx_len must be an integer >= 2, got {ctx_len!r}")
    if adapter.n_ctx and ctx_len > adapter.n_ctx:
        raise ConfigError(
            f"ctx_len={ctx_len} is larger than the model's context window ({adapter.n_ctx} tokens); "
            f"use ctx_len <= {adapter.n_ctx}"
        )
    return ctx_len


def chunked_ctx_len(ctx_len: int, example_len: int, *, given: bool) -> int:
    """``ctx_len`` as a whole number of windows: each example's window is its fixed chunk of ``example_len``
    tokens (``stats.py``), and a partial chunk at a sequence's end would give shorter windows, a cue a judge
    could read without the explanation. A default ``ctx_len`` is rounded down; one the caller chose must fit."""
    if not isinstance(example_len, int) or not 1 <= example_len <= ctx_len:
        raise ConfigError(f"example_len must be between 1 and ctx_len={ctx_len}, got {example_len!r}")
    if ctx_len % example_len == 0:
        return ctx_len
    fitted = ctx_len - ctx_len % example_len
    if given:
        raise ConfigError(
            f"ctx_len={ctx_len} is not a multiple of example_len={example_len}: every example is shown as its "
            f"fixed chunk of example_len tokens, and a partial chunk would be shorter; pass ctx_len={fitted} "
            f"(or {fitted + example_len} if the model allows), or an example_len that divides {ctx_len}"
        )
    log.info("ctx_len %d rounded down to %d, a multiple of example_len=%d", ctx_len, fitted, example_len)
    return fitted


@dataclass
class HarvestJob:
    """One SAE's harvest into one store folder."""

    name: str
    sae: Any
    adapter: ModelAdapter
    settings: HarvestSettings
    folder: Path
    meta: dict[str, Any]
    stats: LatentStats
    store: LatentStore | None = None  # set when the store is (already) complete
    special: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    in_slice: torch.Tensor | None = None

    @property
    def done(self) -> int:
        return int(self.meta["n_sequences_done"])

    def fresh_stats(self) -> LatentStats:
        return LatentStats(int(self.sae.cfg.d_sae), self.settings, device=self.sae.device)


def prepare_jobs(
    saes: Mapping[str, Any],
    model: Any,
    corpus: CorpusSpec,
    settings: dict[str, Any],
    ctx_len: int | None,
    store_dirs: Mapping[str, str | os.PathLike[str] | None],
) -> list[HarvestJob]:
    """Check every SAE against the model and each other, and make its job (without opening the store)."""
    adapters = {name: ModelAdapter(model, sae) for name, sae in saes.items()}
    lens = {name: resolve_ctx_len(ctx_len, a) for name, a in adapters.items()}
    if len(set(lens.values())) > 1:
        raise ConfigError(
            f"these SAEs default to different ctx_len {lens}; pass ctx_len=... to harvest them in one pass"
        )
    bos = {name: a.spec.prepend_bos for name, a in adapters.items()}
    if len(set(bos.values())) > 1:
        raise ConfigError(
            f"these SAEs disagree on prepend_bos {bos}, so they read different token sequences; harvest the two "
            "groups with separate calls"
        )
    if corpus.kind == "tokens":  # ids the model cannot embed: refused before any forward pass
        first = next(iter(adapters.values()))
        vocab = first.subject.d_vocab
        low, high = int(corpus.source.min()), int(corpus.source.max())
        if low < 0 or high >= vocab:
            raise ConfigError(
                f"the token tensor holds ids from {low} to {high}, but this model's vocabulary is "
                f"0..{vocab - 1}; tokenize with the model's own tokenizer"
            )
    ctx = chunked_ctx_len(next(iter(lens.values())), settings["example_len"], given=ctx_len is not None)
    if corpus.token_column is not None:  # pre-tokenized rows stream: the first is checked now, each later as read
        next(sequence_stream(corpus, next(iter(adapters.values())), ctx), None)
    for adapter in adapters.values():
        adapter.check_width()
    hs = HarvestSettings(ctx_len=ctx, **settings)
    model_fp = next(iter(adapters.values())).fingerprint()  # hashing the weights once for all SAEs
    jobs: list[HarvestJob] = []
    for name, sae in saes.items():
        adapter = adapters[name]
        identity = {
            "format_version": STORE_FORMAT_VERSION,
            "model": model_fp,
            "sae": sae_fingerprint(sae),
            "corpus": corpus.fingerprint,
            "hook": adapter.spec.__dict__,
            "settings": hs.to_dict(),
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        store_dir = store_dirs.get(name)
        folder = Path(store_dir) if store_dir is not None else cache_dir("stores") / key[:24]
        if any(j.folder == folder for j in jobs):
            raise ConfigError(f"two SAEs would share the store folder {folder}; give each its own store_dir")
        meta: dict[str, Any] = {
            **identity,
            "key": key,
            "d_sae": int(sae.cfg.d_sae),
            "n_sequences_done": 0,
            "n_batches_done": 0,
            "n_valid_tokens": 0,
            "complete": False,
        }
        in_slice = None
        if adapter.spec.seqpos_slice is not None:  # positions outside the SAE's training slice are masked
            in_slice = torch.zeros(ctx, dtype=torch.bool)
            in_slice[slice(*adapter.spec.seqpos_slice)] = True
        job = HarvestJob(name, sae, adapter, hs, folder, meta, LatentStats(0, hs), in_slice=in_slice)
        job.special = torch.tensor(adapter.special_token_ids(), dtype=torch.long)
        jobs.append(job)
    return jobs


def open_jobs(jobs: list[HarvestJob], stack: ExitStack) -> list[HarvestJob]:
    """Lock each store folder (held until ``stack`` closes; sorted, so two callers never deadlock), find the
    finished stores and resume the others from their checkpoints. Returns the jobs still to run."""
    todo = []
    for job in sorted(jobs, key=lambda j: str(j.folder)):
        # One harvest per store at a time: a second process waits, then finds the finished store (or resumes).
        # A folder this process cannot write gives no lock (False): a finished store is read from it as it is.
        writable = stack.enter_context(folder_lock(job.folder, "harvest", read_only_ok=True))
        key = job.meta["key"]
        if (job.folder / "meta.json").is_file():
            previous = read_meta(job.folder)
            if previous.get("key") != key:
                raise ConfigError(
                    f"{job.folder} holds a store for other inputs (key {str(previous.get('key'))[:12]}…); pass "
                    "another store_dir or delete it"
                )
            if previous.get("complete"):
                job.store = LatentStore(job.folder)
                continue
        if not writable:
            raise ConfigError(
                f"the store folder {job.folder} cannot be written (read-only file system or no permission) and "
                "holds no finished store of these inputs to reuse; pass a store_dir this process can write"
            )
        job.stats = job.fresh_stats()
        checkpoint = checkpoint_meta(job.folder)
        if checkpoint is not None and checkpoint.get("key") == key and not checkpoint.get("complete"):
            from safetensors.torch import load_file

            # The statistics and the counters they belong to come from the same file: never out of step.
            state = load_file(str(job.folder / "stats.safetensors"))
            job.stats = LatentStats.from_state_dict(state, job.settings, job.sae.device)
            job.meta = checkpoint
        token_path = job.folder / "tokens.bin"
        with open(token_path, "ab"):
            pass
        os.truncate(token_path, job.done * job.settings.ctx_len * 4)  # drop tokens written after the checkpoint
        todo.append(job)
    order = {id(j): i for i, j in enumerate(jobs)}
    return sorted(todo, key=lambda j: order[id(j)])


def sequence_stream(corpus: CorpusSpec, adapter: ModelAdapter, ctx_len: int, skip: int = 0) -> Iterator[list[int]]:
    """The harvest's token sequences (global index 0, 1, ...), starting at ``skip``."""
    sequences = iter_sequences(
        corpus,
        adapter.tokenizer,
        ctx_len=ctx_len,
        prepend_bos=adapter.spec.prepend_bos,
        bos_id=adapter.bos_token_id(),
        separator_id=adapter.separator_token_id(),
    )
    # Skip what is already done (tokenizing again is cheap next to the forward pass).
    for _ in range(skip):
        if next(sequences, None) is None:
            break
    if corpus.token_column is not None:
        return _checked(sequences, adapter.subject.d_vocab, skip)
    return sequences


def _check_token_ids(ids: list[int], vocab: int, index: int) -> None:
    """Refuse a pre-tokenized sequence with ids the model cannot embed (another tokenizer's data)."""
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        raise ConfigError(
            f"pre-tokenized sequence {index} holds ids from {min(ids)} to {max(ids)}, but this model's vocabulary "
            f"is 0..{vocab - 1}: the data was tokenized for another model; pretokenize with this model's tokenizer"
        )


def _checked(sequences: Iterator[list[int]], vocab: int, start: int) -> Iterator[list[int]]:
    for index, ids in enumerate(sequences, start):
        _check_token_ids(ids, vocab, index)
        yield ids


#: Fold each batch into the statistics on a background thread, overlapping the next forward pass (see
#: StatsWorker; the stores are the same bits either way, tested): True, False, or None to decide per harvest
#: (:func:`overlap_stats`). benchmarks/harvest.py measures both.
OVERLAP_STATS: bool | None = None


def overlap_stats(device: torch.device) -> bool:
    """Whether folding on a background thread can pay: the forward runs on an accelerator, or this process
    has a core that torch's threads leave free. Measured on 2 cores (2 torch threads; benchmarks/harvest.py
    --inline-too): the worker made the harvest 0.92-0.96x as fast as folding inline, as it took a core from
    the forward pass."""
    if OVERLAP_STATS is not None:
        return OVERLAP_STATS
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


@dataclass
class BatchResult:
    """What one batch gives one job: the int32 tokens to append to tokens.bin and the valid tokens seen."""

    tokens: bytes
    n_valid: int


def harvest_batch(
    jobs: Sequence[HarvestJob],
    stats: Sequence[LatentStats],
    batch: Sequence[Sequence[int]],
    first_seq: int,
    fold: Callable[[Callable[[], None]], None] | None = None,
) -> list[BatchResult]:
    """Run the sequences ``first_seq, first_seq + 1, ...`` through the model once and fold them into each
    job's ``stats``. ``fold`` runs the folding (by default at once; :class:`StatsWorker` overlaps it with the
    next batch's forward pass)."""
    ctx = jobs[0].settings.ctx_len
    pad_id = jobs[0].adapter.pad_token_id()
    tokens = torch.full((len(batch), ctx), pad_id, dtype=torch.long)
    real = torch.zeros((len(batch), ctx), dtype=torch.bool)
    for row, seq in enumerate(batch):
        tokens[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        real[row, : len(seq)] = True
    width = int(real.sum(1).max())  # a short last batch runs only as wide as it is
    view = tokens[:, :width]
    # One SAE: its adapter's own capture (the single-SAE entry point); several: one pass for all.
    captured = [jobs[0].adapter.capture(view)] if len(jobs) == 1 else capture_many([j.adapter for j in jobs], view)
    seq_ids = torch.arange(first_seq, first_seq + len(batch))
    out = []
    for job, job_stats, act in zip(jobs, stats, captured):
        valid = real & ~torch.isin(tokens, job.special)
        if job.in_slice is not None:
            valid &= job.in_slice
        acts = job.sae.encode(act)
        if width < ctx:
            acts = torch.nn.functional.pad(acts, (0, 0, 0, ctx - width))
        update = functools.partial(job_stats.update, acts, valid, seq_ids, tokens=tokens)
        if fold is None:
            update()
        else:
            fold(update)
        written = torch.where(real, tokens, PAD_TOKEN).to(torch.int32).numpy().tobytes()
        out.append(BatchResult(written, int(valid.sum())))
    return out


class StatsWorker:
    """Folds batches into the statistics on one background thread, in submission order, while the main
    thread runs the next batch's forward pass (with ``background=False``: at once, in the caller). At most
    ``depth`` folds wait, so memory stays one batch of activations per fold. Whatever reads the statistics (a
    shard's end, a checkpoint, finish) goes through :meth:`fold` or comes after :meth:`drain`. A fold's error is
    raised in the main thread at the next call."""

    def __init__(self, background: bool = True, depth: int = 1) -> None:
        self.depth = depth
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="harvest-stats", initializer=_one_thread)
            if background
            else None
        )
        self._pending: collections.deque[Future[None]] = collections.deque()

    def fold(self, fn: Callable[[], None]) -> None:
        if self._pool is None:
            fn()
            return
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(_in_inference_mode, fn))

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def abandon(self) -> None:
        """After an error elsewhere: let the running fold end, drop the waiting ones, raise nothing."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


def _one_thread() -> None:
    """One OpenMP thread for the stats worker's own ops: they are small and memory-bound, and a second team of
    spinning OpenMP threads would contend for every core with the forward pass they overlap. The OpenMP
    setting is per thread; ``torch.set_num_threads`` is not (it also sets MKL's process-wide count, slowing
    the forward pass's matrix products). Without an OpenMP build of torch nothing changes."""
    set_threads = _torch_omp_set_num_threads()
    if set_threads is not None:
        set_threads(1)


@functools.cache
def _torch_omp_set_num_threads() -> Any:
    """``omp_set_num_threads`` as torch's CPU library binds it: the OpenMP runtime torch really uses, which is
    not always its own copy (a library loaded earlier, llama.cpp's for one, can supply ``libgomp.so.1``)."""
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = os.path.join(lib_dir, name)
        if os.path.exists(path):
            try:
                return ctypes.CDLL(path).omp_set_num_threads  # already loaded: the same handle
            except (OSError, AttributeError):
                return None
    return None


def _in_inference_mode(fn: Callable[[], None]) -> None:
    with torch.inference_mode():  # thread-local: the harvest's tensors are inference tensors
        fn()


def record_batch(job: HarvestJob, n_sequences: int, n_valid: int, n_batches: int = 1) -> None:
    job.meta["n_sequences_done"] = job.done + n_sequences
    job.meta["n_batches_done"] = int(job.meta["n_batches_done"]) + n_batches
    job.meta["n_valid_tokens"] = int(job.meta["n_valid_tokens"]) + n_valid


def _checkpoint(job: HarvestJob, token_file: BinaryIO) -> None:
    _sync(job, token_file)  # the tokens a checkpoint counts are on disk before it
    save_checkpoint(job.folder, job.stats, job.meta)


def _sync(job: HarvestJob, token_file: BinaryIO) -> None:
    with disk_errors(job.folder, "tokens.bin"):
        os.fsync(token_file.fileno())


def run_local(
    jobs: list[HarvestJob],
    corpus: CorpusSpec,
    *,
    checkpoint_every_s: float,
    progress: bool,
    stop_at: int | None = None,
) -> None:
    """The single-process loop: batch after batch, one forward pass for all jobs, up to sequence ``stop_at``
    (default: the requested total). A job already past a batch (resumed further) skips it."""
    from tqdm.auto import tqdm

    s = jobs[0].settings
    ctx, total = s.ctx_len, s.n_sequences
    stop = total if stop_at is None else min(stop_at, total)
    seq = min(j.done for j in jobs)
    if seq >= stop:
        return
    sequences = sequence_stream(corpus, jobs[0].adapter, ctx, skip=seq)
    bar = tqdm(total=stop * ctx, initial=seq * ctx, unit="tok", desc="harvest", disable=not progress)
    last_checkpoint = time.monotonic()
    worker = StatsWorker(background=overlap_stats(jobs[0].adapter.device))
    with ExitStack() as stack, torch.inference_mode():
        stack.callback(worker.abandon)  # on an error too: no fold left running on a store being closed
        # unbuffered: a full disk fails the write that hit it, never a flush hidden in close()
        files = {id(j): stack.enter_context(open(j.folder / "tokens.bin", "ab", buffering=0)) for j in jobs}
        for batch in batched(sequences, s.batch_size):
            batch = batch[: stop - seq]
            if not batch:
                break
            active = [j for j in jobs if j.done <= seq]
            results = harvest_batch(active, [j.stats for j in active], batch, seq, fold=worker.fold)
            for job, res in zip(active, results):
                with disk_errors(job.folder, "tokens.bin"):
                    append(files[id(job)], res.tokens)
                record_batch(job, len(batch), res.n_valid)
                if int(job.meta["n_batches_done"]) % s.shard_batches == 0:
                    worker.fold(job.stats.end_shard)
            seq += len(batch)
            bar.update(len(batch) * ctx)
            if time.monotonic() - last_checkpoint >= checkpoint_every_s:
                worker.drain()  # a checkpoint holds exactly the batches its meta counts
                for job in active:
                    _checkpoint(job, files[id(job)])
                last_checkpoint = time.monotonic()
            if seq >= stop:
                break
        worker.drain()
        for job in jobs:  # finish() saves the statistics; the tokens must be on disk first
            _sync(job, files[id(job)])
    bar.close()


def finish(job: HarvestJob) -> LatentStore:
    """Fold the last shard, put the kept sets in canonical order, seal the store."""
    if job.done == 0:
        raise ConfigError("the corpus produced no tokens; pass non-empty text")
    job.stats.end_shard()
    job.stats.canonicalize()
    job.meta["complete"] = True
    job.meta["n_tokens_requested_reached"] = job.done >= job.settings.n_sequences
    save_checkpoint(job.folder, job.stats, job.meta)
    from .store import write_json_atomic  # looked up at call time, like save_checkpoint's own

    with disk_errors(job.folder, "meta.json"):
        write_json_atomic(job.folder / "meta.json", seal(job.folder, job.meta))
    job.store = LatentStore(job.folder)
    return job.store
