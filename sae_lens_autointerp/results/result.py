"""What ``sae.score()`` / ``sae.autointerp.run()`` return: :class:`ScoreResult`, a run's records with the table,
summary, judge checks and verdict computed from them (:mod:`.tables`), and its pages and plots through the
presenter that :mod:`sae_lens_autointerp.report` installs."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ..numeric import json_default
from .file import RecordSeq
from .tables import SUMMARY_INPUTS, _kinds_from_rows, checks_from_rows, rows_frame, summary_from_rows, table_from_rows


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


@dataclass
class ScoreResult:
    """What ``sae.score()`` / ``sae.autointerp.run()`` return.

    ``table``: one row per (latent, scorer) of the finished latents (see the module docstring for columns).
    ``records``: the full per-latent records (as in results.jsonl): a list, or for a run or a loaded file a
    :class:`RecordSeq` that reads each record from the file when asked (``table``, ``summary()`` and
    ``verdict()`` then come from the file's index, without reading a record). ``skipped``: latent -> reason
    (dead, too rare, ...). ``incomplete``: latent -> why it could not finish (the backend, the budget); the
    same call again finishes them. ``stopped``: why the run stopped early, if it did.
    """

    records: Sequence[dict[str, Any]]
    path: Path | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    incomplete: dict[int, str] = field(default_factory=dict)
    run_key: str | None = None
    #: the known-heuristic filters of the run: threshold, latents flagged positional / unigram, latents explained
    #: by the heuristic explainer and the LLM calls and tokens that saved (empty when they were off)
    heuristics: dict[str, Any] = field(default_factory=dict)

    def _rows(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        if isinstance(self.records, RecordSeq):
            return self.records.rows(columns)
        frame = rows_frame(self.records)
        return frame if columns is None else frame[list(columns)]

    @property
    def table(self) -> pd.DataFrame:
        return table_from_rows(self._rows())

    @property
    def skipped(self) -> dict[int, str]:
        if isinstance(self.records, RecordSeq) and self.records.file is not None and self.run_key is not None:
            file = self.records.file
            wanted = set(self.records.offsets.tolist())
            return {
                lat: file.read_at(off, n)["skipped"]
                for lat, (off, n) in file.skipped_lines(self.run_key).items()
                if off in wanted
            }
        return {r["latent"]: r["skipped"] for r in self.records if r.get("skipped")}

    @property
    def complete(self) -> bool:
        return not self.incomplete

    @property
    def explanations(self) -> dict[int, Any]:
        from ..records import Explanation

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
        return checks_from_rows(self._rows(SUMMARY_INPUTS))

    def verdict(self) -> list[str]:
        """Plain sentences: for each scorer, does it carry signal here, and if not, what to do."""
        from ..controls import judge_sentence

        rows = self._rows(SUMMARY_INPUTS)
        kinds = _kinds_from_rows(rows)
        return [judge_sentence(c, kinds.get(c.scorer, "llm")) for c in checks_from_rows(rows)]

    def summary(self) -> pd.DataFrame:
        """Per scorer: latents attempted / scored / undefined / failed, the mean score with a 95% interval and
        its chance level, the mean control and lift with the judge check. No latent is dropped silently."""
        return summary_from_rows(self._rows(SUMMARY_INPUTS))

    def export_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write this result's records, one JSON line each, to ``path`` (readable by ``report.load``)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as fh:
            for r in self.records:
                fh.write(json.dumps(r, default=json_default, allow_nan=False) + "\n")
        return out

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
