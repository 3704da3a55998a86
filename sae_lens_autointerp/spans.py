"""Token spans of examples, for hold-out by token position rather than by example identity.

Two examples of the corpus share a token exactly when their spans (global token ids ``[start, end)``,
see :meth:`~sae_lens_autointerp.harvest.store.Example.span`) intersect. A :class:`SpanSet` answers "does
this window touch any of these windows?" in ``O(log n)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import numpy as np


class SpanSet:
    """A set of half-open integer intervals, merged, with an overlap query."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # the lists as arrays, for overlaps_many
        # sorted, then one merging pass (the same merged set as one add() per span, without the list inserts)
        for lo, hi in sorted((lo, hi) for lo, hi in spans if hi > lo):
            if self._ends and lo <= self._ends[-1]:  # touches the last interval: [1, 3) + [3, 5) is [1, 5)
                self._ends[-1] = max(self._ends[-1], hi)
            else:
                self._starts.append(lo)
                self._ends.append(hi)

    @classmethod
    def from_arrays(cls, lo: np.ndarray, hi: np.ndarray) -> SpanSet:
        """``SpanSet(zip(lo, hi))``, merged with array operations (the sampler builds one per latent)."""
        lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
        keep = hi > lo
        lo, hi = lo[keep], hi[keep]
        order = np.lexsort((hi, lo))
        lo, hi = lo[order], hi[order]
        out = cls()
        if lo.size:
            reach = np.maximum.accumulate(hi)  # the furthest end so far: a span starting after it starts anew
            first = np.flatnonzero(np.concatenate(([True], lo[1:] > reach[:-1])))
            starts, ends = lo[first], np.maximum.reduceat(hi, first)
            out._starts, out._ends = starts.tolist(), ends.tolist()
            out._arrays = (starts, ends)
        return out

    def __len__(self) -> int:
        return len(self._starts)

    def add(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        i = bisect.bisect_left(self._ends, lo)  # first interval that ends at or after lo
        j = bisect.bisect_right(self._starts, hi)  # intervals from j on start after hi
        if i < j:  # merge with every interval touching [lo, hi)
            lo, hi = min(lo, self._starts[i]), max(hi, self._ends[j - 1])
        self._starts[i:j] = [lo]
        self._ends[i:j] = [hi]
        self._arrays = None

    def overlaps(self, lo: int, hi: int) -> bool:
        """True when ``[lo, hi)`` shares at least one position with the set."""
        if hi <= lo:
            return False
        i = bisect.bisect_right(self._ends, lo)  # first interval ending after lo
        return i < len(self._starts) and self._starts[i] < hi

    def overlaps_many(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """:meth:`overlaps` of each ``[lo[k], hi[k])``, vectorised (a bool array)."""
        lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
        if not self._starts:
            return np.zeros(lo.shape, dtype=bool)
        if self._arrays is None:
            self._arrays = (np.asarray(self._starts, dtype=np.int64), np.asarray(self._ends, dtype=np.int64))
        starts, ends = self._arrays
        i = np.searchsorted(ends, lo, side="right")  # first interval ending after lo
        inside = i < len(starts)
        return (hi > lo) & inside & (starts[np.minimum(i, len(starts) - 1)] < hi)
