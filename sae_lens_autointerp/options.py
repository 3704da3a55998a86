"""Options declared once: a configuration dataclass's field carries its type, its default and its one-line doc.

``RunConfig`` and ``HarvestConfig`` are the only declarations of a run's and a harvest's options. What else
needs the options reads them from there: the keyword arguments of ``run()`` / ``harvest()`` (typed by the
``TypedDict`` beside each dataclass, which ``tests/test_options.py`` checks field by field), and the command
line's flags with their help text (``cliargs.py``, from :func:`doc`). A name that is no option is an error
naming the closest valid one (:func:`check_names`), never a keyword swallowed.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Collection, Iterable
from dataclasses import MISSING, Field, field
from typing import Any

from .errors import ConfigError


def option(default: Any = MISSING, *, doc: str, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its doc (the command line's help text): ``n: int = option(4, doc="...")``."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def doc(f: Field[Any]) -> str:
    """The doc of a field declared with :func:`option` ("" for another field)."""
    return str(f.metadata.get("doc", ""))


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name nearest to ``name`` (difflib's ratio of at least 0.6), or None."""
    found = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return found[0] if found else None


def check_names(given: Iterable[str], valid: Collection[str], what: str) -> None:
    """Raise a :class:`ConfigError` naming every name of ``given`` that is not in ``valid``, with the closest
    valid name where there is one, and the valid names."""
    unknown = sorted(set(given) - set(valid))
    if not unknown:
        return
    hints = [(name, closest(name, valid)) for name in unknown]
    near = [f"{guess!r}" + (f" for {name!r}" if len(unknown) > 1 else "") for name, guess in hints if guess]
    guess = f"did you mean {', '.join(near)}? " if near else ""
    raise ConfigError(f"unknown {what} option(s) {unknown}; {guess}valid: {', '.join(valid)}")


def check_int(
    value: Any, name: str, *, low: int | None = None, optional: bool = False, high: int | None = None
) -> None:
    """``value`` is an integer (not a bool), at least ``low`` and at most ``high``; None too where ``optional``."""
    if value is None and optional:
        return
    kind = "a positive integer" if low == 1 else "an integer" if low is None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and int(value) < low):
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if high is not None and int(value) > high:
        shown = f"{int(value):,}" if int(value) < 10**15 else f"{float(value):.3g}"
        raise ConfigError(f"{name} must be at most {high:,}, got {shown}")


def check_number(
    value: Any, name: str, *, low: float | None = None, optional: bool = False, finite: bool = False
) -> None:
    """``value`` is a real number (not a bool), never NaN (every comparison with NaN is False, so a NaN limit
    is no limit), at least ``low``; finite too where ``finite``; None too where ``optional``."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value!r}")
