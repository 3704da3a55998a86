"""Two SAEs in one call (:func:`similarity`); many SAEs as a matrix (:func:`similarity_matrix`) and its
:func:`heatmap`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import pandas as pd

from ..embedders import DEFAULT_EMBEDDER
from ..errors import ConfigError
from ..harvest.store import LatentStore
from .explanations import CrossScorer, EmbedderLike, ExplanationsLike, SimilarityResult, explanation_similarity
from .matching import Matching, Method, match_latents

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE


@dataclass(frozen=True, eq=False)
class PairSimilarity:
    """What :func:`similarity` returns: the latent matching and, with explanations, their similarity."""

    matching: Matching
    explanations: SimilarityResult | None = None

    def summary(self) -> dict[str, Any]:
        out = dict(self.matching.summary())
        if self.explanations is not None:
            out.update({f"explanation_{k}": v for k, v in self.explanations.to_dict().items()})
        return out


def similarity(
    sae_a: SAE | None,
    sae_b: SAE | None,
    explanations_a: ExplanationsLike | None = None,
    explanations_b: ExplanationsLike | None = None,
    *,
    embedder: EmbedderLike = DEFAULT_EMBEDDER,
    n_random_explanations: int = 2000,
    cross_score: CrossScorer | None = None,
    seed: int = 0,
    **match_kwargs: Any,
) -> PairSimilarity:
    """:func:`match_latents` (``match_kwargs``: ``method``, ``model``, ``dataset``, ``latents_a``, ...) and, when
    both explanation sets are given, :func:`explanation_similarity` on the matching."""
    if (explanations_a is None) != (explanations_b is None):
        raise ConfigError("pass explanations for both SAEs (explanations_a and explanations_b), or for neither")
    matching = match_latents(sae_a, sae_b, seed=seed, **match_kwargs)
    result = None
    if explanations_a is not None and explanations_b is not None:
        result = explanation_similarity(
            matching,
            explanations_a,
            explanations_b,
            embedder=embedder,
            n_random=n_random_explanations,
            seed=seed,
            cross_score=cross_score,
        )
    return PairSimilarity(matching, result)


Statistic: TypeAlias = Literal["matched", "random", "difference"]


def _labelled(items: Sequence[Any] | Mapping[str, Any], what: str) -> tuple[list[str], list[Any]]:
    if isinstance(items, Mapping):
        return [str(k) for k in items], list(items.values())
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ConfigError(f"{what} must be a list or a dict of SAEs, got {type(items).__name__}")
    values = list(items)
    hooks = [getattr(getattr(getattr(s, "cfg", None), "metadata", None), "hook_name", None) for s in values]
    if all(isinstance(h, str) and h for h in hooks) and len(set(hooks)) == len(hooks):
        return [str(h) for h in hooks], values
    return [str(i) for i in range(len(values))], values


def _aligned(items: Sequence[Any] | Mapping[str, Any] | None, labels: list[str], what: str) -> list[Any]:
    if items is None:
        return [None] * len(labels)
    if isinstance(items, Mapping):
        missing = [name for name in labels if name not in items]
        if missing:
            raise ConfigError(f"{what} has no entry for {missing}; give one per SAE, keyed like the SAEs")
        return [items[name] for name in labels]
    values = list(items)
    if len(values) != len(labels):
        raise ConfigError(f"{what} has {len(values)} entries for {len(labels)} SAEs; give one per SAE, in order")
    return values


def similarity_matrix(
    saes: Sequence[SAE] | Mapping[str, SAE],
    *,
    method: Method = "decoder",
    explanations: Sequence[ExplanationsLike] | Mapping[str, ExplanationsLike] | None = None,
    stores: Sequence[LatentStore | str | os.PathLike[str]] | Mapping[str, Any] | None = None,
    statistic: Statistic = "matched",
    adjacent_only: bool = False,
    embedder: EmbedderLike = DEFAULT_EMBEDDER,
    seed: int = 0,
    **match_kwargs: Any,
) -> pd.DataFrame:
    """A square DataFrame over ``saes`` (a list, e.g. adjacent layers, or ``{name: sae}``).

    Without ``explanations`` an entry is the latent similarity of the matching (``statistic="matched"``: mean
    over matched pairs; ``"random"``: the random-pair level; ``"difference"``: matched minus the matched null, a
    matching against random directions, since a maximising matching beats random pairs between unrelated SAEs;
    decoder method only); with
    ``explanations`` (one set per SAE, aligned with ``saes``) it is the explanation similarity of
    :func:`explanation_similarity` (the same three statistics). Both are symmetric, so each pair is computed
    once; the diagonal is 1 for ``"matched"`` (a latent matches itself with similarity 1, and its explanation
    is its own). ``adjacent_only`` computes only neighbours in the given order (the rest stays NaN).
    ``stores``: one store per SAE for ``method="activations"`` without a model. ``match_kwargs`` go to
    :func:`match_latents` (``model``, ``dataset``, ``n_tokens``, ``latents_a``, ...). Labels: the dict keys,
    else the hook names when they differ, else positions.
    """
    if statistic not in ("matched", "random", "difference"):
        raise ConfigError(f"statistic must be 'matched', 'random' or 'difference', got {statistic!r}")
    if statistic == "difference" and explanations is None and method != "decoder":
        raise ConfigError(
            "statistic='difference' of latents is matched minus the matched null (a matching against random "
            "directions), which only method='decoder' computes; use statistic='matched' and compare with a "
            "matching against a random SAE (sai.baselines.random_directions)"
        )
    labels, values = _labelled(saes, "saes")
    if len(values) < 2:
        raise ConfigError("similarity_matrix needs at least two SAEs")
    expl = _aligned(explanations, labels, "explanations")
    store_list = _aligned(stores, labels, "stores")
    n = len(values)
    matrix = np.full((n, n), np.nan)
    for i in range(n):
        if statistic == "matched":
            matrix[i, i] = 1.0
        for j in range(i + 1, n):
            if adjacent_only and j != i + 1:
                continue
            kwargs = dict(match_kwargs)
            if stores is not None:
                kwargs.update(store_a=store_list[i], store_b=store_list[j])
            matching = match_latents(values[i], values[j], method=method, seed=seed, **kwargs)
            if explanations is None:
                # a maximising matching beats random pairs between unrelated SAEs: the difference is to its null
                stats = {"matched": matching.mean, "random": matching.baseline_mean}
                stats["difference"] = stats["matched"] - matching.null_mean
                value = stats[statistic]
            else:
                result = explanation_similarity(matching, expl[i], expl[j], embedder=embedder, seed=seed)
                value = {"matched": result.matched, "random": result.random, "difference": result.difference}[
                    statistic
                ].value
            matrix[i, j] = matrix[j, i] = value
    frame = pd.DataFrame(matrix, index=labels, columns=labels)
    frame.attrs.update(
        method=method, statistic=statistic, value="explanation" if explanations is not None else "latent"
    )
    return frame


def heatmap(
    matrix: pd.DataFrame, *, title: str | None = None, zmin: float | None = None, zmax: float | None = None
) -> go.Figure:
    """A plotly heatmap of a :func:`similarity_matrix` (values printed in the cells)."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise ConfigError("heatmap() needs plotly: `pip install plotly`") from exc
    if not isinstance(matrix, pd.DataFrame):
        raise ConfigError(f"heatmap() takes the DataFrame from similarity_matrix(), got {type(matrix).__name__}")
    values = matrix.to_numpy(dtype=float)
    text = [["" if not np.isfinite(v) else f"{v:.2f}" for v in row] for row in values]
    if title is None:
        what = matrix.attrs.get("value", "latent")
        title = f"{what} similarity ({matrix.attrs.get('statistic', 'matched')}, {matrix.attrs.get('method', '')})"
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=[str(c) for c in matrix.columns],
            y=[str(i) for i in matrix.index],
            text=text,
            texttemplate="%{text}",
            zmin=zmin,
            zmax=zmax,
            colorscale="Viridis",
            colorbar={"title": "similarity"},
        )
    )
    fig.update_layout(title=title, yaxis={"autorange": "reversed"})
    return fig
