"""The report's figures, all plotly (the TransformerLens / SAELens convention; one stack for the site, the
notebook and ``result.plot()``). Each function takes plain tables and returns a ``plotly.graph_objects.Figure``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .values import number

SCORE_COLOUR = "#1f77b4"
CONTROL_COLOUR = "#ff7f0e"


def _figure() -> Any:
    import plotly.graph_objects as go

    return go.Figure()


def score_distributions(table: pd.DataFrame, summary: pd.DataFrame) -> Any:
    """Per scorer (one panel each) the histogram of latent scores, the controls' histogram overlaid, the chance
    level as a dashed line and the mean with its 95% interval as a shaded band."""
    from plotly.subplots import make_subplots

    scored = table.dropna(subset=["score"])
    scorers = sorted(scored["scorer"].unique()) or ["(no scores)"]
    cols = min(len(scorers), 3)
    rows = -(-len(scorers) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=scorers, horizontal_spacing=0.08, vertical_spacing=0.16)
    by_name = {str(r["scorer"]): r for r in summary.to_dict("records")} if not summary.empty else {}
    for i, scorer in enumerate(scorers):
        row, col = i // cols + 1, i % cols + 1
        group = scored[scored["scorer"] == scorer]
        bins = _bins(group)
        if bins is not None:
            fig.update_xaxes(range=[bins["start"], bins["end"]], row=row, col=col)
        fig.add_histogram(
            x=group["score"],
            name="score",
            marker_color=SCORE_COLOUR,
            opacity=0.75,
            xbins=bins,
            showlegend=i == 0,
            legendgroup="score",
            row=row,
            col=col,
        )
        controls = group["control"].dropna()
        if len(controls):
            fig.add_histogram(
                x=controls,
                name="control (another latent's explanation)",
                marker_color=CONTROL_COLOUR,
                opacity=0.55,
                xbins=bins,
                showlegend=i == 0,
                legendgroup="control",
                row=row,
                col=col,
            )
        s = by_name.get(scorer, {})
        if s.get("low") is not None and np.isfinite(s.get("low", np.nan)):
            fig.add_vrect(
                x0=s["low"], x1=s["high"], fillcolor=SCORE_COLOUR, opacity=0.15, line_width=0, row=row, col=col
            )
        if s.get("mean") is not None and np.isfinite(s.get("mean", np.nan)):
            fig.add_vline(x=s["mean"], line_color=SCORE_COLOUR, annotation_text="mean", row=row, col=col)
        if s.get("chance") is not None and np.isfinite(s.get("chance", np.nan)):
            fig.add_vline(
                x=s["chance"], line_dash="dash", line_color="#555", annotation_text="chance", row=row, col=col
            )
    fig.update_layout(
        barmode="overlay",
        height=300 * rows,
        margin={"t": 40, "b": 30, "l": 40, "r": 20},
        legend={"orientation": "h", "y": -0.12},
        title=None,
    )
    return fig


#: metrics on a fixed range get fixed bins (a run where every latent scores 0.5 is one thin bar, not 0 to 1)
BOUNDED = {"balanced_accuracy": (0.0, 1.0), "accuracy": (0.0, 1.0), "auc": (0.0, 1.0), "pearson": (-1.0, 1.0)}


def _bins(group: pd.DataFrame) -> dict[str, float] | None:
    metrics = set(group["metric"].dropna())
    if len(metrics) == 1 and next(iter(metrics)) in BOUNDED:
        lo, hi = BOUNDED[next(iter(metrics))]
        return {"start": lo, "end": hi + 1e-9, "size": (hi - lo) / 20}
    return None


def spearman_matrix(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Spearman correlation between scorers over the latents both scored, the number of such latents)."""
    wide = table.pivot_table(index="latent", columns="scorer", values="score", aggfunc="first")
    names = list(wide.columns)
    corr = pd.DataFrame(np.nan, index=names, columns=names)
    count = pd.DataFrame(0, index=names, columns=names)
    for a in names:
        for b in names:
            both = wide[[a, b]].dropna() if a != b else wide[[a]].dropna()
            count.loc[a, b] = len(both)
            if a == b:
                corr.loc[a, b] = 1.0 if len(both) else np.nan
            elif len(both) >= 3 and both[a].nunique() > 1 and both[b].nunique() > 1:
                corr.loc[a, b] = float(both[a].rank().corr(both[b].rank()))
    return corr, count


def agreement_heatmap(table: pd.DataFrame) -> Any:
    """The scorer-agreement matrix (Spearman over latents, as in Paulo et al.'s "how do the methods correlate"),
    each cell labelled with its correlation and the number of latents it rests on."""
    corr, count = spearman_matrix(table)
    fig = _figure()
    text = [
        [
            f"{corr.iloc[i, j]:.2f}<br>n={count.iloc[i, j]}"
            if np.isfinite(corr.iloc[i, j])
            else f"–<br>n={count.iloc[i, j]}"
            for j in range(len(corr))
        ]
        for i in range(len(corr))
    ]
    fig.add_heatmap(
        z=corr.to_numpy(dtype=float),
        x=list(corr.columns),
        y=list(corr.index),
        zmin=-1,
        zmax=1,
        colorscale="RdBu",
        text=text,
        texttemplate="%{text}",
        hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
    )
    fig.update_layout(
        height=120 + 50 * len(corr), margin={"t": 30, "b": 30, "l": 90, "r": 20}, yaxis_autorange="reversed"
    )
    return fig


def score_bars(rows: list[dict[str, Any]]) -> Any:
    """One latent's scores: per scorer a bar with its 95% interval, the control's bar beside it and the
    chance level as a marker."""
    fig = _figure()
    names = [str(r["scorer"]) for r in rows]

    def bars(key: str, low: str, high: str, label: str, colour: str) -> None:
        values = np.array([_num(r.get(key)) for r in rows])
        fig.add_bar(
            y=names,
            x=values,
            orientation="h",
            name=label,
            marker_color=colour,
            error_x={
                "type": "data",
                "symmetric": False,
                "array": np.nan_to_num(np.array([_num(r.get(high)) for r in rows]) - values),
                "arrayminus": np.nan_to_num(values - np.array([_num(r.get(low)) for r in rows])),
            },
        )

    bars("score", "low", "high", "score", SCORE_COLOUR)
    bars("control", "control_low", "control_high", "control", CONTROL_COLOUR)
    fig.add_scatter(
        y=names,
        x=[_num(r.get("chance")) for r in rows],
        mode="markers",
        marker={"symbol": "line-ns", "size": 22, "line": {"width": 3, "color": "#333"}},
        name="chance",
    )
    fig.update_layout(barmode="group", height=90 + 60 * len(rows), margin={"t": 20, "b": 30, "l": 110, "r": 20})
    return fig


def activation_histogram(values: np.ndarray, cuts: list[float], max_activation: float) -> Any:
    """The firing examples' maxima (the harvest's uniform sample of them) with the quantile cuts the sampler
    used marked, and the largest activation seen."""
    fig = _figure()
    fig.add_histogram(x=values, nbinsx=30, marker_color=SCORE_COLOUR, name="firing examples")
    for i, cut in enumerate(cuts):
        fig.add_vline(
            x=cut, line_dash="dot", line_color="#888", annotation_text=f"q{i + 1}" if len(cuts) <= 12 else None
        )
    fig.add_vline(x=max_activation, line_color="#c00", annotation_text="max")
    fig.update_layout(
        height=240,
        margin={"t": 20, "b": 30, "l": 40, "r": 20},
        xaxis_title="activation (example maximum)",
        yaxis_title="examples",
        showlegend=False,
    )
    return fig


def _num(x: Any) -> float:
    """A record's number for a figure, NaN (no bar) when it is not one."""
    v = number(x)
    return float("nan") if v is None else v
