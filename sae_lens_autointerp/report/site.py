"""The static site of one run: ``sae-autointerp report RUN --html OUT`` and ``result.to_html(OUT)``.

Layout (opens from disk, no server, no network: plotly.js and the styles are shipped in the package)::

    OUT/index.html                    run settings and costs, judge check, per-scorer summary, score
                                      distributions with controls and chance, scorer agreement, a scatter of
                                      any two scorers, and the table of latents (sort, filter, search, pages)
    OUT/assets/                       plotly.min.js, site.css, index.js (copied once)
    OUT/latents/<NNN>/<latent>.html   one page per latent (the card of report/card.py), 1,000 per folder

The index holds one JSON row per latent and renders 100 table rows at a time, so 100,000 latents stay
one page. Latent pages are written one at a time (constant memory); ``pages=`` limits which latents get one.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError
from ..harvest.store import LatentStore
from ..numeric import json_default
from ..results import ScoreResult
from ..runviews import RunViews
from .card import latent_card
from .values import count, fmt, fmt_count, number

esc = html.escape
ASSETS = ("site.css", "index.js")
SHARD = 1000


def latent_href(latent: int) -> str:
    """A latent page's path relative to the site's root."""
    return f"latents/{latent // SHARD:03d}/{latent}.html"


def _static(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "site" / name


def _plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ConfigError(f"plotly.min.js is missing from {path.parent}; reinstall plotly (pip install -U plotly)")
    return path


def _json_for_script(data: Any) -> str:
    """JSON safe inside a <script> element: no "</script>", no HTML comment openers."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=json_default)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def index_rows(result: ScoreResult, pages: set[int] | None) -> list[dict[str, Any]]:
    """One row per latent for the index table: latent, explanation, frequency, failures, per-scorer score and
    control, flags (skipped, incomplete, failed answers, heuristic, signal per scorer, a judge that gave the
    same answer to every example) and the page link."""
    table = result.table
    # the lift's interval above 0: the explanation beats another latent's on the same examples
    signal: dict[int, list[str]] = {}
    for latent, scorer in table.loc[table["signal"] == True, ["latent", "scorer"]].itertuples(index=False):  # noqa: E712
        key = count(latent)
        if key is not None:
            signal.setdefault(key, []).append(f"signal: {scorer}")
    rows = []
    for r in result.records:
        latent = count(r.get("latent"))
        if latent is None:  # the results file's reader keeps no such record; a list passed in may hold one
            continue
        stats = r.get("stats") or {}
        flags: list[str] = []
        scores: dict[str, float | None] = {}
        controls: dict[str, float | None] = {}
        n_failed = 0
        if r.get("skipped"):
            flags.append("skipped")
            text = f"(skipped: {r['skipped']})"
        else:
            expl = r.get("explanation") or {}
            text = str(expl.get("text") or f"(failed: {expl.get('error')})")
            if expl.get("failed"):
                flags.append("explanation failed")
            for name, out in (r.get("scores") or {}).items():
                scores[str(name)] = number(out.get("score"))
                ctl = (r.get("controls") or {}).get(name) or {}
                controls[str(name)] = number(ctl.get("score"))
                n_failed += count(out.get("n_failed")) or 0
                answers = {p.get("prediction") for p in out.get("predictions") or [] if "prediction" in p}
                if len(out.get("predictions") or []) >= 4 and len(answers) == 1:
                    flags.append(f"same answer: {name}")
            heuristic = (r.get("heuristic") or {}).get("flag")
            if heuristic:
                flags.append(f"heuristic: {heuristic}")
        if n_failed:
            flags.append("failed answers")
        flags += signal.get(latent, [])
        rows.append(
            {
                "l": latent,
                "e": text,
                "f": number(stats.get("frequency")),
                "n": n_failed,
                "s": scores,
                "c": controls,
                "g": flags,
                "h": latent_href(latent) if pages is None or latent in pages else None,
            }
        )
    for latent, why in sorted(result.incomplete.items()):
        rows.append(
            {
                "l": latent,
                "e": f"(incomplete: {why})",
                "f": None,
                "n": 0,
                "s": {},
                "c": {},
                "g": ["incomplete"],
                "h": None,
            }
        )
    return rows


def _settings(result: ScoreResult, views: RunViews) -> str:
    run = views.run
    cfg = run.get("config") or {}
    sampling = run.get("sampling") or cfg.get("sampling") or {}
    items = [
        ("results", str(result.path)),
        ("explainer", run.get("explainer")),
        ("scorers", ", ".join(run.get("scorers") or [])),
        ("LLM", (run.get("llm_identity") or {}).get("served_by") or run.get("llm")),
        ("seed", run.get("seed")),
        ("store", run.get("store")),
        ("sampling", ", ".join(f"{k}={v}" for k, v in sampling.items())),
        ("controls", run.get("controls")),
        ("version", run.get("version")),
    ]
    if views.store is not None:
        s = views.store.summary()
        items.append(
            (
                "harvest",
                f"{s['n_tokens']:,} tokens, d_sae={s['d_sae']}, {s['dead_latents']} dead, mean L0 {s['mean_l0']:.1f}",
            )
        )
    total = (result.usage or {}).get("total") or {}
    if total:
        items.append(
            (
                "cost",
                f"{fmt_count(total.get('requests'))} requests"
                + "".join(f", {fmt_count(total.get(k))} {k}" for k in ("attempts", "retries", "failures") if k in total)
                + f", {fmt_count(total.get('prompt_tokens'))} prompt + {fmt_count(total.get('completion_tokens'))} "
                f"completion tokens, {fmt_count(total.get('cache_hits'))} cache hits, ${fmt(total.get('cost') or 0, '.4f')}",
            )
        )
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in items if v not in (None, ""))
    return f"<table class='settings'>{body}</table>"


def _page(title: str, root: str, body: str, scripts: Iterable[str] = ()) -> str:
    tags = "".join(f"<script src='{root}assets/{name}'></script>" for name in scripts)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><link rel='stylesheet' href='{root}assets/site.css'>"
        f"<script src='{root}assets/plotly.min.js'></script></head><body>{body}{tags}</body></html>"
    )


def write_site(
    result: ScoreResult,
    out: str | os.PathLike[str],
    *,
    store: LatentStore | None = None,
    pages: Iterable[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the site of ``result`` and return its index page. ``out``: a folder (index.html inside it) or a
    path ending in ``.html`` (the index; assets and latent pages beside it). ``store``: the activation store
    (default: the one named in the run's run.json). ``pages``: the latents that get a page (default all)."""
    from .plots import agreement_heatmap, score_distributions

    out = Path(out)
    index = out if out.suffix == ".html" else out / "index.html"
    root = index.parent
    if out.suffix == ".html" and not root.is_dir():
        raise ConfigError(f"cannot write {index}: the folder {root} does not exist (create it first)")
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    views = RunViews.of(result, store)
    wanted = None if pages is None else {int(i) for i in pages}  # the caller's latents (the CLI parsed them)
    assets = root / "assets"
    assets.mkdir(exist_ok=True)
    plotly_js = _plotly_js()
    target = assets / "plotly.min.js"
    if not target.is_file() or target.stat().st_size != plotly_js.stat().st_size:
        shutil.copyfile(plotly_js, target)
    for name in ASSETS:
        shutil.copyfile(_static(name), assets / name)

    # latent pages, one at a time
    by_latent = {latent for r in result.records if (latent := count(r.get("latent"))) is not None}
    paged = sorted(by_latent if wanted is None else by_latent & wanted)

    def link(other: int) -> str | None:
        known = other in by_latent and (wanted is None or other in wanted)
        return f"../../{latent_href(other)}" if known else None

    for i, latent in enumerate(paged):
        path = root / latent_href(latent)
        path.parent.mkdir(parents=True, exist_ok=True)
        card = latent_card(result, latent, views, link=link)
        nav = f"<nav><a href='../../{esc(index.name)}'>← all latents</a></nav>"
        path.write_text(_page(f"latent {latent}", "../../", nav + card), encoding="utf-8")
        if progress is not None:
            progress(i + 1, len(paged))

    table, summary = result.table, result.summary()
    verdict = "".join(f"<li>{esc(line)}</li>" for line in result.verdict())
    summary_html = (
        summary.drop(columns=["judge_check"]).to_html(
            index=False, float_format=lambda x: f"{x:.3f}", escape=True, classes="summary", na_rep="–"
        )
        if not summary.empty
        else "<p>no scores</p>"
    )
    figures = ""
    if not table.dropna(subset=["score"]).empty:
        figures += "<h2>Score distributions</h2><p class='meta'>blue: the latents' scores; orange: the control (another latent's explanation on the same examples); dashed: chance; shaded: the mean's 95% interval</p>"
        figures += score_distributions(table, summary).to_html(
            full_html=False, include_plotlyjs=False, div_id="dist", config={"displayModeBar": False}
        )
        if table["scorer"].nunique() > 1:
            figures += "<h2>Scorer agreement</h2><p class='meta'>Spearman correlation between scorers over the latents both scored</p>"
            figures += agreement_heatmap(table).to_html(
                full_html=False, include_plotlyjs=False, div_id="agree", config={"displayModeBar": False}
            )
            figures += (
                "<div class='scatter'><label>x <select id='sx'></select></label> <label>y <select id='sy'></select>"
                "</label><div id='scatter'></div></div>"
            )
    incomplete = (
        f"<p class='warn'>{len(result.incomplete)} latents are incomplete (run the same command again to finish them)</p>"
        if result.incomplete
        else ""
    )
    missing = "".join(f"<p class='meta'>{esc(note)}</p>" for note in views.missing)
    # never presented as held out: explanations whose explainer's examples are unknown or of another corpus
    loose = table.drop_duplicates("latent")["holdout"].dropna().value_counts().drop("held out", errors="ignore")
    if len(loose):
        counts = ", ".join(f"{n} {k}" for k, n in sorted(loose.items()))
        incomplete += (
            f"<p class='warn'>not held out: {esc(counts)} (what their explainer was shown was not recorded or is of "
            "another corpus, so their test may include it)</p>"
        )
    rows = index_rows(result, wanted)
    scorers = sorted({s for row in rows for s in row["s"]})
    body = (
        f"<header><h1>sae-lens-autointerp: {len(result.records)} latents</h1>"
        f"<p class='meta'>written by sae-lens-autointerp {esc(__version__)} in {time.perf_counter() - start:.1f} s</p></header>"
        f"<h2>Run</h2>{_settings(result, views)}{missing}"
        f"<h2>Judge check</h2><ul class='verdict'>{verdict or '<li>no scorer with a control in this run</li>'}</ul>{incomplete}"
        f"<h2>Per scorer</h2><p class='meta'>mean score with its 95% interval and chance; control = another latent's explanation on the same examples; lift = score − control</p><div class='wide'>{summary_html}</div>"
        f"{figures}"
        "<h2>Latents</h2><div class='controls'><input id='q' type='search' placeholder='search explanations or a latent number'>"
        "<select id='flag'><option value=''>all latents</option></select>"
        "<select id='col'></select><input id='lo' type='number' step='any' placeholder='min'>"
        "<input id='hi' type='number' step='any' placeholder='max'> <span id='count'></span></div>"
        "<table id='latents'><thead></thead><tbody></tbody></table>"
        "<div class='pager'><button id='prev'>← previous</button> <span id='pageinfo'></span> <button id='next'>next →</button></div>"
        f"<script id='data' type='application/json'>{_json_for_script({'rows': rows, 'scorers': scorers})}</script>"
    )
    index.write_text(_page("sae-lens-autointerp results", "", body, scripts=["index.js"]), encoding="utf-8")
    return index
