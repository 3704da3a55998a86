"""Neuronpedia's explanation rows, both ways: a thin layer over ``sae_lens_autointerp.interchange``.

The rows follow Neuronpedia's ``Explanation`` table (``apps/webapp/prisma/schema.prisma`` in
hijohnnylin/neuronpedia) as its bulk datasets hold them
(``v1/<modelId>/<source>/explanations/batch-N.jsonl.gz``, 1,024 rows per batch, one JSON object per line;
download them from https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/index.html?prefix=v1/ — the old
``/api/explanation/export`` endpoint is gone and answers 400)::

    {"id": "k3x...", "modelId": "gpt2-small", "layer": "8-res-jb", "index": "17",
     "description": "closing brackets", "authorId": "clkht01d40000jv08hvalcvly",
     "typeName": null, "explanationModelName": "gpt-4o-mini"}

``layer`` is Neuronpedia's SAE id ("source"), ``index`` the latent as a string. ``typeName`` and
``explanationModelName`` are foreign keys there (``ExplanationType`` / ``ExplanationModelType``): a name must
be registered on the instance first. Extra fields (``embedding``, ``umap_x``, ...) are ignored on reading.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sae_lens_autointerp.errors import ConfigError
from sae_lens_autointerp.interchange import (
    NEURONPEDIA_DEFAULT_AUTHOR_ID,
    NeuronpediaFormatError,
    iter_neuronpedia,
    neuronpedia_rows,
    read_neuronpedia,
    split_neuronpedia_id,
    write_neuronpedia_file,
)
from sae_lens_autointerp.interchange import (
    to_neuronpedia as _to_bulk,
)
from sae_lens_autointerp.results import ScoreResult

FIELDS = ("id", "modelId", "layer", "index", "description", "authorId", "typeName", "explanationModelName")

__all__ = [
    "FIELDS",
    "ExportReport",
    "NeuronpediaFormatError",
    "export_explanations",
    "iter_neuronpedia",
    "load_results",
    "read_explanations",
    "split_neuronpedia_id",
    "to_neuronpedia",
]


@dataclass(frozen=True)
class ExportReport:
    path: Path  # the file written, or the explanations/ folder of a bulk export
    written: int
    skipped: dict[int, str]  # latent -> why it has no exported explanation


def _result(results: str | os.PathLike[str] | ScoreResult | Iterable[Mapping[str, Any]]) -> ScoreResult:
    if isinstance(results, ScoreResult):
        return results
    if isinstance(results, (str, os.PathLike)):
        from sae_lens_autointerp.report import load

        return load(results)
    return ScoreResult(records=[dict(r) for r in results])


def load_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a results.jsonl (or of the run folder holding it); the last record of a latent wins."""
    return list(_result(path).records)


def to_neuronpedia(
    records: ScoreResult | Iterable[Mapping[str, Any]],
    *,
    model_id: str,
    source: str,
    explanation_model: str | None = None,
    type_name: str | None = None,
    include_scores: bool = False,
    author_id: str = NEURONPEDIA_DEFAULT_AUTHOR_ID,
    unattributed: Literal["error", "skip"] = "error",
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Neuronpedia explanation rows and the latents left out with the reason
    (``sae_lens_autointerp.interchange.neuronpedia_rows``)."""
    return neuronpedia_rows(
        _result(records),
        model_id=model_id,
        source=source,
        author_id=author_id,
        type_name=type_name,
        explanation_model=explanation_model,
        unattributed=unattributed,
        include_scores=include_scores,
    )


def export_explanations(
    results: str | os.PathLike[str] | ScoreResult | Iterable[Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    source: str | None = None,
    neuronpedia_id: str | None = None,
    explanation_model: str | None = None,
    type_name: str | None = None,
    include_scores: bool = False,
    author_id: str = NEURONPEDIA_DEFAULT_AUTHOR_ID,
    unattributed: Literal["error", "skip"] = "error",
    overwrite: bool = False,
) -> ExportReport:
    """Write the explanations of a run (a results.jsonl, its folder, a ``ScoreResult`` or records) as
    Neuronpedia explanation rows. ``out`` ending in ``.json`` (an array), ``.jsonl`` or ``.jsonl.gz`` (one
    batch's shape) is one file; any other ``out`` is a folder that gets Neuronpedia's bulk layout
    ``<modelId>/<source>/explanations/batch-N.jsonl.gz``.

    Give ``neuronpedia_id="MODEL/SOURCE"`` (SAELens's ``sae.cfg.metadata.neuronpedia_id``) or both
    ``model_id`` and ``source``. ``explanation_model`` is the model that wrote the explanations (default: the
    run's LLM for the explanations an LLM wrote; an LLM-free explainer's need it named).
    """
    if neuronpedia_id:
        model_id, source = split_neuronpedia_id(neuronpedia_id)
    if not model_id or not source:
        raise ValueError("pass neuronpedia_id='MODEL/SOURCE' or both model_id= and source=")
    out = Path(out)
    bulk_layout = out.suffix == "" or out.is_dir()
    if not bulk_layout and not out.name.lower().endswith((".json", ".jsonl", ".jsonl.gz")):
        raise ConfigError(f"{out}: use a .json, .jsonl or .jsonl.gz file name, or a folder for the bulk layout")
    result = _result(results)
    if bulk_layout:
        bulk = _to_bulk(
            result,
            out,
            model_id=model_id,
            source=source,
            author_id=author_id,
            type_name=type_name,
            explanation_model=explanation_model,
            unattributed=unattributed,
            include_scores=include_scores,
            overwrite=overwrite,
        )
        return ExportReport(bulk.path.parent, bulk.written, bulk.skipped)
    rows, skipped = to_neuronpedia(
        result,
        model_id=model_id,
        source=source,
        explanation_model=explanation_model,
        type_name=type_name,
        include_scores=include_scores,
        author_id=author_id,
        unattributed=unattributed,
    )
    return ExportReport(write_neuronpedia_file(rows, out), len(rows), skipped)


def read_explanations(
    path: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    source: str | None = None,
    neuronpedia_id: str | None = None,
    type_name: str | None = None,
) -> dict[int, str]:
    """``{latent: description}`` from Neuronpedia explanation files, usable directly as
    ``sae.score(explanations=...)`` (``sae_lens_autointerp.interchange.read_neuronpedia``): one SAE
    (``neuronpedia_id`` or ``model_id`` / ``source`` when the files hold several), one ``type_name`` when a
    latent has explanations of several types."""
    return read_neuronpedia(path, neuronpedia_id, type_name, model_id=model_id, source=source)
