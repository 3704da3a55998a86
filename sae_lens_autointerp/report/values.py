"""Values read from results data, made safe to show: text for a terminal, and numbers that may be anything.

A results.jsonl line is data anyone can write: a scorer name may hold escape sequences, a count may be
``"many"``, a frequency ``"abc"``, a latent ``10**30``. The reports read every such value through these
helpers, so a crafted record shows as text without escapes, or as "–" where a number was expected, and
never stops a report.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

import pandas as pd

from ..numeric import finite as number
from ..numeric import whole as count

#: what a report shows where a number was expected and the record holds something else
MISSING = "–"

# ANSI / VT escapes: CSI (colours, cursor moves, screen clears), OSC (window titles, hyperlinks; ended by BEL
# or ST) and the two-character escapes
_ANSI_RE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
# what is left: C0 controls but tab and newline, DEL, C1 controls, and the bidi embeddings, overrides and
# isolates (U+202A-202E, U+2066-2069; a "Trojan Source" reorders what a terminal shows) with the marks
# U+200E, U+200F and U+061C
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def clean(text: Any, *, one_line: bool = False) -> str:
    """``text`` (anything; ``str()`` of it) safe for a terminal: escape sequences, control characters and
    bidi controls removed. ``one_line``: newlines and tabs become spaces too (names, table cells)."""
    out = _CONTROL_RE.sub("", _ANSI_RE.sub("", str(text)))
    return " ".join(out.split("\n")).replace("\t", " ") if one_line else out


def fmt(x: Any, spec: str = ".3f") -> str:
    """``x`` formatted with ``spec`` when it is a finite number, else :data:`MISSING`."""
    v = number(x)
    return MISSING if v is None else format(v, spec)


def fmt_count(x: Any) -> str:
    """A count with thousands separators, else :data:`MISSING`."""
    v = count(x)
    return MISSING if v is None else f"{v:,}"


def clean_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every column name, index value and text cell cleaned for a terminal (one line each)."""

    def cell(v: Any) -> Any:
        return v if v is None or isinstance(v, numbers.Number) else clean(v, one_line=True)

    out = frame.copy()
    for i, dtype in enumerate(out.dtypes):
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):  # object, str
            out.isetitem(i, out.iloc[:, i].astype(object).map(cell))
    out.columns = [clean(c, one_line=True) for c in out.columns]
    out.index = out.index.map(cell)
    out.index.name = None if frame.index.name is None else clean(frame.index.name, one_line=True)
    return out
