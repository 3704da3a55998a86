"""``harvest()``: stream a corpus through model + SAE into a :class:`LatentStore` on disk.

The store is keyed by a hash of the model, the SAE, the corpus and the settings: the same call later
returns the finished store without recomputation, and an interrupted call resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from ..locks import folder_lock
from ..paths import cache_dir
from .corpus import CorpusSpec, batched, iter_sequences, resolve_corpus
from .model import ModelAdapter
from .stats import HarvestSettings, LatentStats
from .store import PAD_TOKEN, STORE_FORMAT_VERSION, LatentStore, checkpoint_meta, save_checkpoint, seal

if TYPE_CHECKING:
    from sae_lens import SAE

    from .corpus import CorpusLike
    from .model import SubjectModel

log = logging.getLogger(__name__)

DEFAULT_N_TOKENS = 1_000_000
#: ``SAE_AUTOINTERP_PIN_MALLOC=1`` makes every :func:`harvest` pin glibc's malloc thresholds (see
#: :func:`pin_malloc_thresholds`) unless it is called with ``pin_malloc=False``.
PIN_MALLOC_ENV_VAR = "SAE_AUTOINTERP_PIN_MALLOC"
_MALLOC_PINNED = False


def pin_malloc_thresholds() -> bool:
    """Pin glibc's malloc thresholds for this whole process (opt-in; once per process, cannot be undone).

    Why: every harvest batch allocates and frees tensors of tens of MB. glibc raises its dynamic mmap
    threshold after each such free, after which those buffers come from the heap and fragment it: measured
    on the embedded model, peak RSS grew by 40-48% between 8k and 32k harvested tokens without pinning, and
    stayed flat with it (benchmarks/harvest.py: +1.7% from 32k to 131k tokens). Pinning ``M_MMAP_THRESHOLD``
    and ``M_TRIM_THRESHOLD`` to 1 MiB (what ``MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=1048576``
    in the environment does before start-up) keeps big buffers mmapped and returned to the OS.

    This changes the allocator of the host process, so a library call never does it on its own:
    ``harvest(..., pin_malloc=True)``, ``SAE_AUTOINTERP_PIN_MALLOC=1`` or the ``sae-autointerp`` command (which
    owns its process) turn it on. Returns whether the thresholds are pinned (False off glibc).
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


def sae_fingerprint(sae: SAE) -> dict[str, Any]:
    """Identity of an SAE: its config and a hash of every parameter."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    cfg = json.loads(json.dumps(sae.cfg.to_dict(), default=str, sort_keys=True))
    cfg.pop("device", None)
    return {"class": type(sae).__name__, "cfg": cfg, "weights_sha256": digest.hexdigest()}


def _resolve_ctx_len(ctx_len: int | None, adapter: ModelAdapter) -> int:
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


def harvest(
    sae: SAE,
    model: SubjectModel,
    dataset: CorpusLike,
    *,
    n_tokens: int = DEFAULT_N_TOKENS,
    ctx_len: int | None = None,
    batch_size: int = 16,
    example_len: int = 32,
    peak_offset: int | None = None,
    top_k: int = 50,
    n_stratified: int = 100,
    n_random_windows: int = 1000,
    threshold: float = 0.0,
    seed: int = 0,
    n_position_buckets: int = 64,
    n_token_slots: int = 64,
    text_column: str = "text",
    split: str = "train",
    streaming: bool = True,
    dataset_config: str | None = None,
    store_dir: str | os.PathLike[str] | None = None,
    checkpoint_every_s: float = 30.0,
    progress: bool = True,
    pin_malloc: bool | None = None,
) -> LatentStore:
    """Harvest latent statistics of ``sae`` on ``dataset`` through ``model``.

    Args:
        n_tokens: tokens to read (rounded up to whole sequences of ``ctx_len``).
        ctx_len: sequence length; default ``sae.cfg.metadata.context_size`` (or 128), capped by the model.
        batch_size: sequences per forward pass.
        example_len: tokens per example (the unit of top-k / sampling) and per stored window.
        peak_offset: index of the peak inside stored windows (default ``3/4 * example_len``).
        top_k / n_stratified / n_random_windows: sizes of the kept samples (see ``stats.py``).
        n_position_buckets / n_token_slots: resolution of the per-position sums and size of each latent's
            per-token table, used by the known-heuristic filters (see ``stats.py`` and ``heuristics.py``).
        store_dir: folder of the store; default ``~/.cache/sae-lens-autointerp/stores/<key>``.
        checkpoint_every_s: seconds between checkpoints (0 = after every batch).
        pin_malloc: pin glibc's malloc thresholds for the whole process first (see
            :func:`pin_malloc_thresholds`: without it peak RSS grows 40-48% over long harvests). Default None:
            only when ``SAE_AUTOINTERP_PIN_MALLOC=1``; the ``sae-autointerp`` command turns it on.
    """
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise ConfigError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    adapter = ModelAdapter(model, sae)
    ctx_len = _resolve_ctx_len(ctx_len, adapter)
    if not 1 <= example_len <= ctx_len:
        raise ConfigError(f"example_len must be between 1 and ctx_len={ctx_len}, got {example_len}")
    if peak_offset is None:
        peak_offset = (3 * example_len) // 4
    if not 0 <= peak_offset < example_len:
        raise ConfigError(f"peak_offset must be in [0, example_len), got {peak_offset}")
    if min(top_k, n_stratified) < 1 or n_random_windows < 0:
        raise ConfigError("top_k and n_stratified must be >= 1 and n_random_windows >= 0")
    if min(n_position_buckets, n_token_slots) < 1:
        raise ConfigError("n_position_buckets and n_token_slots must be >= 1")
    corpus = resolve_corpus(
        dataset, text_column=text_column, split=split, streaming=streaming, dataset_config=dataset_config
    )
    if corpus.kind == "tokens":  # ids the model cannot embed: refused before any forward pass
        vocab = int(getattr(adapter.model.cfg, "d_vocab", 0) or 0) or len(adapter.tokenizer)
        low, high = int(corpus.source.min()), int(corpus.source.max())
        if low < 0 or high >= vocab:
            raise ConfigError(
                f"the token tensor holds ids from {low} to {high}, but this model's vocabulary is "
                f"0..{vocab - 1}; tokenize with the model's own tokenizer"
            )
    adapter.check_width()
    if _wants_pinned_malloc(pin_malloc):
        pin_malloc_thresholds()
    settings = HarvestSettings(
        n_tokens=n_tokens,
        ctx_len=ctx_len,
        batch_size=batch_size,
        example_len=example_len,
        peak_offset=peak_offset,
        top_k=top_k,
        n_stratified=n_stratified,
        n_random_windows=n_random_windows,
        threshold=float(threshold),
        seed=seed,
        n_position_buckets=n_position_buckets,
        n_token_slots=n_token_slots,
    )
    identity = {
        "format_version": STORE_FORMAT_VERSION,
        "model": adapter.fingerprint(),
        "sae": sae_fingerprint(sae),
        "corpus": corpus.fingerprint,
        "hook": adapter.spec.__dict__,
        "settings": settings.to_dict(),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    folder = Path(store_dir) if store_dir is not None else cache_dir("stores") / key[:24]
    folder.mkdir(parents=True, exist_ok=True)

    meta: dict[str, Any] = {
        **identity,
        "key": key,
        "d_sae": int(sae.cfg.d_sae),
        "settings": settings.to_dict(),
        "n_sequences_done": 0,
        "n_batches_done": 0,
        "n_valid_tokens": 0,
        "complete": False,
    }
    # One harvest per store at a time: a second process waits, then finds the finished store (or resumes it).
    with folder_lock(folder, "harvest"):
        if (folder / "meta.json").is_file():
            previous = json.loads((folder / "meta.json").read_text())
            if previous.get("key") != key:
                raise ConfigError(
                    f"{folder} holds a store for other inputs (key {str(previous.get('key'))[:12]}…); pass another "
                    "store_dir or delete it"
                )
            if previous.get("complete"):
                return LatentStore(folder)
        stats = LatentStats(int(sae.cfg.d_sae), settings, device=sae.device)
        checkpoint = checkpoint_meta(folder)
        if checkpoint is not None and checkpoint.get("key") == key and not checkpoint.get("complete"):
            from safetensors.torch import load_file

            # The statistics and the counters they belong to come from the same file: never out of step.
            stats = LatentStats.from_state_dict(load_file(str(folder / "stats.safetensors")), settings, sae.device)
            meta = checkpoint
        return _run(adapter, sae, corpus, settings, stats, meta, folder, checkpoint_every_s, progress)


def _run(
    adapter: ModelAdapter,
    sae: SAE,
    corpus: CorpusSpec,
    settings: HarvestSettings,
    stats: LatentStats,
    meta: dict[str, Any],
    folder: Path,
    checkpoint_every_s: float,
    progress: bool,
) -> LatentStore:
    from tqdm.auto import tqdm

    ctx = settings.ctx_len
    done_seqs = int(meta["n_sequences_done"])
    token_path = folder / "tokens.bin"
    with open(token_path, "ab"):
        pass
    os.truncate(token_path, done_seqs * ctx * 4)  # drop tokens written after the last checkpoint

    special = torch.tensor(adapter.special_token_ids(), dtype=torch.long)
    pad_id = adapter.pad_token_id()
    sequences = iter_sequences(
        corpus,
        adapter.tokenizer,
        ctx_len=ctx,
        prepend_bos=adapter.spec.prepend_bos,
        bos_id=adapter.bos_token_id(),
        separator_id=adapter.separator_token_id(),
    )
    total = settings.n_sequences
    # Skip what the checkpoint already covers (tokenizing again is cheap next to the forward pass).
    for _ in range(done_seqs):
        if next(sequences, None) is None:
            break
    bar = tqdm(total=total * ctx, initial=done_seqs * ctx, unit="tok", desc="harvest", disable=not progress)
    last_checkpoint = time.monotonic()
    with open(token_path, "ab") as token_file, torch.inference_mode():
        for batch in batched(sequences, settings.batch_size):
            batch = batch[: total - done_seqs]
            if not batch:
                break
            tokens = torch.full((len(batch), ctx), pad_id, dtype=torch.long)
            real = torch.zeros((len(batch), ctx), dtype=torch.bool)
            for row, seq in enumerate(batch):
                tokens[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
                real[row, : len(seq)] = True
            width = int(real.sum(1).max())  # a short last batch runs only as wide as it is
            valid = real & ~torch.isin(tokens, special)
            if adapter.spec.seqpos_slice is not None:  # positions outside the SAE's training slice
                in_slice = torch.zeros(ctx, dtype=torch.bool)
                in_slice[slice(*adapter.spec.seqpos_slice)] = True
                valid &= in_slice
            acts = sae.encode(adapter.capture(tokens[:, :width]))
            if width < ctx:
                acts = torch.nn.functional.pad(acts, (0, 0, 0, ctx - width))
            seq_ids = torch.arange(done_seqs, done_seqs + len(batch))
            stats.update(acts, valid, seq_ids, int(meta["n_batches_done"]), tokens=tokens)
            token_file.write(torch.where(real, tokens, PAD_TOKEN).to(torch.int32).numpy().tobytes())
            done_seqs += len(batch)
            meta["n_sequences_done"] = done_seqs
            meta["n_batches_done"] = int(meta["n_batches_done"]) + 1
            meta["n_valid_tokens"] = int(meta["n_valid_tokens"]) + int(valid.sum())
            bar.update(len(batch) * ctx)
            if time.monotonic() - last_checkpoint >= checkpoint_every_s:
                token_file.flush()
                os.fsync(token_file.fileno())  # the tokens a checkpoint counts are on disk before it
                save_checkpoint(folder, stats, meta)
                last_checkpoint = time.monotonic()
            if done_seqs >= total:
                break
        token_file.flush()
        os.fsync(token_file.fileno())
    bar.close()
    if done_seqs == 0:
        raise ConfigError("the corpus produced no tokens; pass non-empty text")
    meta["complete"] = True
    meta["n_tokens_requested_reached"] = done_seqs >= total
    save_checkpoint(folder, stats, meta)
    from .store import write_json_atomic

    write_json_atomic(folder / "meta.json", seal(folder, meta))
    return LatentStore(folder)
