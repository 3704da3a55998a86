"""results.jsonl: one JSON record per finished latent, appended as soon as the latent is done.

A killed run loses at most the latents in flight; running it again skips every latent that has a record
with the same ``run_key`` (same SAE, store, explainer, scorers, sampling and LLM).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TABLE_COLUMNS = ["latent", "scorer", "score", "low", "high", "chance", "auc", "n_examples", "n_failed", "explanation"]


class ResultsFile:
    """Append-only JSONL with whole-line writes (flushed and fsynced), tolerant of a torn last line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line torn by a crash; that latent simply runs again
        return out

    def done(self, run_key: str) -> dict[int, dict[str, Any]]:
        return {r["latent"]: r for r in self.records() if r.get("run_key") == run_key}

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=_json_default, allow_nan=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class ScoreResult:
    """What ``sae.score()`` / ``sae.autointerp.run()`` return.

    ``table``: one row per (latent, scorer) with at least latent, scorer, score, n_examples, n_failed
    (parse failures and refusals, excluded from the score), plus the score's 95% interval (low, high), its
    chance level, and the AUC where the scorer has probabilities.
    ``records``: the full per-latent records (as in results.jsonl). ``skipped``: latent -> reason.
    """

    records: list[dict[str, Any]]
    path: Path | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None  # why the run stopped early (budget), if it did

    @property
    def table(self) -> pd.DataFrame:
        return records_table(self.records)

    @property
    def skipped(self) -> dict[int, str]:
        return {r["latent"]: r["skipped"] for r in self.records if r.get("skipped")}

    @property
    def explanations(self) -> dict[int, Any]:
        from .records import Explanation

        out = {}
        for r in self.records:
            if r.get("explanation"):
                e = dict(r["explanation"])
                e["examples_shown"] = tuple(e.get("examples_shown") or ())
                out[r["latent"]] = Explanation(**e)
        return out

    def summary(self) -> pd.DataFrame:
        """Per scorer: latents scored, mean score with a 95% interval, failures."""
        from .metrics import aggregate_table

        return aggregate_table(self.table.dropna(subset=["score"]))

    def __repr__(self) -> str:
        return f"ScoreResult({len(self.records)} latents, path={str(self.path) if self.path else None!r})"


def records_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        explanation = (r.get("explanation") or {}).get("text")
        for name, out in (r.get("scores") or {}).items():
            low, high, chance = _interval(out)
            rows.append(
                {
                    "latent": r["latent"],
                    "scorer": name,
                    "score": out.get("score"),
                    "low": low,
                    "high": high,
                    "chance": chance,
                    "auc": (out.get("metrics") or {}).get("auc"),
                    "n_examples": out.get("n_examples", 0),
                    "n_failed": out.get("n_failed", 0),
                    "explanation": explanation,
                    "error": out.get("error"),
                }
            )
    df = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "error"])
    return df.astype({"score": float, "low": float, "high": float, "chance": float, "auc": float})


def _interval(out: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(low, high, chance) of a scorer's headline metric (flat keys: NAME, NAME_low, NAME_high, chance_NAME)."""
    m = out.get("metrics") or {}
    for key in ("balanced_accuracy", "pearson", "accuracy", "auc", "mean_diff"):
        if f"{key}_low" in m:
            return m[f"{key}_low"], m.get(f"{key}_high"), m.get(f"chance_{key}")
    return None, None, None
