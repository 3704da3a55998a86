"""Reports of a results.jsonl: a text table, a per-scorer summary and a self-contained HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ConfigError
from .results import ResultsFile, ScoreResult


def load(path: str | Path) -> ScoreResult:
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise ConfigError(f"no results at {path}; run `sae-autointerp run` or `demo` first")
    usage_file = path.parent / "usage.json"
    usage = json.loads(usage_file.read_text()) if usage_file.is_file() else {}
    records = sorted(ResultsFile(path).records(), key=lambda r: r["latent"])  # file order = completion order
    return ScoreResult(records=records, path=path, usage=usage)


def text_table(result: ScoreResult) -> str:
    table = result.table
    if table.empty:
        return "no scored latents"
    wide = table.pivot_table(index="latent", columns="scorer", values="score", aggfunc="first")
    failed = table.groupby("latent")["n_failed"].sum().rename("n_failed")
    expl = table.groupby("latent")["explanation"].first().fillna("").str.slice(0, 60).rename("explanation")
    out = pd.concat([wide, failed, expl], axis=1)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60, "display.float_format", "{:.3f}".format):
        return out.to_string()


def histogram(values: list[float], bins: int = 10, lo: float = 0.0, hi: float = 1.0, width: int = 40) -> str:
    """A text histogram (the terminal has no plots)."""
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    top = max(counts.max(), 1)
    return "\n".join(f"{edges[i]:5.2f}-{edges[i + 1]:4.2f} | {'#' * int(round(width * c / top))} {c}" for i, c in enumerate(counts))


def text_report(result: ScoreResult) -> str:
    parts = [text_table(result), ""]
    table = result.table.dropna(subset=["score"])
    if not table.empty:
        summary = result.summary()
        with pd.option_context("display.float_format", "{:.3f}".format):
            parts += ["per scorer (mean score, 95% interval):", summary.to_string(index=False), ""]
        for scorer, group in table.groupby("scorer"):
            lo = -1.0 if scorer == "simulation" else 0.0
            parts += [f"{scorer} scores:", histogram(group["score"].tolist(), lo=lo), ""]
    if result.skipped:
        parts.append(f"skipped {len(result.skipped)} latents: " + "; ".join(f"{k}: {v}" for k, v in list(result.skipped.items())[:10]))
    total = (result.usage or {}).get("total")
    if total:
        parts.append(f"LLM usage: {total.get('requests')} requests, {total.get('prompt_tokens')} prompt + "
                     f"{total.get('completion_tokens')} completion tokens, {total.get('cache_hits')} cache hits, "
                     f"${total.get('cost', 0):.4f}")
    return "\n".join(parts)


def write_html(result: ScoreResult, path: str | Path, tokenizer: Any = None) -> Path:
    """One page: the summary, then per latent its explanation, scores and shown examples."""
    path = Path(path)
    rows = []
    for r in result.records:
        latent = r["latent"]
        if r.get("skipped"):
            rows.append(f"<tr><td>{latent}</td><td colspan=3><i>skipped: {html.escape(r['skipped'])}</i></td></tr>")
            continue
        expl = (r.get("explanation") or {})
        text = html.escape(expl.get("text") or f"(failed: {expl.get('error')})")
        scores = ", ".join(
            f"{name} {out['score']:.2f}" if out.get("score") is not None else f"{name} – ({html.escape(str(out.get('error')))})"
            for name, out in (r.get("scores") or {}).items()
        )
        failed = sum(out.get("n_failed", 0) for out in (r.get("scores") or {}).values())
        freq = r.get("stats", {}).get("frequency", 0.0)
        rows.append(f"<tr><td>{latent}</td><td>{text}</td><td>{scores}</td><td>{failed}</td><td>{freq:.4%}</td></tr>")
    summary = result.summary() if not result.table.dropna(subset=["score"]).empty else pd.DataFrame()
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>sae-lens-autointerp results</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}</style>
</head><body><h1>sae-lens-autointerp results</h1><p>{html.escape(str(result.path))}</p>
<h2>Per scorer</h2>{summary.to_html(index=False, float_format=lambda x: f"{x:.3f}") if not summary.empty else "<p>no scores</p>"}
<h2>Latents</h2><table><tr><th>latent</th><th>explanation</th><th>scores</th><th>failed answers</th><th>frequency</th></tr>
{''.join(rows)}</table></body></html>"""
    path.write_text(page, encoding="utf-8")
    return path
