"""Reports of a results.jsonl: the text table and summary (here), the static site (:mod:`.site`), the latent
card shared by the site and notebooks (:mod:`.card`) and the plotly figures (:mod:`.plots`)."""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..results import SUMMARY_COLUMNS, ResultsFile, ScoreResult, install_presenter
from .card import LatentCard
from .site import write_site
from .values import clean, clean_frame, fmt, fmt_count

log = logging.getLogger(__name__)


def load(path: str | Path) -> ScoreResult:
    """The results of one run in a results.jsonl (or its folder): the run named in the folder's run.json, else
    the run of the file's last record. Each latent's last record wins; incomplete latents are reported in
    ``.incomplete``. Records of other runs in the same file are left out with a warning."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise ConfigError(f"no results at {path}; run `sae-autointerp run` or `demo` first")
    usage = _read_usage(path.parent / "usage.json")
    results = ResultsFile(path)
    run_key = None
    run_file = path.parent / "run.json"
    if run_file.is_file():
        try:
            run_key = json.loads(run_file.read_text()).get("run_key")
        except ValueError:
            run_key = None
    keys = results.run_keys()
    if run_key not in keys:
        run_key = results.last_run_key()
    others = {k for k in keys if k != run_key}
    if others:
        log.warning(
            "%s holds records of %d other run(s); reading run %s only", path, len(others), clean(str(run_key)[:12])
        )
    records = results.result_records(run_key) if run_key else []
    incomplete = {
        int(k): f"{r['incomplete'].get('stage')}: {r['incomplete'].get('error')}"
        for k, r in (results.partial(run_key) if run_key else {}).items()
    }
    return ScoreResult(records=records, path=path, usage=usage, incomplete=incomplete, run_key=run_key)


def _read_usage(path: Path) -> dict[str, Any]:
    """usage.json, or {} with a warning when it is unreadable (the report goes on without the usage line)."""
    if not path.is_file():
        return {}
    try:
        usage = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("%s is unreadable (%s); the report leaves the LLM usage out", path, type(exc).__name__)
        return {}
    return usage if isinstance(usage, dict) else {}


def text_table(result: ScoreResult) -> str:
    table = result.table
    if table.empty:
        return "no scored latents"
    wide = table.pivot_table(index="latent", columns="scorer", values="score", aggfunc="first")
    failed = pd.to_numeric(table["n_failed"], errors="coerce").groupby(table["latent"]).sum().rename("n_failed")
    expl = table.groupby("latent")["explanation"].first().fillna("").map(clean).str.slice(0, 60).rename("explanation")
    out = clean_frame(pd.concat([wide, failed, expl], axis=1))
    with pd.option_context("display.width", 200, "display.max_colwidth", 60, "display.float_format", "{:.3f}".format):
        return out.to_string()


def histogram(values: list[float], bins: int = 10, lo: float = 0.0, hi: float = 1.0, width: int = 40) -> str:
    """A text histogram (the terminal has no plots)."""
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    top = max(counts.max(), 1)
    return "\n".join(
        f"{edges[i]:5.2f}-{edges[i + 1]:4.2f} | {'#' * int(round(width * c / top))} {c}" for i, c in enumerate(counts)
    )


def summary_text(result: ScoreResult) -> str:
    summary = result.summary()
    if summary.empty:
        return ""
    cols = SUMMARY_COLUMNS[: SUMMARY_COLUMNS.index("lift_high") + 1]  # the judge columns have their own lines
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200):
        return clean_frame(summary[cols]).to_string(index=False)


def text_report(result: ScoreResult) -> str:
    parts = [text_table(result), ""]
    table = result.table.dropna(subset=["score"])
    if not table.empty:
        parts += [
            "per scorer (mean score with 95% interval; control = another latent's explanation on the same "
            "examples; lift = score - control):",
            summary_text(result),
            "",
        ]
        for scorer, group in table.groupby("scorer"):
            lo = -1.0 if group["metric"].eq("pearson").any() else 0.0
            parts += [f"{clean(scorer, one_line=True)} scores:", histogram(group["score"].tolist(), lo=lo), ""]
    verdict = result.verdict()
    if verdict:
        parts += ["judge check:", *(f"  {clean(line)}" for line in verdict), ""]
    if result.skipped:
        parts.append(
            f"skipped {len(result.skipped)} latents: "
            + "; ".join(f"{clean(k)}: {clean(v)}" for k, v in list(result.skipped.items())[:10])
        )
    if result.incomplete:
        parts.append(
            f"INCOMPLETE: {len(result.incomplete)} latents did not finish (run the same command again to "
            "finish them): " + "; ".join(f"{clean(k)}: {clean(v)}" for k, v in list(result.incomplete.items())[:5])
        )
    line = usage_line(result.usage)
    if line:
        parts.append(line)
    return "\n".join(parts)


def usage_line(usage: Any) -> str | None:
    """One line of a run's LLM usage (usage.json's ``total``): answered requests, and the HTTP attempts,
    retries and failures beside them, so a run whose every request failed does not read "0 requests" alone."""
    total = usage.get("total") if isinstance(usage, dict) else None
    if not isinstance(total, dict) or not total:
        return None
    tries = [f"{fmt_count(total.get(k))} {k}" for k in ("attempts", "retries", "failures") if k in total]
    return (
        f"LLM usage: {fmt_count(total.get('requests'))} requests"
        + (f" ({', '.join(tries)})" if tries else "")
        + f", {fmt_count(total.get('prompt_tokens'))} prompt + {fmt_count(total.get('completion_tokens'))} "
        f"completion tokens, {fmt_count(total.get('cache_hits'))} cache hits, ${fmt(total.get('cost', 0), '.4f')}"
    )


def write_html(result: ScoreResult, path: str | Path, **options: Any) -> Path:
    """The run's static site (see :mod:`.site`): ``path`` is a folder or the index's ``.html`` path."""
    return write_site(result, path, **options)


def comparison_table(results: dict[str, ScoreResult]) -> pd.DataFrame:
    """One row per (explainer run, scorer): the summary's counts, mean, control, lift and judge check."""
    frames = []
    for name, result in results.items():
        summary = result.summary()
        if summary.empty:
            continue
        summary.insert(0, "explainer", name)
        frames.append(summary)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def conclusion(results: dict[str, ScoreResult]) -> list[str]:
    """Two or three plain lines, computed from the runs: which scores carry signal here, which do not and why,
    and what to run for numbers that mean something."""
    table = comparison_table(results)
    if table.empty:
        return ["No latent was scored; nothing to conclude."]
    lines = []
    good, bad = [], []
    for scorer, group in table.groupby("scorer", sort=False):
        ok = group[group["judge_ok"] == True]  # noqa: E712 (object column)
        if len(ok):
            best = ok.sort_values("lift", ascending=False).iloc[0]
            good.append(
                f"{scorer} (lift {best['lift']:+.2f}, 95% CI {best['lift_low']:+.2f} to "
                f"{best['lift_high']:+.2f}, {best['explainer']} explanations)"
            )
        elif (group["judge_ok"] == False).any():  # noqa: E712
            worst = group[group["judge_ok"] == False].iloc[0]  # noqa: E712
            why = (
                f"{worst['identical_answers']:.0%} identical answers"
                if worst["identical_answers"] is not None and worst["identical_answers"] >= 0.95
                else f"lift {worst['lift']:+.2f}, 95% CI {worst['lift_low']:+.2f} to {worst['lift_high']:+.2f}"
            )
            bad.append(f"{scorer} ({why})")
    if good:
        lines.append(
            "Signal on this machine: " + "; ".join(good) + ": the right explanation scores higher than "
            "another latent's on the same examples."
        )
    if bad:
        lines.append(
            "No signal: " + "; ".join(bad) + ". Here the right explanation scores no better than another "
            "latent's, so these scores mean nothing (identical answers: the judge; otherwise the "
            "explanations, the judge, or both)."
        )
    lines.append(
        "For detection / fuzzing / simulation scores that mean something, use a capable LLM: "
        "sae-autointerp run --llm openai:MODEL --base-url URL ... (docs/llm.md)."
    )
    return lines


def comparison_text(results: dict[str, ScoreResult]) -> str:
    table = comparison_table(results)
    if table.empty:
        return "no scores to compare"
    cols = [
        "explainer",
        "scorer",
        "n_scored",
        "mean",
        "low",
        "high",
        "control",
        "lift",
        "lift_low",
        "lift_high",
        "judge_ok",
    ]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200):
        body = clean_frame(table[cols]).to_string(index=False)
    return "\n".join(
        [
            "explainers compared (mean score [95% CI]; control = another latent's explanation; "
            "lift = score - control):",
            body,
            "",
            *(clean(line) for line in conclusion(results)),
        ]
    )


def write_index(results: dict[str, ScoreResult], path: str | Path) -> Path:
    """A page comparing several runs (the demo's explainers), linking each run's own report."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: the folder {path.parent} does not exist (create it first)")
    esc = html.escape
    table = comparison_table(results)
    links = "".join(f'<li><a href="{esc(name)}/report.html">{esc(name)}</a></li>' for name in results)
    lines = "".join(f"<p>{esc(line)}</p>" for line in conclusion(results))
    body = table.to_html(index=False, float_format=lambda x: f"{x:.3f}", escape=True) if not table.empty else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sae-lens-autointerp comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Explainers compared</h1>{lines}{body}<h2>Runs</h2><ul>{links}</ul></body></html>"""
    path.write_text(page, encoding="utf-8")
    return path


class _Presenter:
    """What ``ScoreResult.to_html`` / ``.show`` / ``.plot`` call (results sits below report in the layers)."""

    def to_html(self, result: ScoreResult, out: str | os.PathLike[str], **options: Any) -> Path:
        return write_site(result, out, **options)

    def show(self, result: ScoreResult, latent: int) -> LatentCard:
        return LatentCard(result, latent)

    def plot(self, result: ScoreResult) -> Any:
        from .plots import score_distributions

        return score_distributions(result.table, result.summary())


install_presenter(_Presenter())
