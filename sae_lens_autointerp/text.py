"""Turn stored examples into what prompts show: token strings aligned with activations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .harvest.store import PAD_TOKEN, Example


@dataclass(frozen=True)
class RenderedExample:
    """An example as text pieces; ``activations[i]`` belongs to ``tokens[i]``."""

    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    label: bool | None
    quantile: int | None
    token_id: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)


#: Token windows whose rendering a :class:`Renderer` keeps (about 1 KiB each); past it the cache starts over,
#: so a long run's memory stays flat. Windows repeat a lot: every latent draws its negatives from the same
#: random pool, and its controls re-render a subset of its own test examples.
WINDOW_CACHE_SIZE = 16_384


class Renderer:
    """Decodes token ids one by one (cached) and drops padding.

    Special tokens (BOS, the separator between documents) are shown as their text, as delphi shows them: every
    window is then rendered with the same number of pieces, so an excerpt's length cannot tell a judge whether
    it activates (dropping them made windows at a document boundary shorter, and latents that fire near one
    have more of those). ``drop_special=True`` hides them (a peer's protocol that does)."""

    def __init__(self, tokenizer: Any, *, drop_special: bool = False) -> None:
        self.tokenizer = tokenizer
        self._special = set(getattr(tokenizer, "all_special_ids", []) or []) if drop_special else set()
        # shown[token] for token ids below the largest special id (a table look-up, not np.isin per window)
        # (a negative special id, never seen in practice, would keep the np.isin path)
        self._odd_special = np.array(sorted(i for i in self._special if i < 0), dtype=np.int64)
        self._hidden = np.zeros(max(self._special, default=-1) + 1, dtype=bool)
        self._hidden[[i for i in self._special if i >= 0]] = True
        self._cache: dict[int, str] = {}
        # token id -> its piece (object array; ``_known`` marks the decoded ids): a window's pieces in one take
        self._table = np.empty(0, dtype=object)
        self._known = np.zeros(0, dtype=bool)
        # (dtype, token bytes) -> (kept positions, their pieces, their text): the token-only half of a rendering
        self._windows: dict[tuple[str, bytes], tuple[np.ndarray, tuple[str, ...], str]] = {}

    def piece(self, token: int) -> str:
        text = self._cache.get(token)
        if text is None:
            text = self.tokenizer.decode([token])
            self._cache[token] = text
        return text

    def window(self, tokens: np.ndarray) -> tuple[np.ndarray, tuple[str, ...], str]:
        """The positions of ``tokens`` that are shown (not padding; not special, where dropped), their pieces and the
        pieces joined (``RenderedExample.text``)."""
        tokens = np.asarray(tokens)
        key = (tokens.dtype.str, tokens.tobytes())  # the dtype too: equal bytes of another width are other ids
        hit = self._windows.get(key)
        if hit is None:
            keep = np.flatnonzero(self._shown(tokens))
            pieces = self._pieces(tokens[keep])
            hit = (keep, pieces, "".join(pieces))
            self._keep(key, hit)
        return hit

    def windows(self, token_windows: Sequence[np.ndarray]) -> list[tuple[np.ndarray, tuple[str, ...], str]]:
        """:meth:`window` of each of ``token_windows``; the ones not cached yet are rendered together (a few
        array operations for all windows of one length, not a few per window)."""
        arrays = [np.asarray(t) for t in token_windows]
        keys = [(a.dtype.str, a.tobytes()) for a in arrays]
        out: list[Any] = [self._windows.get(k) for k in keys]
        missing: dict[tuple[str, tuple[int, ...]], dict[tuple[str, bytes], np.ndarray]] = {}  # by dtype and shape
        for a, key, hit in zip(arrays, keys, out):
            if hit is None:
                missing.setdefault((a.dtype.str, a.shape), {}).setdefault(key, a)
        fresh: dict[tuple[str, bytes], tuple[np.ndarray, tuple[str, ...], str]] = {}
        for (_, shape), group in missing.items():
            if len(shape) != 1:
                fresh.update((key, self.window(a)) for key, a in group.items())
                continue
            rows = np.stack(list(group.values()))
            at_row, keep = np.nonzero(self._shown(rows))  # row-major: each window's kept positions in order
            pieces = self._pieces(rows[at_row, keep])
            bounds = np.concatenate([[0], np.cumsum(np.bincount(at_row, minlength=len(rows)))]).tolist()
            for key, lo, hi in zip(group, bounds, bounds[1:]):
                own = pieces[lo:hi]
                fresh[key] = hit = (keep[lo:hi], own, "".join(own))
                self._keep(key, hit)
        return [hit if hit is not None else fresh[key] for key, hit in zip(keys, out)]

    def _shown(self, tokens: np.ndarray) -> np.ndarray:
        """Where ``tokens`` (any shape) are shown: not padding, not a dropped special token."""
        shown = tokens != PAD_TOKEN
        if self._special:
            hidden = self._hidden
            low = (tokens >= 0) & (tokens < hidden.size)
            shown[low] &= ~hidden[tokens[low]]
            if self._odd_special.size:
                shown &= ~np.isin(tokens, self._odd_special)
        return shown

    def _keep(self, key: tuple[str, bytes], hit: tuple[np.ndarray, tuple[str, ...], str]) -> None:
        if len(self._windows) >= WINDOW_CACHE_SIZE:
            self._windows.clear()
        self._windows[key] = hit

    def _pieces(self, ids: np.ndarray) -> tuple[str, ...]:
        """The pieces of token ids (each decoded once, by :meth:`piece`), as a table look-up."""
        if ids.size == 0:
            return ()
        top = int(ids.max())
        if top >= self._known.size:  # grow to the largest id seen (at most the vocabulary)
            size = max(top + 1, 2 * self._known.size)
            self._table = np.concatenate([self._table, np.empty(size - self._table.size, dtype=object)])
            self._known = np.concatenate([self._known, np.zeros(size - self._known.size, dtype=bool)])
        new = ids[~self._known[ids]]
        if new.size:
            for t in np.unique(new).tolist():
                self._table[t] = self.piece(t)
            self._known[new] = True
        return tuple(self._table[ids].tolist())

    def text(self, example: Example) -> str:
        """``render(example).text`` without the activations (what detection shows)."""
        return self.window(example.tokens)[2]

    def texts(self, examples: Sequence[Example]) -> list[str]:
        """:meth:`text` of each example (their windows rendered together, :meth:`windows`)."""
        return [text for _, _, text in self.windows([e.tokens for e in examples])]

    def render(self, example: Example) -> RenderedExample:
        return self._render(example, self.window(example.tokens))

    def render_many(self, examples: Sequence[Example]) -> list[RenderedExample]:
        """:meth:`render` of each example (their windows rendered together, :meth:`windows`)."""
        return [self._render(e, w) for e, w in zip(examples, self.windows([e.tokens for e in examples]))]

    def _render(self, example: Example, window: tuple[np.ndarray, tuple[str, ...], str]) -> RenderedExample:
        keep, pieces, _ = window
        # float64 is exact for the stored float32 / float16 activations: the same values as float(x) of each
        acts = np.asarray(example.activations, dtype=np.float64)[keep]
        return RenderedExample(
            tokens=pieces,
            activations=tuple(acts.tolist()),
            label=example.extra.get("label"),
            quantile=example.extra.get("quantile"),
            token_id=example.token_id,
        )


def highlight(tokens: tuple[str, ...], marked: np.ndarray | list[bool]) -> str:
    """Join tokens, wrapping each run of marked tokens in ``<<`` ``>>``."""
    out, inside = [], False
    for tok, m in zip(tokens, marked):
        if m and not inside:
            out.append("<<")
            inside = True
        elif not m and inside:
            out.append(">>")
            inside = False
        out.append(tok)
    if inside:
        out.append(">>")
    return "".join(out).replace("\n", "\\n")


def active_mask(example: RenderedExample, threshold: float) -> np.ndarray:
    """Tokens above ``threshold`` x the example's maximum activation (the paper's 0.3 default)."""
    acts = np.asarray(example.activations, dtype=np.float64)
    if acts.size == 0 or acts.max() <= 0:
        return np.zeros(acts.size, dtype=bool)
    return acts >= threshold * acts.max()


def discretize(activations: np.ndarray | tuple[float, ...], max_activation: float) -> np.ndarray:
    """Activations as integers 0-10 relative to ``max_activation`` (as shown to the LLM)."""
    acts = np.clip(np.asarray(activations, dtype=np.float64), 0, None)
    if max_activation <= 0:
        return np.zeros(acts.shape, dtype=np.int64)
    return np.clip(np.round(10 * acts / max_activation), 0, 10).astype(np.int64)
