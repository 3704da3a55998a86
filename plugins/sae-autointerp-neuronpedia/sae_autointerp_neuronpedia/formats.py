"""Neuronpedia's explanation records, both ways.

Neuronpedia's explanation exports (``GET /api/explanation/export?modelId=..&saeId=..``, a JSON array) and
its bulk datasets (``v1/<modelId>/<saeId>/explanations/batch-N.jsonl.gz``, one JSON object per line) hold
one object per explanation::

    {"modelId": "gpt2-small", "layer": "8-res-jb", "index": "17", "description": "closing brackets",
     "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair", ...}

``layer`` is Neuronpedia's SAE id ("source"), ``index`` the latent as a string. Extra fields (``id``,
``authorId``, ``embedding``, ...) are ignored on reading. :func:`export_explanations` writes the same shape
from a results.jsonl (JSON array, JSONL, or gzipped JSONL by the file suffix).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TYPE_PREFIX = "sae-lens-autointerp"
FIELDS = ("modelId", "layer", "index", "description", "explanationModelName", "typeName")


class NeuronpediaFormatError(ValueError):
    """A file that is not in Neuronpedia's explanation format (says which file and line)."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    written: int
    skipped: dict[int, str]  # latent -> why it has no exported explanation


def split_neuronpedia_id(neuronpedia_id: str) -> tuple[str, str]:
    """``"gpt2-small/8-res-jb"`` (SAELens's ``sae.cfg.metadata.neuronpedia_id``) -> model id, source."""
    model_id, sep, source = str(neuronpedia_id).partition("/")
    if not sep or not model_id or not source:
        raise ValueError(
            f"a Neuronpedia id looks like 'MODEL/SOURCE' (e.g. 'gpt2-small/8-res-jb'), got {neuronpedia_id!r}"
        )
    return model_id, source


def load_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a results.jsonl (or of the run folder holding it); the last record of a latent wins."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (pass a results.jsonl or the run folder that holds it)")
    by_latent: dict[int, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if isinstance(record, dict) and "latent" in record:
                by_latent[int(record["latent"])] = record
    return [by_latent[k] for k in sorted(by_latent)]


def _llm_name(results_path: Path) -> str | None:
    run = (results_path if results_path.is_dir() else results_path.parent) / "run.json"
    try:
        name = json.loads(run.read_text()).get("llm")
    except (OSError, ValueError):
        return None
    if not name:
        return None
    backend, sep, model = str(name).partition(":")
    return model if sep and backend in ("openai", "vllm") else str(name)


def to_neuronpedia(
    records: Iterable[Mapping[str, Any]],
    *,
    model_id: str,
    source: str,
    explanation_model: str | None = None,
    type_name: str | None = None,
    include_scores: bool = False,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Neuronpedia explanation objects for every record with a (non-failed) explanation, and the latents left
    out with the reason. ``type_name`` defaults to ``"sae-lens-autointerp_<explainer>"``.

    ``include_scores`` adds a ``scores`` list (``[{"typeName": scorer, "value": score, "n_examples": ..,
    "n_failed": ..}]``): not part of Neuronpedia's schema, for your own tables; leave it off for an upload.
    """
    out, skipped = [], {}
    for record in records:
        latent = int(record["latent"])
        explanation = record.get("explanation")
        if record.get("skipped"):
            skipped[latent] = f"skipped: {record['skipped']}"
            continue
        if not explanation or explanation.get("failed") or not str(explanation.get("text") or "").strip():
            skipped[latent] = "no explanation" if not explanation else f"explanation failed: {explanation.get('error')}"
            continue
        item: dict[str, Any] = {
            "modelId": model_id,
            "layer": source,
            "index": str(latent),
            "description": str(explanation["text"]).strip(),
            "explanationModelName": explanation_model or "unknown",
            "typeName": type_name or f"{TYPE_PREFIX}_{explanation.get('explainer') or 'given'}",
        }
        if include_scores:
            item["scores"] = [
                {
                    "typeName": name,
                    "value": s.get("score"),
                    "n_examples": s.get("n_examples"),
                    "n_failed": s.get("n_failed"),
                }
                for name, s in sorted((record.get("scores") or {}).items())
                if s.get("score") is not None
            ]
        out.append(item)
    return out, skipped


def export_explanations(
    results: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    out: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    source: str | None = None,
    neuronpedia_id: str | None = None,
    explanation_model: str | None = None,
    type_name: str | None = None,
    include_scores: bool = False,
) -> ExportReport:
    """Write the explanations of a run (a results.jsonl, its folder, a ``ScoreResult`` or records) as
    Neuronpedia explanation objects: a JSON array for ``.json``, one object per line for ``.jsonl``, gzipped
    for ``.jsonl.gz`` (the layout of Neuronpedia's ``explanations/batch-N.jsonl.gz``).

    Give ``neuronpedia_id="MODEL/SOURCE"`` (SAELens's ``sae.cfg.metadata.neuronpedia_id``) or both
    ``model_id`` and ``source``. ``explanation_model`` defaults to the run's LLM (its run.json).
    """
    if neuronpedia_id:
        model_id, source = split_neuronpedia_id(neuronpedia_id)
    if not model_id or not source:
        raise ValueError("pass neuronpedia_id='MODEL/SOURCE' or both model_id= and source=")
    if isinstance(results, (str, os.PathLike)):
        explanation_model = explanation_model or _llm_name(Path(results))
        records: Iterable[Mapping[str, Any]] = load_results(results)
    else:
        records = getattr(results, "records", results)
        path = getattr(results, "path", None)
        if explanation_model is None and path is not None:
            explanation_model = _llm_name(Path(path))
    items, skipped = to_neuronpedia(
        records,
        model_id=model_id,
        source=source,
        explanation_model=explanation_model,
        type_name=type_name,
        include_scores=include_scores,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.name.lower()
    if name.endswith(".jsonl.gz"):
        with gzip.open(out, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(item) + "\n" for item in items)
    elif name.endswith(".jsonl"):
        out.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    elif name.endswith(".json"):
        out.write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    else:
        raise ValueError(f"{out}: use a .json, .jsonl or .jsonl.gz file name")
    return ExportReport(out, len(items), skipped)


def iter_neuronpedia(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Explanation objects from a Neuronpedia export: a ``.json`` array, ``.jsonl`` / ``.jsonl.gz`` lines, or a
    folder of those (e.g. a downloaded ``explanations/`` folder of ``batch-N.jsonl.gz``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith((".json", ".jsonl", ".jsonl.gz"))
        )
        if not files:
            raise FileNotFoundError(f"{path} holds no .json / .jsonl / .jsonl.gz files")
        for file in files:
            yield from iter_neuronpedia(file)
        return
    name = path.name.lower()
    if name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("explanations"), list):
            data = data["explanations"]
        if not isinstance(data, list):
            raise NeuronpediaFormatError(f"{path}: expected a JSON array of explanation objects")
        for i, item in enumerate(data):
            yield _check(item, path, i)
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise NeuronpediaFormatError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
                yield _check(item, path, lineno)


def _check(item: Any, path: Path, where: int) -> dict[str, Any]:
    if not isinstance(item, dict) or "index" not in item or "description" not in item:
        raise NeuronpediaFormatError(f"{path} (item {where}): an explanation object needs 'index' and 'description'")
    return item


def read_explanations(
    path: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    source: str | None = None,
    neuronpedia_id: str | None = None,
) -> dict[int, str]:
    """``{latent: description}`` from a Neuronpedia export, usable directly as ``sae.score(explanations=...)``.

    Filters on ``model_id`` / ``source`` (or ``neuronpedia_id``) when given; with several explanations for one
    latent the first in file order wins. Empty descriptions are left out. Raises when the file mixes several
    SAEs and no filter says which one is meant.
    """
    if neuronpedia_id:
        model_id, source = split_neuronpedia_id(neuronpedia_id)
    out: dict[int, str] = {}
    seen_saes: set[tuple[str, str]] = set()
    for item in iter_neuronpedia(path):
        sae_key = (str(item.get("modelId", "")), str(item.get("layer", "")))
        if model_id is not None and sae_key[0] != model_id or source is not None and sae_key[1] != source:
            continue
        seen_saes.add(sae_key)
        text = str(item.get("description") or "").strip()
        latent = int(item["index"])
        if text and latent not in out:
            out[latent] = text
    if len(seen_saes) > 1:
        listed = ", ".join(f"{m}/{s}" for m, s in sorted(seen_saes))
        raise ValueError(f"{path} holds explanations of several SAEs ({listed}); pass neuronpedia_id='MODEL/SOURCE'")
    return out
