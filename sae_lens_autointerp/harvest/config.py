"""A harvest's options, declared once.

:class:`StoreSettings` are the settings that make a store (its key hashes them); :class:`HarvestConfig` is
them plus where the corpus comes from and how the harvest runs (what ``harvest()`` and ``harvest_many()``
take, ``RunConfig.harvest``, the command line's harvest flags); :class:`HarvestSettings` is them resolved for
one model (``ctx_len`` fixed), as a store records them. ``HarvestOptions`` types the
keyword arguments of ``harvest()`` from the same fields (``tests/test_options.py`` checks them).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypedDict

from ..errors import ConfigError
from ..options import check_int, check_names, check_number, option

#: Why ``peak_offset`` is refused (it was an option before windows became fixed chunks).
REMOVED_PEAK_OFFSET = (
    "harvest peak_offset was removed: a window with the peak always at one index lets a judge that never reads "
    "the explanation score above chance, so every example is now shown as its fixed chunk of example_len tokens; "
    "drop peak_offset"
)
#: The most tokens a harvest may read: far beyond any corpus (4 bytes a token on disk: 4 TB); a larger value is a
#: typo that would otherwise read the whole corpus before anything is said.
MAX_N_TOKENS = 10**12
#: Where a harvest (HarvestConfig.executor) or a run (RunConfig.executor) does its work.
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class StoreSettings:
    """The settings that make a store: two harvests with the same settings of the same model, SAE and corpus
    write the same store (under the same key)."""

    n_tokens: int = option(1_000_000, doc="tokens to read (rounded up to whole sequences of ctx_len)")
    ctx_len: int | None = option(
        None, doc="sequence length; default the SAE's context_size (or 128), capped by the model"
    )
    batch_size: int = option(16, doc="sequences per forward pass")
    example_len: int = option(
        32,
        doc="tokens per example (the unit of top-k and sampling): each example is shown as its fixed chunk of "
        "example_len tokens, so ctx_len must be a multiple of it (a default ctx_len is rounded down to one)",
    )
    top_k: int = option(50, doc="top-activating examples kept per latent")
    n_stratified: int = option(100, doc="examples kept per latent, stratified over its activation distribution")
    n_random_windows: int = option(1000, doc="random windows kept (the shared pool of non-activating examples)")
    threshold: float = option(0.0, doc="activation above which a latent counts as firing")
    seed: int = option(0, doc="seed of the harvest's samples")
    n_position_buckets: int = option(64, doc="resolution of the per-position sums (the heuristic filters)")
    n_token_slots: int = option(64, doc="size of each latent's per-token table (the heuristic filters)")
    shard_batches: int = option(
        16, doc="batches per shard: the unit of float folding, of distributed work and of redoing a lost worker's"
    )

    def __post_init__(self) -> None:
        """Each field on its own (how fields go together is checked where they are resolved: HarvestConfig, and
        ``jobs.prepare_jobs`` once the model has fixed ``ctx_len``)."""
        set_ = object.__setattr__  # frozen: normalise once, here (a numpy integer hashes like an int)
        for f in fields(StoreSettings):
            value = getattr(self, f.name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                set_(self, f.name, int(value))
        check_int(self.n_tokens, "harvest n_tokens", low=1, high=MAX_N_TOKENS)
        check_int(self.ctx_len, "harvest ctx_len", low=2, optional=True)
        check_int(self.batch_size, "harvest batch_size", low=1)
        check_int(self.example_len, "harvest example_len", low=1)
        check_int(self.top_k, "harvest top_k", low=1)
        check_int(self.n_stratified, "harvest n_stratified", low=1)
        check_int(self.n_random_windows, "harvest n_random_windows", low=0)
        check_number(self.threshold, "harvest threshold", finite=True)  # NaN: nothing would ever fire
        set_(self, "threshold", float(self.threshold))
        check_int(self.seed, "harvest seed")
        check_int(self.n_position_buckets, "harvest n_position_buckets", low=1)
        check_int(self.n_token_slots, "harvest n_token_slots", low=1)
        check_int(self.shard_batches, "harvest shard_batches", low=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def store_settings(self) -> dict[str, Any]:
        """The fields of :class:`StoreSettings` alone, by name."""
        return {f.name: getattr(self, f.name) for f in fields(StoreSettings)}


@dataclass(frozen=True)
class HarvestConfig(StoreSettings):
    """What ``harvest()`` / ``harvest_many()`` read and keep, and how they run (see
    :func:`sae_lens_autointerp.harvest.harvest`)."""

    text_column: str = option("text", doc="the text column of a Hugging Face dataset or a jsonl / parquet file")
    split: str = option("train", doc="the split of a Hugging Face dataset")
    streaming: bool = option(True, doc="stream a Hugging Face dataset instead of downloading it whole")
    dataset_config: str | None = option(None, doc="the configuration (subset) of a Hugging Face dataset")
    store_dir: str | None = option(None, doc="folder of the store; default ~/.cache/sae-lens-autointerp/stores/<key>")
    checkpoint_every_s: float = option(30.0, doc="seconds between checkpoints (0: after every batch)")
    pin_malloc: bool | None = option(
        None,
        doc="pin glibc's malloc thresholds for the whole process first (~8% lower peak RSS, slower forward "
        "passes); default: only when SAE_AUTOINTERP_PIN_MALLOC=1",
    )
    executor: str = option("local", doc="'local' (this process) or 'ray' (shards of sequences on Ray actors)")
    n_workers: int | None = option(None, doc="Ray only: actors (default one per GPU of the cluster, else per CPU)")
    worker_options: dict[str, Any] | None = option(
        None, doc="Ray only: the actors' ray.remote options (default {'num_gpus': 1} or {'num_cpus': 1})"
    )
    hook_module: str | dict[str, str] | None = option(
        None,
        doc="Hugging Face and nnsight models only: read the SAE's input from this module (a dotted path) instead "
        "of the mapped hook point",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ctx_len is not None and self.example_len > self.ctx_len:
            raise ConfigError(f"harvest example_len={self.example_len} must be <= ctx_len={self.ctx_len}")
        if self.ctx_len is not None and self.ctx_len % self.example_len:
            raise ConfigError(
                f"harvest ctx_len={self.ctx_len} must be a multiple of example_len={self.example_len}: each example "
                "is shown as its fixed chunk of example_len tokens (a partial chunk would be shorter)"
            )
        if self.store_dir is not None and not isinstance(self.store_dir, str):
            object.__setattr__(self, "store_dir", os.fspath(self.store_dir))
        check_number(self.checkpoint_every_s, "harvest checkpoint_every_s", low=0)
        if self.pin_malloc is not None and not isinstance(self.pin_malloc, bool):
            raise ConfigError(f"harvest pin_malloc must be True, False or None, got {self.pin_malloc!r}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        check_int(self.n_workers, "harvest n_workers", low=1, optional=True)
        if self.worker_options is not None:
            if not isinstance(self.worker_options, Mapping):
                raise ConfigError(f"harvest worker_options must be a dict, got {type(self.worker_options).__name__}")
            object.__setattr__(self, "worker_options", dict(self.worker_options))
        if self.executor == "local" and (self.n_workers is not None or self.worker_options is not None):
            raise ConfigError("n_workers and worker_options are for executor='ray'; drop them or pass executor='ray'")
        if isinstance(self.hook_module, Mapping):
            object.__setattr__(self, "hook_module", dict(self.hook_module))
        elif self.hook_module is not None and not isinstance(self.hook_module, str):
            raise ConfigError(f"hook_module must be a module path or a dict of them, got {self.hook_module!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HarvestConfig:
        data = dict(data)
        if data.pop("peak_offset", None) is not None:  # configs saved before windows became fixed chunks
            raise ConfigError(REMOVED_PEAK_OFFSET)
        check_names(data, [f.name for f in fields(cls)], "harvest")
        return cls(**data)


@dataclass(frozen=True)
class HarvestSettings(StoreSettings):
    """A store's settings resolved for one model: what the store records and its key hashes."""

    ctx_len: int = field(kw_only=True, metadata={"doc": "sequence length"})
    #: stores of format 1-2 only (read for old runs' pages, refused for sampling): the fixed index of the peak
    #: inside its window. None (format 3 on): a window is its fixed chunk of ``example_len`` tokens.
    peak_offset: int | None = field(default=None, metadata={"doc": "legacy stores only: the peak's fixed index"})

    @property
    def n_sequences(self) -> int:
        return -(-self.n_tokens // self.ctx_len)

    @property
    def shard_sequences(self) -> int:
        return self.shard_batches * self.batch_size


class HarvestManyOptions(TypedDict, total=False):
    """The keyword arguments of ``harvest_many()`` that are :class:`HarvestConfig` fields (all but
    ``store_dir``: ``harvest_many`` takes ``store_dirs={name: folder}``)."""

    n_tokens: int
    ctx_len: int | None
    batch_size: int
    example_len: int
    top_k: int
    n_stratified: int
    n_random_windows: int
    threshold: float
    seed: int
    n_position_buckets: int
    n_token_slots: int
    shard_batches: int
    text_column: str
    split: str
    streaming: bool
    dataset_config: str | None
    checkpoint_every_s: float
    pin_malloc: bool | None
    executor: str
    n_workers: int | None
    worker_options: dict[str, Any] | None
    hook_module: str | dict[str, str] | None


class HarvestOptions(HarvestManyOptions, total=False):
    """The keyword arguments of ``harvest()`` that are :class:`HarvestConfig` fields: every field."""

    store_dir: str | os.PathLike[str] | None


def harvest_config(config: HarvestConfig | Mapping[str, Any] | None, options: Mapping[str, Any]) -> HarvestConfig:
    """``config`` (a HarvestConfig, a dict of its fields, or None for the defaults) with ``options`` overriding
    its fields; a name that is no field is an error naming the closest one."""
    if config is None:
        config = HarvestConfig()
    elif isinstance(config, Mapping):
        config = HarvestConfig.from_dict(config)
    elif not isinstance(config, HarvestConfig):
        raise ConfigError(f"config must be a HarvestConfig or a dict, got {type(config).__name__}")
    if not options:
        return config
    if "peak_offset" in options:
        raise ConfigError(REMOVED_PEAK_OFFSET)
    check_names(options, [f.name for f in fields(HarvestConfig)], "harvest")
    return HarvestConfig(**{**config.to_dict(), **options})
