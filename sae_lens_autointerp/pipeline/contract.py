"""What a plugin may return, and what a record entry is made of when it returns something else.

A scorer returns a :class:`~sae_lens_autointerp.records.ScorerOutput` with a finite score (or None) and
non-negative integer counts; anything else, a crash, or an output that cannot be written to results.jsonl
becomes a failed entry naming the plugin (:func:`failed_entry`, the one constructor of those), so one broken
plugin never takes a run down and never writes a line that cannot be read back.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ..records import Explanation, ScorerOutput
from ..results import encode_record

#: What a scorer's record entry says about who judged, beside the scorer's own output.
JUDGE_KEYS = ("provider", "judge_kind", "judge", "needs_explanation")


def failed_entry(name: str, error: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The record entry of scorer ``name`` that could not score: ``error`` says why, ``extra`` who judged."""
    return {**ScorerOutput.failed(name, error).to_dict(), **extra, "scorer": name}


def check_output(out: Any) -> tuple[str | None, dict[str, Any]]:
    """What is wrong with a scorer's return value (the plugin contract), or None; and ``out.to_dict()`` once it
    is known to be a ScorerOutput (checked, so the caller need not copy it again). Whether it can be written
    to results.jsonl is checked when the record is written (:func:`quarantine`): encoded once, not twice."""
    if not isinstance(out, ScorerOutput):
        return f"returned {type(out).__name__}, not a ScorerOutput", {}
    score = out.score
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score)
    ):
        return f"returned score={score!r}; a score is a finite number or None", {}
    for field_name in ("n_examples", "n_failed"):
        value = getattr(out, field_name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            return f"returned {field_name}={value!r}; it must be a non-negative integer", {}
    return None, out.to_dict()


def guess_headline(entry: Mapping[str, Any]) -> dict[str, Any]:
    """For plugins that do not declare their headline: the metric whose value equals the score, if any."""
    m = entry.get("metrics") or {}
    for key in ("balanced_accuracy", "accuracy", "pearson", "auc", "mean_diff"):
        if key in m and m[key] is not None and entry.get("score") is not None and abs(m[key] - entry["score"]) < 1e-12:
            return {
                "metric": key,
                "low": m.get(f"{key}_low"),
                "high": m.get(f"{key}_high"),
                "chance": m.get(f"chance_{key}"),
            }
    return {}


def quarantine(record: dict[str, Any]) -> None:
    """Replace each scorer entry and control of ``record`` that cannot be written with the error it is."""
    for name, entry in list((record.get("scores") or {}).items()):
        problem = _unwritable(entry)
        if problem is None:
            continue
        provider = entry.get("provider") or {}
        error = (
            f"plugin {provider.get('plugin')!r}: scorer {name!r} returned a ScorerOutput that cannot be written to "
            f"results.jsonl: {problem}"
        )
        record["scores"][name] = failed_entry(name, error, {k: entry.get(k) for k in JUDGE_KEYS})
    for name, control in list((record.get("controls") or {}).items()):
        problem = _unwritable(control)
        if problem is not None:
            record["controls"][name] = {
                "explanation_from": control.get("explanation_from"),
                "explanation": control.get("explanation"),
                "score": None,
                "error": f"scorer {name!r} returned a control that cannot be written to results.jsonl: {problem}",
            }


def _unwritable(entry: Any) -> str | None:
    """Why ``entry`` cannot be written to results.jsonl, or None."""
    try:
        encode_record(entry)
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def explanation_from(d: Mapping[str, Any]) -> Explanation:
    """The :class:`Explanation` a record's ``explanation`` entry holds (keys it does not know are dropped)."""
    known = {f.name for f in fields(Explanation)}
    e = {k: v for k, v in d.items() if k in known}
    e["examples_shown"] = tuple(e.get("examples_shown") or ())
    return Explanation(**e)
