"""results.jsonl: one JSON record per latent, appended as soon as the latent is done (or left incomplete).

A killed run loses at most the latents in flight; running it again skips every latent that has a finished
record with the same ``run_key`` (same store, explainer, scorers and their settings and prompts, sampling,
LLM backend and cache mode, seed, controls, plugin versions). A record with ``incomplete`` (an infrastructure
failure: the backend, the budget) is not finished: the next run resumes it from what it holds. Later records
of a latent supersede earlier ones.

``result.table``: one row per (latent, scorer) of finished latents: the headline ``metric`` and ``score`` with
its 95% interval (``low``, ``high``) and ``chance``, the ``auc`` where graded probabilities exist, the
``calibrated`` balanced accuracy (classification scorers), the ``control`` score (another latent's
explanation on a subset of the same examples), ``lift`` = score - control with ``lift_low`` / ``lift_high``,
``signal`` (the lift's interval lies above 0), ``n_examples``, ``n_failed``, the explanation and any error, and
from the known-heuristic filters (``heuristics.py``; None when they were off) the latent's ``heuristic`` flag
("positional" / "unigram" / None) with ``positional_r2`` and ``unigram_r2``.
``result.summary()``: per scorer the counts (``n_latents``, ``n_scored``, ``n_undefined``, ``n_failed``), the
mean score with its interval, the chance level, the mean control and lift, and the judge check.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

log = logging.getLogger("sae_lens_autointerp")

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
    "n_examples",
    "n_failed",
    "explanation",
    "error",
    "provider",
    "heuristic",
    "positional_r2",
    "unigram_r2",
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
]


class Presenter(Protocol):
    """Pages and plots of a result; implemented by :mod:`sae_lens_autointerp.report` (a layer above)."""

    def to_html(self, result: ScoreResult, out: str | os.PathLike[str], **options: Any) -> Path: ...
    def show(self, result: ScoreResult, latent: int) -> Any: ...
    def plot(self, result: ScoreResult) -> Any: ...


# report installs its presenter when the package is imported: results may not import report (layers), and a
# ScoreResult should still have its pages as methods
_PRESENTERS: list[Presenter] = []


def install_presenter(presenter: Presenter) -> None:
    _PRESENTERS[:] = [presenter]


def _presenter() -> Presenter:
    if not _PRESENTERS:
        raise RuntimeError("the report module is not loaded: `import sae_lens_autointerp` first")
    return _PRESENTERS[0]


class ResultsFile:
    """Append-only JSONL with whole-line writes (flushed and fsynced); an unreadable line is skipped."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._repaired = False

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out, bad = [], 0
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1  # a torn or foreign line: its latent runs again
                    continue
                if isinstance(record, dict):
                    out.append(record)
                else:
                    bad += 1
        if bad:
            log.warning("%s: %d unreadable line(s) skipped (their latents run again)", self.path, bad)
        return out

    def repair(self) -> None:
        """A torn last line (a crash mid-write) is moved to ``results.jsonl.corrupt`` with a warning, so the next
        record starts on a clean line instead of being glued to the fragment."""
        if self._repaired or not self.path.is_file():
            return
        self._repaired = True
        with self.path.open("rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            cut = data.rfind(b"\n") + 1
            with open(self.path.with_name(self.path.name + ".corrupt"), "ab") as aside:
                aside.write(data[cut:] + b"\n")
            fh.truncate(cut)
        log.warning(
            "%s ended in a torn line (%d bytes, moved to %s.corrupt); its latent runs again",
            self.path,
            len(data) - cut,
            self.path.name,
        )

    def latest(self, run_key: str) -> dict[int, dict[str, Any]]:
        """The last record of each latent of one run (finished or not)."""
        return {r["latent"]: r for r in self.records() if r.get("run_key") == run_key and "latent" in r}

    def done(self, run_key: str) -> dict[int, dict[str, Any]]:
        """Finished latents of one run: their last record has no ``incomplete``."""
        return {k: r for k, r in self.latest(run_key).items() if not r.get("incomplete")}

    def partial(self, run_key: str) -> dict[int, dict[str, Any]]:
        """Latents whose last record is ``incomplete``: what they finished, to resume from."""
        return {k: r for k, r in self.latest(run_key).items() if r.get("incomplete")}

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=_json_default, allow_nan=False) + "\n"
        self.repair()
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class ScoreResult:
    """What ``sae.score()`` / ``sae.autointerp.run()`` return.

    ``table``: one row per (latent, scorer) of the finished latents (see the module docstring for columns).
    ``records``: the full per-latent records (as in results.jsonl). ``skipped``: latent -> reason (dead, too
    rare, ...). ``incomplete``: latent -> why it could not finish (the backend, the budget); the same call
    again finishes them. ``stopped``: why the run stopped early, if it did.
    """

    records: list[dict[str, Any]]
    path: Path | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    incomplete: dict[int, str] = field(default_factory=dict)
    run_key: str | None = None
    #: the known-heuristic filters of the run: threshold, latents flagged positional / unigram, latents explained
    #: by the heuristic explainer and the LLM calls and tokens that saved (empty when they were off)
    heuristics: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        return records_table(self.records)

    @property
    def skipped(self) -> dict[int, str]:
        return {r["latent"]: r["skipped"] for r in self.records if r.get("skipped")}

    @property
    def complete(self) -> bool:
        return not self.incomplete

    @property
    def explanations(self) -> dict[int, Any]:
        from .records import Explanation

        known = set(Explanation.__dataclass_fields__)
        out = {}
        for r in self.records:
            if r.get("explanation"):
                e = {k: v for k, v in r["explanation"].items() if k in known}
                e["examples_shown"] = tuple(e.get("examples_shown") or ())
                out[r["latent"]] = Explanation(**e)
        return out

    def judge_checks(self) -> list[Any]:
        """One :class:`~sae_lens_autointerp.controls.JudgeCheck` per scorer that reads an explanation."""
        return judge_checks(self.records)

    def verdict(self) -> list[str]:
        """Plain sentences: for each scorer, does it carry signal here, and if not, what to do."""
        from .controls import judge_sentence

        kinds = _judge_kinds(self.records)
        return [judge_sentence(c, kinds.get(c.scorer, "llm")) for c in self.judge_checks()]

    def summary(self) -> pd.DataFrame:
        """Per scorer: latents attempted / scored / undefined / failed, the mean score with a 95% interval and
        its chance level, the mean control and lift with the judge check. No latent is dropped silently."""
        return summary_table(self.records)

    def to_html(self, out: str | os.PathLike[str], **options: Any) -> Path:
        """Write the static site of this run (index + one page per latent; opens from disk, no network) into
        the folder ``out`` (or at ``out`` when it ends in ``.html``); returns the index page. ``pages=``: the
        latents that get a page (default all); ``store=``: the activation store (default: the run's)."""
        return _presenter().to_html(self, out, **options)

    def show(self, latent: int) -> Any:
        """The latent's card (explanation, scores with intervals / chance / control, coloured examples, the
        judge's answers, output tokens, neighbours): rendered inline in Jupyter."""
        return _presenter().show(self, latent)

    def plot(self) -> Any:
        """A plotly figure: per scorer the distribution of scores with the controls', chance and the mean's
        95% interval."""
        return _presenter().plot(self)

    def __repr__(self) -> str:
        extra = f", {len(self.incomplete)} incomplete" if self.incomplete else ""
        return f"ScoreResult({len(self.records)} latents{extra}, path={str(self.path) if self.path else None!r})"


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
    score = out.get("score")
    for key in ("balanced_accuracy", "accuracy", "pearson", "auc", "mean_diff"):
        if score is not None and m.get(key) is not None and abs(float(m[key]) - float(score)) < 1e-12:
            return key, m.get(f"{key}_low"), m.get(f"{key}_high"), m.get(f"chance_{key}")
    return None, None, None, None


def records_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(_rows(records), columns=TABLE_COLUMNS)
    floats = (
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
    )
    df = df.astype({c: float for c in floats}).astype({"signal": object, "heuristic": object})
    df["heuristic"] = df["heuristic"].where(df["heuristic"].notna(), None)
    return df


def _rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows, plus the control's interval (``control_low`` / ``control_high``)."""
    from .controls import lift

    rows = []
    for r in records:
        if r.get("incomplete") or r.get("skipped"):
            continue
        explanation = (r.get("explanation") or {}).get("text")
        controls = r.get("controls") or {}
        heuristic = r.get("heuristic") or {}
        for name, out in (r.get("scores") or {}).items():
            metric, low, high, chance = _headline(out)
            ctl = controls.get(name) or {}
            est = lift(out.get("score"), low, high, ctl.get("score"), ctl.get("low"), ctl.get("high"))
            metrics = out.get("metrics") or {}
            rows.append(
                {
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
                    "n_examples": out.get("n_examples", 0),
                    "n_failed": out.get("n_failed", 0),
                    "explanation": explanation,
                    "error": out.get("error"),
                    "provider": _provider_text(out),
                    "heuristic": heuristic.get("flag"),
                    "positional_r2": heuristic.get("positional_r2"),
                    "unigram_r2": heuristic.get("unigram_r2"),
                    "control_low": ctl.get("low"),
                    "control_high": ctl.get("high"),
                }
            )
    return rows


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _judge_kinds(records: list[dict[str, Any]]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for r in records:
        for name, out in (r.get("scores") or {}).items():
            if out.get("judge_kind"):
                kinds[name] = out["judge_kind"]
    return kinds


def judge_checks(records: list[dict[str, Any]]) -> list[Any]:
    from .controls import answers_of, judge_check, lifts_per_latent

    answers: dict[str, list[Any]] = {}
    controlled: set[str] = set()
    for r in records:
        if r.get("incomplete") or r.get("skipped"):
            continue
        for name, out in (r.get("scores") or {}).items():
            answers.setdefault(name, []).extend(answers_of(out))
            if out.get("needs_explanation", name in (r.get("controls") or {})):
                controlled.add(name)
    by_scorer: dict[str, list[dict[str, Any]]] = {}
    for row in _rows(records):
        by_scorer.setdefault(row["scorer"], []).append(row)
    # scorers that read no explanation (intruder) have no control and no check; with controls off the check
    # says it was not made
    return [
        judge_check(name, lifts_per_latent(by_scorer[name]), answers.get(name, []))
        for name in sorted(by_scorer)
        if name in controlled
    ]


def summary_table(records: list[dict[str, Any]], confidence: float = 0.95) -> pd.DataFrame:
    from .controls import judge_sentence, mean_or_none, pooled_mean
    from .metrics import Estimate

    table = records_table(records)
    checks = {c.scorer: c for c in judge_checks(records)}
    kinds = _judge_kinds(records)
    rows = []
    for name, group in table.groupby("scorer", sort=True):
        scores = group["score"].to_numpy(dtype=float)
        scored = np.isfinite(scores)
        failed = group["error"].notna().to_numpy() & ~scored
        # each latent's own interval plus the spread between latents: never a zero-width interval when a few
        # latents happen to score the same
        est = pooled_mean(
            [Estimate(float(r.score), _num(r.low), _num(r.high)) for r in group.itertuples() if np.isfinite(r.score)],
            confidence,
        )
        check = checks.get(str(name))
        chance = group["chance"].dropna()
        metric = group["metric"].dropna()
        rows.append(
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
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def llm_model_name(run: Mapping[str, Any]) -> str | None:
    """The run's LLM as a model name: ``openai:gpt-4o-mini`` -> ``gpt-4o-mini``, ``vllm:org/m`` -> ``m`` (as
    Neuronpedia's batch-autointerp names models), ``local`` -> the embedded model file it served."""
    name = run.get("llm")
    if not name:
        return None
    backend, sep, model = str(name).partition(":")
    if sep and model:
        return model.split("/")[-1]
    served = str((run.get("llm_identity") or {}).get("served_by") or "")
    if "@" in served:
        return re.sub(r"\.gguf$", "", served.split("@", 1)[1].split("/")[-1])
    return str(name)


def explanation_model_of(record: Mapping[str, Any], run: Mapping[str, Any]) -> str | None:
    """The model that wrote a record's explanation, or None when no LLM wrote it (an LLM-free explainer such
    as top-tokens, a heuristic substitute, explanations given to ``sae.score``, a Neuronpedia lookup) or the
    run does not say which one did. An LLM wrote it when the record's usage shows requests in its
    ``explain`` stage, or its ``parse`` says how the text was read from an LLM answer; that LLM is the run's
    (run.json ``llm``)."""
    explanation = record.get("explanation") or {}
    explain = (record.get("usage") or {}).get("explain") or {}
    by_llm = bool(explanation.get("parse")) or (explain.get("requests") or 0) + (explain.get("cache_hits") or 0) > 0
    return llm_model_name(run) if by_llm else None
