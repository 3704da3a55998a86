"""Plain numbers for JSON: the package writes finite floats or None, and numpy values as Python's."""

from __future__ import annotations

import math
from typing import Any


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (None, NaN, infinities, an int too large for a
    float, anything not a number): never raises, so a crafted record's value shows as missing."""
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def whole(x: Any) -> int | None:
    """``x`` as a whole number (a count, a latent, a token id), else None; an int stays exact however large
    (through a float, 10**30 would come back as another number)."""
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    v = finite(x)
    return int(v) if v is not None and v.is_integer() else None


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as Python numbers and lists; anything
    else is not JSON (TypeError)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
