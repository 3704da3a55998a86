"""One latent's card: the HTML shared by the site's latent pages and ``result.show(latent)`` in a notebook.

A card is built from the latent's record (results.jsonl), the run's views (``vocab.json``, ``decoder.json``:
see :mod:`sae_lens_autointerp.lens`) and the activation store the run read (top and sampled examples, random
windows). Whatever is missing (a deleted store, a run from an older version) is named on the card, never
invented. Every value from results data is escaped; tokens are coloured by activation relative to the
latent's largest, with the value on hover.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..harvest.store import PAD_TOKEN
from ..results import ScoreResult, explanation_model_of, rows_of
from ..runviews import RunViews
from .values import count, fmt, fmt_count, number

log = logging.getLogger(__name__)
esc = html.escape

N_TEST = 40  # test examples per scorer (wrong answers first)


# ------------------------------------------------------------------------------------------------ rendering
def tokens_html(views: RunViews, tokens: list[int], acts: np.ndarray, peak: int | None, scale: float) -> str:
    """One example: each token a span, its background alpha the activation / ``scale``, its value on hover,
    the peak outlined. Padding and special tokens are left out (as the prompts leave them out)."""
    out = []
    scale = scale if scale > 0 else 1.0
    for i, tok in enumerate(tokens):
        if tok == PAD_TOKEN or tok in views.special:
            continue
        text = esc(views.piece(int(tok)).replace("\n", "↵"))
        a = float(acts[i]) if i < len(acts) else 0.0
        cls = ' class="pk"' if i == peak else ""
        if a > 0:
            alpha = min(a / scale, 1.0)
            out.append(f'<span{cls} style="--a:{alpha:.2f}" title="{a:.3g}">{text}</span>')
        else:
            out.append(f"<span{cls}>{text}</span>")
    return f'<div class="ex">{"".join(out)}</div>'


def _example_row(views: RunViews, ex: Any, scale: float, label: str = "") -> str:
    return (
        f'<div class="exrow"><span class="val">{esc(label)}{ex.value:.3g}</span>'
        f"{tokens_html(views, ex.tokens.tolist(), ex.activations, ex.peak_index, scale)}</div>"
    )


def _fmt(x: Any, digits: int = 3) -> str:
    return fmt(x, f".{digits}f")


def _figure_html(fig: Any, div_id: str, include_plotlyjs: bool | str) -> str:
    return str(
        fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, div_id=div_id, config={"displayModeBar": False})
    )


def latent_card(
    result: ScoreResult,
    latent: int,
    views: RunViews,
    *,
    link: Any = None,
    include_plotlyjs: bool | str = False,
) -> str:
    """The card of one latent as an HTML fragment. ``link(latent) -> href or None`` makes neighbours links."""
    from .plots import activation_histogram, score_bars

    # a latent that is not a number has no card (the results file's reader keeps no such record)
    records = {k: r for r in result.records if (k := count(r.get("latent"))) is not None}
    if latent not in records:
        known = sorted(records)
        raise ConfigError(
            f"latent {latent} is not in this result ({len(known)} latents: {known[:10]}{'...' if len(known) > 10 else ''})"
        )
    r = records[latent]
    stats = r.get("stats") or {}
    parts = [f'<section class="card" id="latent-{latent}"><h2>Latent {latent}</h2>']
    parts.append(
        f'<p class="meta">frequency {fmt(stats.get("frequency") or 0, ".4%")} · max activation '
        f"{_fmt(stats.get('max_activation'))} · firing examples {esc(str(stats.get('n_firing_examples', '–')))}"
        + (
            f' · <b class="flag">heuristic: {esc(str((r.get("heuristic") or {}).get("flag")))}</b>'
            if (r.get("heuristic") or {}).get("flag")
            else ""
        )
        + "</p>"
    )
    if r.get("skipped"):
        parts.append(f'<p class="warn">skipped: {esc(str(r["skipped"]))}</p></section>')
        return "".join(parts)
    expl = r.get("explanation") or {}
    provider = expl.get("provider") or {}
    writer = explanation_model_of(r, views.run) or "none (no LLM wrote it)"
    parts.append('<h3>Explanation</h3><blockquote class="expl">')
    parts.append(
        esc(str(expl.get("text")))
        if expl.get("text")
        else f'<span class="warn">failed: {esc(str(expl.get("error")))}</span>'
    )
    parts.append(
        f'</blockquote><p class="meta">explainer {esc(str(expl.get("explainer")))} '
        f"({esc(' '.join(str(provider.get(k, '')) for k in ('distribution', 'version')).strip())}) · model "
        f"{esc(str(writer))} · prompt {esc(str(expl.get('prompt_id')))} · attempts {esc(str(expl.get('n_attempts', '–')))}"
        f" · hold-out {esc(str(r.get('holdout') or '–'))}</p>"
    )
    # scores with interval, chance and control
    rows = [row for row in _score_rows(r)]
    if rows:
        parts.append("<h3>Scores</h3>")
        parts.append(_figure_html(score_bars(rows), f"scores-{latent}", include_plotlyjs))
        include_plotlyjs = False
        parts.append(
            "<table class='scores'><tr><th>scorer</th><th>metric</th><th>score [95%]</th><th>chance</th>"
            "<th>control [95%]</th><th>lift [95%]</th><th>examples</th><th>failed</th></tr>"
        )
        for row in rows:
            parts.append(
                f"<tr><td>{esc(str(row['scorer']))}</td><td>{esc(str(row['metric']))}</td>"
                f"<td>{_fmt(row['score'])} [{_fmt(row['low'])}, {_fmt(row['high'])}]</td><td>{_fmt(row['chance'])}</td>"
                f"<td>{_fmt(row['control'])} [{_fmt(row.get('control_low'))}, {_fmt(row.get('control_high'))}]</td>"
                f"<td>{_fmt(row['lift'])} [{_fmt(row['lift_low'])}, {_fmt(row['lift_high'])}]</td>"
                f"<td>{fmt_count(row['n_examples'])}</td><td>{fmt_count(row['n_failed'])}</td></tr>"
            )
            if row.get("error"):
                parts.append(f"<tr><td colspan=8 class='warn'>{esc(str(row['error']))}</td></tr>")
        parts.append("</table>")
    # examples
    ex = views.examples(latent)
    scale = number(stats.get("max_activation")) or (max((e.value for e in ex["top"]), default=1.0))
    if len(ex["sample"]):
        parts.append("<h3>Activation distribution</h3>")
        parts.append(
            _figure_html(activation_histogram(ex["sample"], ex["cuts"], scale), f"acts-{latent}", include_plotlyjs)
        )
        include_plotlyjs = False
        parts.append(
            f"<p class='meta'>a uniform sample of {len(ex['sample'])} firing examples' maxima; dotted lines: the "
            "quantile cuts the sampler draws explainer and test examples from</p>"
        )
    if ex["top"]:
        parts.append("<h3>Top examples</h3>" + "".join(_example_row(views, e, scale) for e in ex["top"]))
    for q, group in enumerate(ex["quantiles"]):
        if group:
            parts.append(f"<h4>Quantile {q + 1} (of {len(ex['quantiles'])}, strongest first)</h4>")
            parts.append("".join(_example_row(views, e, scale) for e in group))
    # test examples with the judge's answers
    for name, out in (r.get("scores") or {}).items():
        preds = [p for p in (out.get("predictions") or []) if "prediction" in p and "label" in p]
        if not preds:
            continue
        wrong = sorted(preds, key=lambda p: (p.get("prediction") == p.get("label"), not p.get("label")))
        n_wrong = sum(p.get("prediction") != p.get("label") for p in preds)
        parts.append(
            f"<h3>Test examples: {esc(str(name))}</h3><p class='meta'>{n_wrong} of {len(preds)} answered wrong "
            "(shown first); answer: the judge's yes / no, P: its probability of yes</p>"
        )
        for p in wrong[:N_TEST]:
            ok = p.get("prediction") == p.get("label")
            answer = "failed" if p.get("prediction") is None else ("yes" if p.get("prediction") else "no")
            label = "activating" if p.get("label") else "not activating"
            prob = f" · P={fmt(p['probability'], '.2f')}" if p.get("probability") is not None else ""
            token_id = count(p.get("token_id"))
            win = None if token_id is None else views.window(latent, token_id, ex["by_id"])
            body = (
                tokens_html(views, win[0], win[1], win[2], scale)
                if win is not None
                else "<div class='ex missing'>(window not in the store)</div>"
            )
            parts.append(
                f"<div class='exrow {'ok' if ok else 'wrong'}'><span class='val'>{'✓' if ok else '✗'} {label} · "
                f"answer {answer}{prob}</span>{body}</div>"
            )
    # steering
    for name, out in (r.get("scores") or {}).items():
        steered = [p for p in (out.get("predictions") or []) if "steered" in p]
        if steered:
            parts.append(f"<h3>Steered continuations ({esc(str(name))})</h3><table class='steer'>")
            parts.append("<tr><th>prompt</th><th>clean</th><th>steered</th><th>Δ log P(explanation)</th></tr>")
            for p in steered:
                parts.append(
                    f"<tr><td>{esc(str(p.get('prompt')))}</td><td>{esc(str(p.get('clean')))}</td>"
                    f"<td>{esc(str(p.get('steered')))}</td><td>{_fmt(p.get('diff'), 2)}</td></tr>"
                )
            parts.append("</table>")
    # decoder views
    dec = views.decoder.get(str(latent)) or {}
    if dec.get("promoted"):
        parts.append("<h3>Output tokens (decoder through the unembedding)</h3><div class='logits'>")
        for title, key in (("promotes", "promoted"), ("suppresses", "suppressed")):
            cells = "".join(
                f"<span class='tok'>{esc(views.piece(t).replace(chr(10), '↵'))}</span> <small>{fmt(v, '+.2f')}</small> "
                for t, v in _pairs(dec.get(key))
            )
            parts.append(f"<p><b>{title}</b>: {cells}</p>")
        parts.append("</div>")
    if dec.get("neighbours"):
        texts = {k: (x.get("explanation") or {}).get("text") for k, x in records.items()}
        items = []
        for other, cos in _pairs(dec["neighbours"]):
            href = link(other) if link is not None else None
            name = f"<a href='{esc(href)}'>{other}</a>" if href else str(other)
            extra = f" – {esc(str(texts[other]))[:80]}" if texts.get(other) else ""
            items.append(f"<li>{name} (cosine {fmt(cos, '.2f')}){extra}</li>")
        parts.append("<h3>Neighbouring latents (decoder cosine)</h3><ul class='nb'>" + "".join(items) + "</ul>")
    # usage
    usage = r.get("usage") or {}
    if usage:
        parts.append(
            "<h3>Usage</h3><table class='usage'><tr><th>stage</th><th>requests</th><th>tokens</th><th>cost</th></tr>"
        )
        for stage, u in usage.items() if isinstance(usage, dict) else ():
            if not isinstance(u, dict):
                continue
            parts.append(
                f"<tr><td>{esc(str(stage))}</td><td>{esc(str(u.get('requests', 0)))}</td>"
                f"<td>{esc(str(u.get('total_tokens', 0)))}</td><td>${fmt(u.get('cost') or 0, '.4f')}</td></tr>"
            )
        parts.append("</table>")
    for note in views.missing:
        parts.append(f"<p class='meta'>{esc(note)}</p>")
    parts.append("</section>")
    return "".join(parts)


def _pairs(items: Any) -> list[tuple[int, Any]]:
    """(token or latent, value) pairs of a decoder view, the malformed ones left out (decoder.json is a file)."""
    pairs = []
    for item in items if isinstance(items, list) else []:
        key = count(item[0]) if isinstance(item, (list, tuple)) and len(item) == 2 else None
        if key is not None:
            pairs.append((key, item[1]))
    return pairs


def _score_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    return rows_of([record])


def card_css() -> str:
    return (Path(__file__).resolve().parents[1] / "data" / "site" / "site.css").read_text(encoding="utf-8")


class LatentCard:
    """What ``result.show(latent)`` returns: Jupyter renders it (``_repr_html_``); ``str()`` is the HTML."""

    def __init__(self, result: ScoreResult, latent: int) -> None:
        self.latent = int(latent)
        self._html = latent_card(result, self.latent, RunViews.of(result), include_plotlyjs=True)

    def _repr_html_(self) -> str:
        return f"<div class='sai'><style>{card_css()}</style>{self._html}</div>"

    def __str__(self) -> str:
        return self._repr_html_()
