"""A run folder's views for reports and exports: the run settings (``run.json``), the token pieces
(``vocab.json``) and decoder views (``decoder.json``, see :mod:`sae_lens_autointerp.lens`), and the activation
store the run read, with the examples a latent's card shows and the windows its scorers saw. Whatever is
missing is listed in ``missing``, never invented."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .harvest.store import PAD_TOKEN, LatentStore
from .lens import DECODER_FILE, VOCAB_FILE, read_run_view
from .paths import cache_dir
from .sampling import first_of_text, text_keys

N_TOP = 10  # top examples on a card
PER_QUANTILE = 2  # examples shown from each quantile of the activation distribution


@dataclass
class RunViews:
    """What every card of one run shares: run settings, the token pieces, the decoder views and the store."""

    folder: Path | None
    run: dict[str, Any] = field(default_factory=dict)
    pieces: list[str] | None = None
    special: frozenset[int] = frozenset()
    decoder: dict[str, Any] = field(default_factory=dict)
    store: LatentStore | None = None
    missing: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, result: Any, store: LatentStore | None = None) -> RunViews:
        """The views of a result's run folder (``result.path``: its results.jsonl)."""
        return cls.open(Path(result.path).parent if result.path is not None else None, store)

    @classmethod
    def open(cls, folder: Path | None, store: LatentStore | None = None) -> RunViews:
        views = cls(folder=folder)
        if folder is None:
            views.missing.append("the result has no run folder: no examples, tokens or decoder views")
            return views
        views.run = read_run_view(folder, "run.json") or {}
        vocab = read_run_view(folder, VOCAB_FILE)
        if vocab:
            views.pieces, views.special = list(vocab["pieces"]), frozenset(vocab.get("special") or ())
        else:
            views.missing.append(f"no {VOCAB_FILE} in {folder} (a run of an older version): tokens shown as ids")
        views.decoder = (read_run_view(folder, DECODER_FILE) or {}).get("latents", {})
        if not views.decoder:
            views.missing.append(f"no {DECODER_FILE} in {folder}: no promoted tokens or neighbours")
        views.store = store if store is not None else _open_store(views.run, views.missing)
        return views

    def piece(self, token: int) -> str:
        if self.pieces is not None and 0 <= token < len(self.pieces):
            return self.pieces[token]
        return f"<{token}>"

    @cached_property
    def _windows(self) -> dict[int, Any]:
        return {w.start_id: w for w in self.store.random_windows()} if self.store is not None else {}

    def examples(self, latent: int) -> dict[str, Any]:
        """``top`` (largest first), ``quantiles`` (lists, strongest quantile first), ``cuts`` (the activation
        where each quantile ends), ``sample`` (the firing examples' maxima) and ``by_id`` for lookups."""
        store = self.store
        if store is None:
            return {"top": [], "quantiles": [], "cuts": [], "sample": np.zeros(0), "by_id": {}}
        every_top = store.top_examples(latent)
        top = _distinct(every_top)
        strat = store.stratified_examples(latent)
        sampling = self.run.get("sampling")
        n_q = _whole(sampling.get("n_quantiles") if isinstance(sampling, dict) else None, 10)
        groups = [list(g) for g in np.array_split(np.arange(len(strat)), min(n_q, max(len(strat), 1)))] if strat else []
        quantiles = [[strat[i] for i in _spread(g, PER_QUANTILE)] for g in groups]
        cuts = sorted(float(strat[g[-1]].value) for g in groups[:-1] if g)
        by_id = {e.token_id: e for e in strat}
        by_id.update({e.token_id: e for e in every_top})
        return {
            "top": top[:N_TOP],
            "quantiles": quantiles,
            "cuts": cuts,
            "sample": np.array([e.value for e in strat], dtype=float),
            "by_id": by_id,
        }

    def window(
        self, latent: int, token_id: int, by_id: dict[int, Any]
    ) -> tuple[list[int], np.ndarray, int | None] | None:
        """(tokens, activations, peak index) of a scored example: a firing example by its peak id, else a
        random window by its start."""
        ex = by_id.get(token_id)
        if ex is not None:
            return ex.tokens.tolist(), ex.activations, ex.peak_index
        w = self._windows.get(token_id)
        if w is not None:
            return w.tokens.tolist(), w.activations_of(latent), None
        return None

    def text_of(self, latent: int, token_id: int, by_id: dict[int, Any]) -> tuple[list[str], list[float]] | None:
        """A scored example as (token pieces, activations), padding and special tokens left out."""
        win = self.window(latent, token_id, by_id)
        if win is None:
            return None
        tokens, acts, _ = win
        keep = [i for i, t in enumerate(tokens) if t != PAD_TOKEN and t not in self.special]
        return [self.piece(int(tokens[i])) for i in keep], [float(acts[i]) for i in keep]


def _whole(x: Any, default: int) -> int:
    """A count from run.json (a file anyone can edit): a positive int, else ``default``."""
    return x if isinstance(x, int) and not isinstance(x, bool) and x > 0 else default


def _open_store(run: dict[str, Any], missing: list[str]) -> LatentStore | None:
    """The store a run read: its recorded folder, else the default cache folder of its key."""
    key = run.get("store")
    key = key if isinstance(key, str) else ""
    candidates = [Path(run["store_path"])] if isinstance(run.get("store_path"), str) and run["store_path"] else []
    if key.isalnum() and key.isascii():  # a store key is hex: a key like '../..' names no cache folder
        candidates.append(cache_dir("stores") / key[:24])
    for folder in candidates:
        if (folder / "meta.json").is_file():
            try:
                store = LatentStore(folder)
            except (ConfigError, OSError) as err:
                missing.append(f"the activation store {folder} could not be opened ({err}): no examples")
                return None
            if key and store.key != key:
                missing.append(
                    f"the store at {folder} is not the one this run read (key {store.key[:12]}): no examples"
                )
                return None
            return store
    missing.append(
        "the activation store this run read is gone ("
        + (", ".join(map(str, candidates)) or "not recorded")
        + "): no examples; pass store= to write them"
    )
    return None


def _distinct(examples: list[Any]) -> list[Any]:
    """``examples`` (strongest first) without repeats of a text shown before, as the sampler keeps them."""
    if not examples:
        return []
    first = first_of_text(text_keys(np.stack([np.asarray(e.tokens, dtype=np.int32) for e in examples])))
    return [e for e, keep in zip(examples, first.tolist()) if keep]


def _spread(indices: list[int], k: int) -> list[int]:
    if len(indices) <= k:
        return list(indices)
    return [indices[int(round(j * (len(indices) - 1) / (k - 1)))] for j in range(k)] if k > 1 else [indices[0]]
