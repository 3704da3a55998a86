"""``harvest()`` / ``harvest_many()``: stream a corpus through model + SAEs into latent stores.

The store is keyed by a hash of the model, the SAE, the corpus and the settings: the same call later
returns the finished store without recomputation, and an interrupted call resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..subjects import ModuleReader, with_hook_module
from .corpus import resolve_corpus
from .jobs import finish, open_jobs, prepare_jobs, run_local, sae_fingerprint
from .store import LatentStore

if TYPE_CHECKING:
    from sae_lens import SAE

    from .corpus import CorpusLike
    from .model import SubjectModel

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_N_TOKENS", "EXECUTORS", "harvest", "harvest_many", "pin_malloc_thresholds", "sae_fingerprint"]

DEFAULT_N_TOKENS = 1_000_000
EXECUTORS = ("local", "ray")
#: ``SAE_AUTOINTERP_PIN_MALLOC=1`` makes every :func:`harvest` pin glibc's malloc thresholds (see
#: :func:`pin_malloc_thresholds`) unless it is called with ``pin_malloc=False``.
PIN_MALLOC_ENV_VAR = "SAE_AUTOINTERP_PIN_MALLOC"
_MALLOC_PINNED = False


def pin_malloc_thresholds() -> bool:
    """Pin glibc's malloc thresholds for this whole process (opt-in; once per process, cannot be undone).

    What it does: ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` pinned to 1 MiB (what
    ``MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=1048576`` in the environment does before start-up),
    so every buffer over 1 MiB is mmapped and returned to the OS when freed, never kept in the heap.

    The trade, measured on the embedded model (SmolLM2 blocks.3, 128-token rows, batches of 16): peak RSS
    ~8% lower (1,285 vs 1,400 MiB at 32k tokens), but every forward pass 1.6-1.75x slower, since each batch's
    activations are mmapped and their pages faulted in anew. Without pinning the peak is flat already
    (1,399 -> 1,392 MiB from 32k to 131k tokens; ``benchmarks/harvest.py --malloc``), so nothing pins by
    default, the ``sae-autointerp`` command included. For a machine tight on memory:
    ``harvest(..., pin_malloc=True)`` or ``SAE_AUTOINTERP_PIN_MALLOC=1``. Returns whether the thresholds are
    pinned (False off glibc).
    """
    global _MALLOC_PINNED
    if _MALLOC_PINNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = bool(libc.mallopt(m_mmap_threshold, 1 << 20)) & bool(libc.mallopt(m_trim_threshold, 1 << 20))
    except (OSError, AttributeError):
        return False  # not glibc
    _MALLOC_PINNED = ok
    log.debug("glibc malloc thresholds pinned to 1 MiB: %s", ok)
    return ok


def _wants_pinned_malloc(pin_malloc: bool | None) -> bool:
    if pin_malloc is not None:
        return bool(pin_malloc)
    return os.environ.get(PIN_MALLOC_ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def harvest(
    sae: SAE,
    model: SubjectModel,
    dataset: CorpusLike,
    *,
    n_tokens: int = DEFAULT_N_TOKENS,
    ctx_len: int | None = None,
    batch_size: int = 16,
    example_len: int = 32,
    top_k: int = 50,
    n_stratified: int = 100,
    n_random_windows: int = 1000,
    threshold: float = 0.0,
    seed: int = 0,
    n_position_buckets: int = 64,
    n_token_slots: int = 64,
    shard_batches: int = 16,
    text_column: str = "text",
    split: str = "train",
    streaming: bool = True,
    dataset_config: str | None = None,
    store_dir: str | os.PathLike[str] | None = None,
    checkpoint_every_s: float = 30.0,
    progress: bool = True,
    pin_malloc: bool | None = None,
    executor: str = "local",
    n_workers: int | None = None,
    worker_options: dict[str, Any] | None = None,
    hook_module: str | Mapping[str, str] | None = None,
    hook_fn: ModuleReader | None = None,
) -> LatentStore:
    """Harvest latent statistics of ``sae`` on ``dataset`` through ``model``.

    ``model`` is a TransformerLens model (``HookedTransformer`` / ``TransformerBridge`` and their SAE variants),
    a Hugging Face ``transformers`` model, :class:`~sae_lens_autointerp.subjects.HFModel` or an nnsight model:
    the SAE's TransformerLens hook name is mapped to the module it denotes (``subjects/hookmap.py``,
    docs/models.md).

    ``dataset`` is any form of ``corpus.py``'s docstring: a Hugging Face name or object, local files, strings,
    a token tensor, or pre-tokenized rows (a ``tokens`` / ``input_ids`` column, read as SAELens reads them).

    Args:
        n_tokens: tokens to read (rounded up to whole sequences of ``ctx_len``).
        ctx_len: sequence length; default ``sae.cfg.metadata.context_size`` (or 128), capped by the model.
        batch_size: sequences per forward pass.
        example_len: tokens per example (the unit of top-k / sampling) and per stored window: each example's
            window is its fixed chunk of ``example_len`` tokens, so ``ctx_len`` must be a multiple of it (a default
            ``ctx_len`` is rounded down to one).
        top_k / n_stratified / n_random_windows: sizes of the kept samples (see ``stats.py``).
        n_position_buckets / n_token_slots: resolution of the per-position sums and size of each latent's
            per-token table, used by the known-heuristic filters (see ``stats.py`` and ``heuristics.py``).
        shard_batches: batches per shard, the unit in which float sums are folded (so every executor gives
            the same bits), of distributed work and of redoing a lost worker's work.
        store_dir: folder of the store; default ``~/.cache/sae-lens-autointerp/stores/<key>``.
        checkpoint_every_s: seconds between checkpoints (0 = after every batch).
        pin_malloc: pin glibc's malloc thresholds for the whole process first (see
            :func:`pin_malloc_thresholds`: ~8% lower peak RSS, 1.6-1.75x slower forward passes). Default None:
            only when ``SAE_AUTOINTERP_PIN_MALLOC=1``.
        executor: ``"local"`` (this process) or ``"ray"``: shards of sequences on Ray actors, each with its own
            copy of the model, merged into the store the local executor would write (``ray_harvest.py``).
        n_workers / worker_options: Ray only: the number of actors (default: one per GPU of the cluster, else
            one per CPU) and their ``ray.remote`` options (default ``{"num_gpus": 1}`` or ``{"num_cpus": 1}``).
        hook_module / hook_fn: Hugging Face and nnsight models only: read the SAE's input from this module
            (a dotted path) instead of the mapped hook point, picked by ``hook_fn(module, args, output)``
            (default: the module's output); see :class:`~sae_lens_autointerp.subjects.HFModel`.
    """
    if hook_module is not None or hook_fn is not None:
        model = with_hook_module(model, hook_module, hook_fn)
    stores = harvest_many(
        {"sae": sae},
        model,
        dataset,
        n_tokens=n_tokens,
        ctx_len=ctx_len,
        batch_size=batch_size,
        example_len=example_len,
        top_k=top_k,
        n_stratified=n_stratified,
        n_random_windows=n_random_windows,
        threshold=threshold,
        seed=seed,
        n_position_buckets=n_position_buckets,
        n_token_slots=n_token_slots,
        shard_batches=shard_batches,
        text_column=text_column,
        split=split,
        streaming=streaming,
        dataset_config=dataset_config,
        store_dirs={"sae": store_dir},
        checkpoint_every_s=checkpoint_every_s,
        progress=progress,
        pin_malloc=pin_malloc,
        executor=executor,
        n_workers=n_workers,
        worker_options=worker_options,
    )
    return stores["sae"]


def harvest_many(
    saes: Mapping[str, SAE],
    model: SubjectModel,
    dataset: CorpusLike,
    *,
    n_tokens: int = DEFAULT_N_TOKENS,
    ctx_len: int | None = None,
    batch_size: int = 16,
    example_len: int = 32,
    top_k: int = 50,
    n_stratified: int = 100,
    n_random_windows: int = 1000,
    threshold: float = 0.0,
    seed: int = 0,
    n_position_buckets: int = 64,
    n_token_slots: int = 64,
    shard_batches: int = 16,
    text_column: str = "text",
    split: str = "train",
    streaming: bool = True,
    dataset_config: str | None = None,
    store_dirs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    checkpoint_every_s: float = 30.0,
    progress: bool = True,
    pin_malloc: bool | None = None,
    executor: str = "local",
    n_workers: int | None = None,
    worker_options: dict[str, Any] | None = None,
) -> dict[str, LatentStore]:
    """Harvest several SAEs of one model in one pass: every batch runs through the model once, hooked at
    every SAE's hook point and stopped after the deepest; each SAE gets its own store, equal value for value
    (and under the same key) to the store :func:`harvest` would write for it alone.

    ``saes`` maps a name to an SAE; ``store_dirs`` optionally maps names to store folders (default: each
    store's content-addressed folder). All other arguments are :func:`harvest`'s and apply to every SAE.
    Returns ``{name: LatentStore}`` in the order of ``saes``.
    """
    if not isinstance(saes, Mapping) or not saes:
        raise ConfigError("harvest_many needs a non-empty mapping {name: sae}, e.g. {'l3': sae3, 'l4': sae4}")
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    store_dirs = dict(store_dirs or {})
    unknown = sorted(set(store_dirs) - set(saes))
    if unknown:
        raise ConfigError(f"store_dirs names {unknown}, which are not SAEs of this call ({sorted(saes)})")
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ConfigError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(shard_batches, int) or shard_batches < 1:
        raise ConfigError(f"shard_batches must be a positive integer, got {shard_batches!r}")
    if min(top_k, n_stratified) < 1 or n_random_windows < 0:
        raise ConfigError("top_k and n_stratified must be >= 1 and n_random_windows >= 0")
    if min(n_position_buckets, n_token_slots) < 1:
        raise ConfigError("n_position_buckets and n_token_slots must be >= 1")
    if executor == "local" and (n_workers is not None or worker_options is not None):
        raise ConfigError("n_workers and worker_options are for executor='ray'; drop them or pass executor='ray'")
    corpus = resolve_corpus(
        dataset, text_column=text_column, split=split, streaming=streaming, dataset_config=dataset_config
    )
    settings = {
        "n_tokens": n_tokens,
        "batch_size": batch_size,
        "example_len": example_len,
        "top_k": top_k,
        "n_stratified": n_stratified,
        "n_random_windows": n_random_windows,
        "threshold": float(threshold),
        "seed": seed,
        "n_position_buckets": n_position_buckets,
        "n_token_slots": n_token_slots,
        "shard_batches": shard_batches,
    }
    jobs = prepare_jobs(saes, model, corpus, settings, ctx_len, store_dirs)
    if executor == "ray":
        from .ray_harvest import check_ray

        check_ray(n_workers, worker_options)  # before any lock or forward pass
    if _wants_pinned_malloc(pin_malloc):
        pin_malloc_thresholds()
    with ExitStack() as stack:
        todo = open_jobs(jobs, stack)
        if todo:
            if executor == "ray":
                from .ray_harvest import run_on_ray

                run_on_ray(
                    todo,
                    model,
                    corpus,
                    n_workers=n_workers,
                    worker_options=worker_options,
                    checkpoint_every_s=checkpoint_every_s,
                    progress=progress,
                )
            else:
                run_local(todo, corpus, checkpoint_every_s=checkpoint_every_s, progress=progress)
            for job in todo:
                finish(job)
    out = {}
    for job in jobs:
        assert job.store is not None  # every job is finished or was found finished
        out[job.name] = job.store
    return out
