"""The table and the summary of a run, built from compact rows: one row per (finished record, scorer).

``result.table``: one row per (latent, scorer) of finished latents: the headline ``metric`` and ``score`` with
its 95% interval (``low``, ``high``) and ``chance``, the ``auc`` where graded probabilities exist, the
``calibrated`` balanced accuracy (classification scorers), the ``control`` score (another latent's
explanation on a subset of the same examples), ``lift`` = score - control with ``lift_low`` / ``lift_high``,
``signal`` (the lift's interval lies above 0), ``n_examples``, ``n_failed``, the explanation and any error, and
from the known-heuristic filters (``heuristics.py``; None when they were off) the latent's ``heuristic`` flag
("positional" / "unigram" / None) with ``positional_r2`` and ``unigram_r2``, and ``holdout``: "held out" (the test
shares no token or text with what the explanation's explainer was shown), "other corpus" (it was shown windows of
another corpus: nothing could be checked) or "unknown" (nobody recorded what it was shown: a plain string,
Neuronpedia, delphi).
``result.summary()``: per scorer the counts (``n_latents``, ``n_scored``, ``n_undefined``, ``n_failed``), the
mean score with its interval, the chance level, the mean control and lift, the judge check, and ``holdout``
(one of the above when all its latents share it, else each with its count: "held out 8, unknown 2").

The rows are plain data (:func:`record_rows`): the index (:mod:`.index`) stores them, and the table, summary and
judge check are computed from them alone, whether they come from the index or from records in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..numeric import finite, whole

TABLE_COLUMNS = [
    "latent",
    "scorer",
    "metric",
    "score",
    "low",
    "high",
    "chance",
    "auc",
    "calibrated",
    "control",
    "lift",
    "lift_low",
    "lift_high",
    "signal",
    "lift_method",
    "n_examples",
    "n_failed",
    "explanation",
    "error",
    "provider",
    "heuristic",
    "positional_r2",
    "unigram_r2",
    "holdout",
]
SUMMARY_COLUMNS = [
    "scorer",
    "metric",
    "n_latents",
    "n_scored",
    "n_undefined",
    "n_failed",
    "mean",
    "low",
    "high",
    "chance",
    "control",
    "lift",
    "lift_low",
    "lift_high",
    "n_controls",
    "identical_answers",
    "judge_ok",
    "judge_check",
    "holdout",
]


#: What the index keeps per (record, scorer): the table's columns, the control's interval, and what the judge
#: check pools over latents (the judge's kind, whether the scorer reads an explanation, the answer counts).
ROW_COLUMNS = [
    *TABLE_COLUMNS,
    "control_low",
    "control_high",
    "judge_kind",
    "controlled",
    "answers",
    "has_heuristic",
]


def _provider_text(entry: dict[str, Any]) -> str | None:
    p = entry.get("provider") or {}
    if not p:
        return None
    return " ".join(str(x) for x in (p.get("distribution") or p.get("plugin"), p.get("version")) if x)


def _headline(out: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(metric, low, high, chance) declared by the scorer, or for old records the metric whose value is the
    score (never an interval that belongs to another metric)."""
    if out.get("metric"):
        return out["metric"], out.get("low"), out.get("high"), out.get("chance")
    m = out.get("metrics") or {}
    score = finite(out.get("score"))
    for key in ("balanced_accuracy", "accuracy", "pearson", "auc", "mean_diff"):
        value = finite(m.get(key))
        if score is not None and value is not None and abs(value - score) < 1e-12:
            return key, m.get(f"{key}_low"), m.get(f"{key}_high"), m.get(f"chance_{key}")
    return None, None, None, None


_FLOATS = (
    "score",
    "low",
    "high",
    "chance",
    "auc",
    "calibrated",
    "control",
    "lift",
    "lift_low",
    "lift_high",
    "positional_r2",
    "unigram_r2",
    "control_low",
    "control_high",
)


def _count(value: Any) -> int | None:
    """A record's count as an int the table's integer columns hold; None for anything else (shown as 0)."""
    n = whole(value)
    return n if n is not None and abs(n) < 2**63 else None


def record_rows(r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One finished record's compact rows, one per scorer (:data:`ROW_COLUMNS`); none for an incomplete or
    skipped record. The table, the summary and the judge check are built from these alone."""
    from ..controls import answer_counts, paired_lift

    if r.get("incomplete") or r.get("skipped"):
        return []
    explanation = (r.get("explanation") or {}).get("text")
    controls = r.get("controls") or {}
    heuristic = r.get("heuristic") or {}
    rows = []
    for name, out in (r.get("scores") or {}).items():
        metric, low, high, chance = _headline(out)
        ctl = controls.get(name) or {}
        est = paired_lift(out, ctl, metric, low, high)
        metrics = out.get("metrics") or {}
        counts = answer_counts(out)
        row = {
            "latent": r["latent"],
            "scorer": name,
            "metric": metric,
            "score": out.get("score"),
            "low": low,
            "high": high,
            "chance": chance,
            "auc": metrics.get("auc"),
            "calibrated": metrics.get("balanced_accuracy_calibrated"),
            "control": ctl.get("score"),
            "lift": None if est is None else est.value,
            "lift_low": None if est is None else est.low,
            "lift_high": None if est is None else est.high,
            "signal": None if est is None or est.low != est.low else bool(est.low > 0),
            "lift_method": None if est is None else est.method,
            "n_examples": out.get("n_examples", 0),
            "n_failed": out.get("n_failed", 0),
            "explanation": explanation,
            "error": out.get("error"),
            "provider": _provider_text(out),
            "heuristic": heuristic.get("flag"),
            "positional_r2": heuristic.get("positional_r2"),
            "unigram_r2": heuristic.get("unigram_r2"),
            "holdout": r.get("holdout"),
            "control_low": ctl.get("low"),
            "control_high": ctl.get("high"),
            "judge_kind": out.get("judge_kind"),
            "controlled": bool(out.get("needs_explanation", name in controls)),
            "answers": json.dumps(counts) if counts else None,
            "has_heuristic": "heuristic" in r,
        }
        for col in _FLOATS:
            row[col] = finite(row[col])
        row["n_examples"], row["n_failed"] = _count(row["n_examples"]), _count(row["n_failed"])
        rows.append(row)
    return rows


def rows_of(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The compact rows of ``records`` as dicts (the table's columns plus the control's interval, ...)."""
    return [row for r in records for row in record_rows(r)]


def rows_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The compact rows of ``records`` (:func:`record_rows`) as a frame."""
    return pd.DataFrame([row for r in records for row in record_rows(r)], columns=ROW_COLUMNS)


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for c in _FLOATS:  # numbers only ("abc" in an old record or index: NaN, shown as "–")
        if c in df.columns:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    if "signal" in df.columns:
        df["signal"] = pd.Series(
            [None if v is None or v != v else bool(v) for v in df["signal"]], dtype=object, index=df.index
        )
    for col in ("heuristic", "metric", "explanation", "error", "provider", "holdout"):
        if col in df.columns:
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    for col in ("n_examples", "n_failed"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype(int)
    return df


def table_from_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """``result.table`` from compact rows."""
    return _typed(rows[TABLE_COLUMNS].reset_index(drop=True))


def records_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    return table_from_rows(rows_frame(records))


def _kinds_from_rows(rows: pd.DataFrame) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for name, kind in zip(rows["scorer"], rows["judge_kind"], strict=True):
        if isinstance(kind, str) and kind:
            kinds[str(name)] = kind
    return kinds


def checks_from_rows(rows: pd.DataFrame) -> list[Any]:
    """One judge check per scorer that reads an explanation, from compact rows."""
    from ..controls import judge_check, lifts_per_latent

    out = []
    for name, group in rows.groupby("scorer", sort=True):
        reference = "control" if group["controlled"].fillna(False).astype(bool).any() else "chance"
        counts: dict[str, int] = {}
        for text in group["answers"].dropna():
            for key, n in json.loads(text).items():
                counts[key] = counts.get(key, 0) + int(n)
        g = _typed(group[["score", "low", "high", "chance", "control", "control_low", "control_high", *_LIFT]].copy())
        lifts = lifts_per_latent(g.to_dict("records"), reference)
        out.append(judge_check(str(name), lifts, answer_counts=counts, reference=reference))
    return out


def judge_checks(records: Iterable[Mapping[str, Any]]) -> list[Any]:
    return checks_from_rows(rows_frame(records))


_LIFT = ("lift", "lift_low", "lift_high")
#: The compact columns the summary reads.
SUMMARY_INPUTS = [
    "scorer",
    "metric",
    "score",
    "low",
    "high",
    "chance",
    "error",
    "control",
    "control_low",
    "control_high",
    *_LIFT,
    "judge_kind",
    "controlled",
    "answers",
    "holdout",
]


def _holdout_text(values: pd.Series) -> str | None:
    """The summary's ``holdout``: the one status of a scorer's latents, else each status with its count."""
    counts = values.dropna().value_counts()
    if len(counts) <= 1:
        return str(counts.index[0]) if len(counts) else None
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))


def summary_from_rows(rows: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """``result.summary()`` from compact rows."""
    from ..controls import judge_sentence, mean_or_none, pooled_mean
    from ..metrics import Estimate

    table = _typed(rows[[c for c in SUMMARY_INPUTS if c in rows.columns]].copy())
    checks = {c.scorer: c for c in checks_from_rows(rows)}
    kinds = _kinds_from_rows(rows)
    out = []
    for name, group in table.groupby("scorer", sort=True):
        scores = group["score"].to_numpy(dtype=float)
        scored = np.isfinite(scores)
        failed = group["error"].notna().to_numpy() & ~scored
        # each latent's own interval plus the spread between latents: never a zero-width interval when a few
        # latents happen to score the same
        lows, highs = group["low"].to_numpy(dtype=float), group["high"].to_numpy(dtype=float)
        est = pooled_mean(
            [
                Estimate(float(v), float(lo), float(hi))
                for v, lo, hi in zip(scores[scored], lows[scored], highs[scored], strict=True)
            ],
            confidence,
        )
        check = checks.get(str(name))
        chance = group["chance"].dropna()
        metric = group["metric"].dropna()
        out.append(
            {
                "scorer": name,
                "metric": metric.iloc[0] if len(metric) else None,
                "n_latents": len(group),
                "n_scored": int(scored.sum()),
                "n_undefined": int((~scored & ~failed).sum()),
                "n_failed": int(failed.sum()),
                "mean": est.value,
                "low": est.low,
                "high": est.high,
                "chance": float(chance.mean()) if len(chance) else None,
                "control": mean_or_none(group["control"]),
                "lift": None if check is None else check.to_dict()["lift"],
                "lift_low": None if check is None else check.to_dict()["lift_low"],
                "lift_high": None if check is None else check.to_dict()["lift_high"],
                "n_controls": 0 if check is None else check.n_controls,
                "identical_answers": None if check is None else check.identical_answers,
                "judge_ok": None if check is None else check.can_tell,
                "judge_check": None if check is None else judge_sentence(check, kinds.get(str(name), "llm")),
                "holdout": _holdout_text(group["holdout"]) if "holdout" in group.columns else None,
            }
        )
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def summary_table(records: Iterable[Mapping[str, Any]], confidence: float = 0.95) -> pd.DataFrame:
    return summary_from_rows(rows_frame(records), confidence)
