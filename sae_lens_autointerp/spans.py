"""Token spans of examples, for hold-out by token position rather than by example identity.

Two examples of the corpus share a token exactly when their spans (global token ids ``[start, end)``,
see :meth:`~sae_lens_autointerp.harvest.store.Example.span`) intersect. A :class:`SpanSet` answers "does
this window touch any of these windows?" in ``O(log n)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class SpanSet:
    """A set of half-open integer intervals, merged, with an overlap query."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for lo, hi in spans:
            self.add(lo, hi)

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

    def overlaps(self, lo: int, hi: int) -> bool:
        """True when ``[lo, hi)`` shares at least one position with the set."""
        if hi <= lo:
            return False
        i = bisect.bisect_right(self._ends, lo)  # first interval ending after lo
        return i < len(self._starts) and self._starts[i] < hi
