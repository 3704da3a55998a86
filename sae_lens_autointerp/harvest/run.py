"""``harvest()`` / ``harvest_many()``: stream a corpus through model + SAEs into latent stores.

The store is keyed by a hash of the model, the SAE, the corpus and the settings: the same call later
returns the finished store without recomputation, and an interrupted call resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..subjects import ModuleReader, with_hook_module
from .config import EXECUTORS, HarvestConfig, HarvestManyOptions, HarvestOptions, harvest_config
from .corpus import resolve_corpus
from .jobs import finish, open_jobs, prepare_jobs, run_local, sae_fingerprint
from .store import LatentStore

if TYPE_CHECKING:
    from sae_lens import SAE
    from typing_extensions import Unpack

    from .corpus import CorpusLike
    from .model import SubjectModel

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_N_TOKENS", "EXECUTORS", "harvest", "harvest_many", "pin_malloc_thresholds", "sae_fingerprint"]

DEFAULT_N_TOKENS = HarvestConfig().n_tokens
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
    config: HarvestConfig | Mapping[str, Any] | None = None,
    progress: bool = True,
    hook_fn: ModuleReader | None = None,
    **options: Unpack[HarvestOptions],
) -> LatentStore:
    """Harvest latent statistics of ``sae`` on ``dataset`` through ``model``.

    ``model`` is a TransformerLens model (``HookedTransformer`` / ``TransformerBridge`` and their SAE variants),
    a Hugging Face ``transformers`` model, :class:`~sae_lens_autointerp.subjects.HFModel` or an nnsight model:
    the SAE's TransformerLens hook name is mapped to the module it denotes (``subjects/hookmap.py``,
    docs/models.md).

    ``dataset`` is any form of ``corpus.py``'s docstring: a Hugging Face name or object, local files, strings,
    a token tensor, or pre-tokenized rows (a ``tokens`` / ``input_ids`` column, read as SAELens reads them).

    The options are the fields of :class:`~.config.HarvestConfig` (each documented there), given as
    ``config=`` and / or as keywords, which override its fields; a name that is no field is an error naming
    the closest one. Among them: ``n_tokens`` (rounded up to whole sequences of ``ctx_len``), ``ctx_len``
    (default ``sae.cfg.metadata.context_size`` or 128, capped by the model), ``example_len``, ``top_k`` /
    ``n_stratified`` / ``n_random_windows`` (the kept samples, ``stats.py``), ``shard_batches`` (the unit in
    which float sums are folded, so every executor gives the same bits), ``store_dir``, ``pin_malloc`` (see
    :func:`pin_malloc_thresholds`), ``executor="ray"`` with ``n_workers`` / ``worker_options`` (shards on Ray
    actors merged into the store the local executor would write, ``ray_harvest.py``), ``hook_module`` (Hugging
    Face and nnsight models: read this module instead of the mapped hook point, see :class:`~.subjects.HFModel`).

    ``progress``: a progress bar; ``hook_fn(module, args, output)``: with ``hook_module``, what of the module's
    call the SAE reads (default: its output).
    """
    cfg = harvest_config(config, options)
    stores = harvest_many(
        {"sae": sae},
        model,
        dataset,
        config=replace(cfg, store_dir=None),
        store_dirs={"sae": cfg.store_dir},
        progress=progress,
        hook_fn=hook_fn,
    )
    return stores["sae"]


def harvest_many(
    saes: Mapping[str, SAE],
    model: SubjectModel,
    dataset: CorpusLike,
    *,
    config: HarvestConfig | Mapping[str, Any] | None = None,
    store_dirs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    progress: bool = True,
    hook_fn: ModuleReader | None = None,
    **options: Unpack[HarvestManyOptions],
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
    if "store_dir" in options or (config is not None and _field(config, "store_dir") is not None):
        raise ConfigError("harvest_many writes one store per SAE: pass store_dirs={name: folder} instead of store_dir")
    cfg = harvest_config(config, options)
    store_dirs = dict(store_dirs or {})
    unknown = sorted(set(store_dirs) - set(saes))
    if unknown:
        raise ConfigError(f"store_dirs names {unknown}, which are not SAEs of this call ({sorted(saes)})")
    if cfg.hook_module is not None or hook_fn is not None:
        model = with_hook_module(model, cfg.hook_module, hook_fn)
    corpus = resolve_corpus(
        dataset,
        text_column=cfg.text_column,
        split=cfg.split,
        streaming=cfg.streaming,
        dataset_config=cfg.dataset_config,
    )
    settings = {k: v for k, v in cfg.store_settings().items() if k != "ctx_len"}
    jobs = prepare_jobs(saes, model, corpus, settings, cfg.ctx_len, store_dirs)
    if cfg.executor == "ray":
        from .ray_harvest import check_ray

        check_ray(cfg.n_workers, cfg.worker_options)  # before any lock or forward pass
    if _wants_pinned_malloc(cfg.pin_malloc):
        pin_malloc_thresholds()
    with ExitStack() as stack:
        todo = open_jobs(jobs, stack)
        if todo:
            if cfg.executor == "ray":
                from .ray_harvest import run_on_ray

                run_on_ray(
                    todo,
                    model,
                    corpus,
                    n_workers=cfg.n_workers,
                    worker_options=cfg.worker_options,
                    checkpoint_every_s=cfg.checkpoint_every_s,
                    progress=progress,
                )
            else:
                run_local(todo, corpus, checkpoint_every_s=cfg.checkpoint_every_s, progress=progress)
            for job in todo:
                finish(job)
    out = {}
    for job in jobs:
        assert job.store is not None  # every job is finished or was found finished
        out[job.name] = job.store
    return out


def _field(config: HarvestConfig | Mapping[str, Any], name: str) -> Any:
    return config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
