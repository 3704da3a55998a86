"""Interchange with the peers' file formats: SAEBench's autointerp output JSON, Neuronpedia's explanation
rows and delphi's per-latent explanation / score files (export), and explanations read back from delphi and
Neuronpedia files so our scorers can score them (import).

Exports take a :class:`~sae_lens_autointerp.results.ScoreResult` (``report.load(run_dir)``, ``sae.score(...)``)
and write only what the run recorded; what a format wants and a run does not hold is left out and said so
(docs/interchange.md). Imports return ``{latent: text}``, ready for ``sae.score(..., explanations=...)``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ._version import __version__
from .errors import ConfigError
from .results import ScoreResult, explanation_model_of
from .runviews import RunViews

log = logging.getLogger("sae_lens_autointerp")

__all__ = [
    "DELPHI_SCORERS",
    "NEURONPEDIA_BATCH_SIZE",
    "NEURONPEDIA_DATASETS_URL",
    "NEURONPEDIA_DEFAULT_AUTHOR_ID",
    "Export",
    "NeuronpediaFormatError",
    "explanation_model_of",
    "iter_neuronpedia",
    "neuronpedia_cuid",
    "neuronpedia_rows",
    "read_delphi_explanations",
    "read_neuronpedia",
    "split_neuronpedia_id",
    "to_delphi",
    "to_neuronpedia",
    "to_saebench",
    "write_neuronpedia_file",
]


@dataclass(frozen=True)
class Export:
    """What an export wrote: the files, how many latents, and the latents left out with the reason."""

    paths: list[Path]
    written: int
    skipped: dict[int, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The first file written (the only one for single-file exports)."""
        return self.paths[0]


def _records(result: ScoreResult | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    records = getattr(result, "records", result)
    if isinstance(records, (str, bytes, os.PathLike)) or not isinstance(records, Iterable):
        raise ConfigError(
            f"expected a ScoreResult (report.load(run_dir)) or its records, got {type(result).__name__}; "
            "load a run folder with sae_lens_autointerp.report.load(path)"
        )
    return sorted((r for r in records if "latent" in r), key=lambda r: int(r["latent"]))


def _run_info(result: Any) -> dict[str, Any]:
    """The run.json beside the result's results.jsonl ({} when there is none)."""
    path = getattr(result, "path", None)
    if path is None:
        return {}
    path = Path(path)
    run_file = (path if path.is_dir() else path.parent) / "run.json"
    try:
        data = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _usable(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(explanation text, None) or (None, why the latent has no usable explanation)."""
    if record.get("skipped"):
        return None, f"skipped: {record['skipped']}"
    if record.get("incomplete"):
        return None, "incomplete: run it again to finish it"
    explanation = record.get("explanation")
    if not explanation:
        return None, "no explanation"
    if explanation.get("failed"):
        return None, f"explanation failed: {explanation.get('error')}"
    text = str(explanation.get("text") or "").strip()
    if not text:
        return None, "empty explanation"
    return text, None


# ---------------------------------------------------------------------------------------------- Neuronpedia

#: Rows per ``explanations/batch-N.jsonl.gz`` in Neuronpedia's bulk datasets
#: (``FEATURES_EXPLANATIONS_BATCH_SIZE`` in its ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py``).
NEURONPEDIA_BATCH_SIZE = 1024
#: The "bot" user that Neuronpedia's ``prisma/seed.ts`` creates on every instance; its own export and
#: batch-autointerp scripts write it as ``authorId`` unless ``DEFAULT_CREATOR_ID`` says otherwise.
NEURONPEDIA_DEFAULT_AUTHOR_ID = "clkht01d40000jv08hvalcvly"
#: Where Neuronpedia's explanations are downloaded now (``/api/explanation/export`` answers 400 and points here).
NEURONPEDIA_DATASETS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com/index.html?prefix=v1/"

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class NeuronpediaFormatError(ConfigError):
    """A file that is not in Neuronpedia's explanation format (says which file and line)."""


def split_neuronpedia_id(neuronpedia_id: str) -> tuple[str, str]:
    """``"gpt2-small/8-res-jb"`` (SAELens's ``sae.cfg.metadata.neuronpedia_id``) -> (model id, source)."""
    model_id, sep, source = str(neuronpedia_id).partition("/")
    if not sep or not model_id or not source or "/" in source:
        raise ConfigError(
            f"a Neuronpedia id looks like 'MODEL/SOURCE' (e.g. 'gpt2-small/8-res-jb'), got {neuronpedia_id!r}"
        )
    return model_id, source


def neuronpedia_cuid(*parts: str) -> str:
    """A cuid2-shaped id (25 characters: a lowercase letter, then 24 of ``[0-9a-z]``), as Neuronpedia's
    ``Cuid(length=25)`` makes, but deterministic: a hash of ``parts``. The same row exported twice gets the
    same id, so importing an export again adds nothing (Neuronpedia's importer inserts ON CONFLICT DO NOTHING)."""
    digest = int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest(), "big")
    first, digest = _BASE36[10 + digest % 26], digest // 26
    rest = []
    for _ in range(24):
        digest, r = divmod(digest, 36)
        rest.append(_BASE36[r])
    return first + "".join(rest)


def neuronpedia_rows(
    result: ScoreResult | Iterable[Mapping[str, Any]],
    *,
    model_id: str,
    source: str,
    author_id: str = NEURONPEDIA_DEFAULT_AUTHOR_ID,
    type_name: str | None = None,
    explanation_model: str | None = None,
    unattributed: Literal["error", "skip"] = "error",
    include_scores: bool = False,
    run: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Neuronpedia ``Explanation`` rows for every latent with a usable explanation, and the latents left out
    with the reason. Every row has the same keys (Neuronpedia's importer takes its columns from the first
    line): ``id``, ``modelId``, ``layer`` (the source), ``index`` (a string), ``description``, ``authorId``,
    ``typeName``, ``explanationModelName``.

    ``type_name`` and ``explanation_model`` are foreign keys on Neuronpedia (``ExplanationType``,
    ``ExplanationModelType``): a name must exist on the instance you import into. ``type_name=None`` writes
    null (allowed; none of Neuronpedia's types describes this package's explainers). ``explanation_model``
    names the model that wrote every exported explanation; without it each row gets the LLM the run used
    to write it (:func:`explanation_model_of`), and an explanation that no LLM wrote is refused
    (``unattributed="error"``) or left out (``"skip"``). ``include_scores`` adds a ``scores`` list (not a
    Neuronpedia column: its importer drops it) for your own tables. ``run`` is the run.json (read from the
    result's folder when not given).
    """
    if not model_id or not source:
        raise ConfigError("pass neuronpedia_id='MODEL/SOURCE' or both model_id= and source=")
    if not isinstance(author_id, str) or not author_id.strip():
        raise ConfigError(
            "author_id must be the id of a User on the Neuronpedia instance (authorId is required); the default "
            f"{NEURONPEDIA_DEFAULT_AUTHOR_ID!r} is the bot user every instance seeds"
        )
    if unattributed not in ("error", "skip"):
        raise ConfigError(f"unattributed must be 'error' or 'skip', got {unattributed!r}")
    run = _run_info(result) if run is None else run
    run_key = str(run.get("run_key") or getattr(result, "run_key", None) or "")
    rows, skipped, unnamed = [], {}, []
    for record in _records(result):
        latent = int(record["latent"])
        text, why = _usable(record)
        if text is None:
            skipped[latent] = str(why)
            continue
        writer = explanation_model or explanation_model_of(record, run)
        if not writer:
            if unattributed == "skip":
                skipped[latent] = "no model wrote this explanation (pass explanation_model= to name one)"
            else:
                unnamed.append(latent)
            continue
        row: dict[str, Any] = {
            "id": neuronpedia_cuid(run_key, model_id, source, str(latent), str(type_name), text),
            "modelId": model_id,
            "layer": source,
            "index": str(latent),
            "description": text,
            "authorId": author_id,
            "typeName": type_name,
            "explanationModelName": writer,
        }
        if include_scores:
            row["scores"] = [
                {
                    "typeName": name,
                    "value": s.get("score"),
                    "n_examples": s.get("n_examples"),
                    "n_failed": s.get("n_failed"),
                }
                for name, s in sorted((record.get("scores") or {}).items())
                if s.get("score") is not None
            ]
        rows.append(row)
    if unnamed:
        shown = ", ".join(map(str, unnamed[:10])) + (", ..." if len(unnamed) > 10 else "")
        explainer = run.get("explainer") or "this run's explainer"
        raise ConfigError(
            f"no LLM wrote the explanations of {len(unnamed)} latent(s) ({shown}; explainer {explainer!r}), and "
            "Neuronpedia's explanationModelName must name the model that wrote them; pass explanation_model= "
            "with a name registered on Neuronpedia (an ExplanationModelType), or unattributed='skip' to leave "
            "them out"
        )
    return rows, skipped


def _sae_source(result: Any) -> dict[str, Any]:
    """What run.json records of the SAE's origin (``sae_source``: release, SAE id, Neuronpedia id, model)."""
    source = _run_info(result).get("sae_source")
    return source if isinstance(source, dict) else {}


def _neuronpedia_ids(
    neuronpedia_id: str | None, model_id: str | None, source: str | None, result: Any = None
) -> tuple[str, str]:
    """The Neuronpedia model id and source: given, or the run's SAE's ``neuronpedia_id`` (run.json)."""
    if not neuronpedia_id and not (model_id or source):
        neuronpedia_id = _sae_source(result).get("neuronpedia_id")
    if neuronpedia_id:
        return split_neuronpedia_id(neuronpedia_id)
    if not model_id or not source:
        raise ConfigError(
            "pass neuronpedia_id='MODEL/SOURCE' (sae.cfg.metadata.neuronpedia_id, e.g. 'gpt2-small/8-res-jb') "
            "or both model_id= and source=; the run's SAE records no neuronpedia_id"
        )
    return model_id, source


def to_neuronpedia(
    result: ScoreResult,
    folder: str | os.PathLike[str],
    *,
    neuronpedia_id: str | None = None,
    model_id: str | None = None,
    source: str | None = None,
    author_id: str = NEURONPEDIA_DEFAULT_AUTHOR_ID,
    type_name: str | None = None,
    explanation_model: str | None = None,
    unattributed: Literal["error", "skip"] = "error",
    include_scores: bool = False,
    overwrite: bool = False,
) -> Export:
    """Write a run's explanations in Neuronpedia's bulk-dataset layout:
    ``folder/<modelId>/<source>/explanations/batch-N.jsonl.gz``, :data:`NEURONPEDIA_BATCH_SIZE` rows per
    batch in latent order (the layout its importer reads). See :func:`neuronpedia_rows` for the fields and
    arguments. Existing batch files are refused unless ``overwrite`` (then they are replaced)."""
    model_id, source = _neuronpedia_ids(neuronpedia_id, model_id, source, result)
    rows, skipped = neuronpedia_rows(
        result,
        model_id=model_id,
        source=source,
        author_id=author_id,
        type_name=type_name,
        explanation_model=explanation_model,
        unattributed=unattributed,
        include_scores=include_scores,
    )
    if not rows:
        raise ConfigError(f"no latent of this run has an explanation to export ({len(skipped)} left out)")
    out = Path(folder) / model_id / source / "explanations"
    old = sorted(out.glob("batch-*.jsonl*")) if out.is_dir() else []
    if old and not overwrite:
        raise ConfigError(f"{out} already holds {len(old)} batch file(s); pass overwrite=True to replace them")
    for path in old:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, start in enumerate(range(0, len(rows), NEURONPEDIA_BATCH_SIZE)):
        path = out / f"batch-{n}.jsonl.gz"
        _write_jsonl(path, rows[start : start + NEURONPEDIA_BATCH_SIZE])
        paths.append(path)
    return Export(paths=paths, written=len(rows), skipped=skipped)


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".gz"):
        tmp.write_bytes(gzip.compress(text.encode("utf-8"), compresslevel=5, mtime=0))
    else:
        tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_neuronpedia_file(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Rows in one file: a JSON array for ``.json``, one object per line for ``.jsonl``, gzipped for
    ``.jsonl.gz`` (the shape of one bulk batch)."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".json", ".jsonl", ".jsonl.gz")):
        raise ConfigError(
            f"{path}: the output is a .json, .jsonl or .jsonl.gz file (or a folder: use to_neuronpedia for the "
            "bulk layout)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".json"):
        path.write_text(json.dumps(rows, indent=1, ensure_ascii=False, allow_nan=False), encoding="utf-8")
    else:
        _write_jsonl(path, rows)
    return path


def iter_neuronpedia(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Explanation objects from a Neuronpedia file (a JSON array, JSONL, gzipped JSONL) or a folder of them
    (a downloaded bulk dataset: ``<model>/<source>/explanations/batch-N.jsonl.gz``, searched recursively)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith((".json", ".jsonl", ".jsonl.gz"))),
            key=_natural_key,
        )
        if not files:
            raise ConfigError(
                f"{path} holds no .json / .jsonl / .jsonl.gz files (download from {NEURONPEDIA_DATASETS_URL})"
            )
        for file in files:
            yield from iter_neuronpedia(file)
        return
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist (a Neuronpedia explanations file or folder, from {NEURONPEDIA_DATASETS_URL})"
        )
    name = path.name.lower()
    if name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise NeuronpediaFormatError(f"{path}: not JSON ({exc})") from exc
        if isinstance(data, dict) and isinstance(data.get("explanations"), list):
            data = data["explanations"]
        if not isinstance(data, list):
            raise NeuronpediaFormatError(f"{path}: expected a JSON array of explanation objects")
        for i, item in enumerate(data):
            yield _check(item, path, i)
        return
    opener: Any = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise NeuronpediaFormatError(f"{path}:{lineno}: not JSON ({exc.msg})") from exc
                yield _check(item, path, lineno)


def _natural_key(path: Path) -> tuple[Any, ...]:
    """batch-2 before batch-10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path)))


def _check(item: Any, path: Path, where: int) -> dict[str, Any]:
    if not isinstance(item, dict) or "index" not in item or "description" not in item:
        raise NeuronpediaFormatError(f"{path} (item {where}): an explanation object needs 'index' and 'description'")
    try:
        int(item["index"])
    except (TypeError, ValueError):
        raise NeuronpediaFormatError(
            f"{path} (item {where}): 'index' must be a latent number, got {item['index']!r}"
        ) from None
    return item


def read_neuronpedia(
    path: str | os.PathLike[str],
    neuronpedia_id: str | None = None,
    type_name: str | None = None,
    *,
    model_id: str | None = None,
    source: str | None = None,
) -> dict[int, str]:
    """``{latent: description}`` from Neuronpedia explanation files, for ``sae.score(explanations=...)``.

    ``neuronpedia_id="MODEL/SOURCE"`` (or ``model_id`` / ``source``) picks one SAE; a file with several SAEs
    and no pick raises. When a latent has explanations of several ``typeName`` s, ``type_name=`` picks one
    (only that type's rows are read); with none given this raises, naming the types found. Otherwise the
    first explanation in file order wins (rows without a ``typeName`` included); empty descriptions are left
    out.
    """
    if neuronpedia_id:
        model_id, source = split_neuronpedia_id(neuronpedia_id)
    by_sae: dict[tuple[str, str], dict[int, dict[str | None, str]]] = {}
    for item in iter_neuronpedia(path):
        sae_key = (str(item.get("modelId", "")), str(item.get("layer", "")))
        if (model_id is not None and sae_key[0] != model_id) or (source is not None and sae_key[1] != source):
            continue
        kind = item.get("typeName")
        if type_name is not None and kind != type_name:
            continue
        text = str(item.get("description") or "").strip()
        latents = by_sae.setdefault(sae_key, {})
        if text:
            latents.setdefault(int(item["index"]), {}).setdefault(kind, text)
    if len(by_sae) > 1:
        listed = ", ".join(f"{m}/{s}" for m, s in sorted(by_sae))
        raise ConfigError(f"{path} holds explanations of several SAEs ({listed}); pass neuronpedia_id='MODEL/SOURCE'")
    table = next(iter(by_sae.values()), {})
    # rows without a typeName compete with no type: a latent is ambiguous when it has two named types
    mixed = sorted({k for kinds in table.values() if len(set(kinds) - {None}) > 1 for k in kinds if k is not None})
    if mixed:
        raise ConfigError(
            f"{path}: some latents have explanations of several types ({', '.join(mixed)}); pass type_name= to pick one"
        )
    return {latent: next(iter(kinds.values())) for latent, kinds in sorted(table.items())}


# ---------------------------------------------------------------------------------------------------- delphi

#: Our scorer -> delphi's scores/<name>/ folder, for the scorers whose per-example predictions delphi's
#: ClassifierOutput holds (delphi's default "fuzz" is our "fuzzing": correctly marked activating examples
#: against randomly marked non-activating ones).
DELPHI_SCORERS = {"detection": "detection", "fuzzing": "fuzz"}
#: What delphi writes as the explanation when it has none (its explainer / explanation loader).
_DELPHI_PLACEHOLDERS = ("Explanation could not be parsed.", "No explanation found")
_DELPHI_FILE = re.compile(r"^(?P<module>.+)_latent(?P<latent>\d+)\.txt$")


def _delphi_module(module: str) -> str:
    if not isinstance(module, str) or not module or "/" in module or os.sep in module:
        raise ConfigError(
            f"module must be delphi's hookpoint name without '/' (e.g. 'layers.3'), got {module!r}; files are "
            "named <module>_latent<N>.txt"
        )
    return module


def _delphi_prediction(p: Mapping[str, Any], scorer: str, text: tuple[list[str], list[float]] | None) -> dict[str, Any]:
    if "label" not in p or "prediction" not in p:
        raise ConfigError(
            f"the {scorer!r} scorer's predictions have no label / prediction, so they do not fit delphi's "
            "ClassifierOutput; export only classification scorers"
        )
    label, prediction = bool(p["label"]), p.get("prediction")
    quantile = p.get("quantile")
    return {
        "str_tokens": [] if text is None else text[0],  # from the store and vocab.json; [] when they are gone
        "activations": [] if text is None else text[1],
        "distance": quantile if label and quantile is not None else -1.0,
        "activating": label,
        "prediction": None if prediction is None else bool(prediction),
        "probability": None if p.get("probability") is None else float(p["probability"]),
        "correct": None if prediction is None else bool(prediction) == label,
    }


def _dump_delphi(value: Any) -> bytes:
    """JSON as delphi's ``orjson.dumps`` writes it: compact, UTF-8, not ASCII-escaped."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def to_delphi(
    result: ScoreResult,
    folder: str | os.PathLike[str],
    *,
    module: str,
    scorers: Mapping[str, str] | None = None,
) -> Export:
    """Write a run as delphi's per-latent files under ``folder`` (delphi's run folder):
    ``explanations/<module>_latent<N>.txt`` (the explanation as a JSON string) and
    ``scores/<delphi scorer>/<module>_latent<N>.txt`` (a JSON list of delphi's ``ClassifierOutput``:
    ``str_tokens``, ``activations``, ``distance``, ``activating``, ``prediction``, ``probability``,
    ``correct``). ``scorers`` maps our scorer names to delphi's folders (default :data:`DELPHI_SCORERS`).

    ``str_tokens`` and ``activations`` come from the activation store the run read and the run's
    ``vocab.json`` (padding and special tokens left out, as the prompts leave them out); they are empty lists
    when those are gone (the export says how many). ``distance`` is the example's quantile for activating examples and -1.0 (delphi's value for random
    negatives) for the others. Control scores, intervals and other scorers are not written.
    """
    module = _delphi_module(module)
    mapping = dict(DELPHI_SCORERS if scorers is None else scorers)
    base = Path(folder)
    paths, skipped, written = [], {}, 0
    views = RunViews.of(result) if isinstance(result, ScoreResult) else RunViews.open(None)
    without_text = 0
    for record in _records(result):
        latent = int(record["latent"])
        text, why = _usable(record)
        if text is None:
            skipped[latent] = str(why)
            continue
        by_id = views.examples(latent)["by_id"] if views.store is not None else {}
        name = f"{module}_latent{latent}.txt"
        path = base / "explanations" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_dump_delphi(text))
        paths.append(path)
        written += 1
        for ours, theirs in mapping.items():
            out = (record.get("scores") or {}).get(ours)
            if not out or not out.get("predictions"):
                continue
            texts = [
                views.text_of(latent, int(p.get("token_id", -1)), by_id) if views.pieces else None
                for p in out["predictions"]
            ]
            without_text += sum(t is None for t in texts)
            rows = [_delphi_prediction(p, ours, t) for p, t in zip(out["predictions"], texts)]
            path = base / "scores" / theirs / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_dump_delphi(rows))
            paths.append(path)
    if not written:
        raise ConfigError(f"no latent of this run has an explanation to export ({len(skipped)} left out)")
    # delphi keeps no record of the SAE; this file (not read by delphi) names it, as run.json does.
    source_path = base / "sae_source.json"
    source_path.write_text(json.dumps({"module": module, **_sae_source(result)}, indent=1), encoding="utf-8")
    paths.append(source_path)
    if without_text:
        log.warning(
            "%d scored examples have no str_tokens / activations in the delphi files: %s",
            without_text,
            "; ".join(views.missing) or "their windows are not in the store",
        )
    return Export(paths=paths, written=written, skipped=skipped)


def read_delphi_explanations(folder: str | os.PathLike[str], module: str | None = None) -> dict[int, str]:
    """``{latent: explanation}`` from delphi's explanation files (``<module>_latent<N>.txt``, a JSON string
    each), in ``folder`` or its ``explanations/``. ``module`` picks one hookpoint; several without a pick
    raise. delphi's placeholders for a missing explanation ("Explanation could not be parsed.") are left out
    with a warning, never scored as explanations."""
    folder = Path(folder)
    if (folder / "explanations").is_dir():
        folder = folder / "explanations"
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder (pass delphi's run folder or its explanations/ folder)")
    found: dict[str, dict[int, str]] = {}
    placeholders = 0
    for path in sorted(folder.iterdir()):
        match = _DELPHI_FILE.match(path.name)
        if not match or not path.is_file():
            continue
        if module is not None and match["module"] != module:
            continue
        try:
            text = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path}: not a delphi explanation (a JSON string): {exc}") from exc
        if not isinstance(text, str):
            raise ConfigError(f"{path}: a delphi explanation is a JSON string, got {type(text).__name__}")
        latents = found.setdefault(match["module"], {})
        if text.strip() in _DELPHI_PLACEHOLDERS or not text.strip():
            placeholders += 1
            continue
        latents[int(match["latent"])] = text.strip()
    if len(found) > 1:
        raise ConfigError(f"{folder} holds explanations of several modules ({', '.join(sorted(found))}); pass module=")
    if not found:
        which = f" of module {module!r}" if module is not None else ""
        raise ConfigError(f"{folder} holds no delphi explanation files{which} (<module>_latent<N>.txt)")
    if placeholders:
        log.warning("%s: %d latent(s) without an explanation (delphi's placeholder) left out", folder, placeholders)
    return dict(sorted(next(iter(found.values())).items()))


# -------------------------------------------------------------------------------------------------- SAEBench

#: Our SAEBench-plugin scorer's settings that are fields of SAEBench's AutoInterpEvalConfig.
_SAEBENCH_CONFIG_FIELDS = (
    "n_top_ex_for_generation",
    "n_iw_sampled_ex_for_generation",
    "n_top_ex_for_scoring",
    "n_iw_sampled_ex_for_scoring",
    "n_random_ex_for_scoring",
    "buffer",
    "act_threshold_frac",
    "use_demos_in_explanation",
    "max_tokens_in_explanation",
)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sae_ids(sae: Any) -> tuple[str | None, str | None, dict[str, Any] | None, str | None]:
    """(release, sae id, cfg dict, model name) of a SAELens SAE (None where it does not say)."""
    if sae is None:
        return None, None, None, None
    cfg = getattr(sae, "cfg", None)
    metadata = getattr(cfg, "metadata", None)

    def meta(key: str) -> str | None:
        try:
            value = metadata[key] if metadata is not None and key in metadata else None
        except TypeError:
            value = getattr(metadata, key, None)
        return None if value is None else str(value)

    cfg_dict = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None
    release = meta("sae_lens_release") or meta("release")
    return release, meta("sae_lens_sae_id") or meta("sae_id"), _clean(cfg_dict), meta("model_name")


def to_saebench(
    result: ScoreResult,
    path: str | os.PathLike[str],
    *,
    scorer: str | None = None,
    sae: Any = None,
    model_name: str | None = None,
    sae_lens_release_id: str | None = None,
    sae_lens_id: str | None = None,
) -> Path:
    """Write a run as SAEBench's autointerp eval output (``eval_output_schema_autointerp.json``, SAEBench 0.6).

    ``autointerp_score`` / ``autointerp_std_dev`` are SAEBench's numbers (mean and sample standard deviation
    of the per-latent accuracy over its 14 windows) only from the ``saebench`` scorer (the
    sae-autointerp-saebench plugin), which is used when it ran. Otherwise pass ``scorer=`` to put another
    scorer's headline there: the file then says, in ``eval_result_unstructured["headline"]``, which scorer
    and metric the number is and that it is not comparable with SAEBench's. Per scorer, our summary (balanced
    accuracy, interval, chance, control, lift, judge check) is in ``eval_result_details``; per latent, the
    headline scorer's numbers are in ``eval_result_unstructured["latents"]``. ``sae`` (a SAELens SAE) fills
    ``sae_lens_id``, ``sae_lens_release_id``, ``sae_cfg_dict`` and ``eval_config.model_name``.
    """
    from .results import _rows

    records = _records(result)
    run = _run_info(result)
    ran = sorted({name for r in records for name in (r.get("scores") or {})})
    if scorer is None:
        if "saebench" not in ran:
            raise ConfigError(
                f"the saebench scorer did not run ({', '.join(ran) or 'no scorer'} did), so this run has no "
                "SAEBench-comparable score; run with scorers=['saebench'] (pip install "
                "plugins/sae-autointerp-saebench), or pass scorer= to export another scorer's number, labelled as "
                "such"
            )
        scorer = "saebench"
    if scorer not in ran:
        raise ConfigError(f"scorer {scorer!r} did not run here; these did: {', '.join(ran) or 'none'}")
    comparable = scorer == "saebench"
    per_latent: dict[str, dict[str, Any]] = {}
    values, metric = [], None
    by_latent = {int(r["latent"]): r for r in records}
    for row in _rows([dict(r) for r in records]):
        if row["scorer"] != scorer:
            continue
        out = (by_latent[row["latent"]].get("scores") or {})[scorer]
        metrics = out.get("metrics") or {}
        # SAEBench's per-latent score is the plain accuracy, whatever headline the plugin was asked for
        value = _finite(metrics.get("accuracy")) if comparable else _finite(row["score"])
        metric = "accuracy" if comparable else (row["metric"] or metric)
        if value is not None:
            values.append(value)
        per_latent[str(row["latent"])] = _clean(
            {
                "latent": row["latent"],
                "explanation": row["explanation"],
                "score": value,
                "metric": metric,
                **{k: row[k] for k in ("low", "high", "chance", "control", "lift", "lift_low", "lift_high", "signal")},
                "balanced_accuracy": _finite(metrics.get("balanced_accuracy")),
                "trivial_none_accuracy": _finite(metrics.get("trivial_none_accuracy")),
                "n_examples": row["n_examples"],
                "n_failed": row["n_failed"],
                "error": row["error"],
            }
        )
    if len(values) < 2:
        raise ConfigError(
            f"SAEBench's autointerp_std_dev needs at least 2 latents with a {scorer} score, this run has "
            f"{len(values)}; score more latents"
        )
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    release, sae_id, cfg_dict, sae_model = _sae_ids(sae)
    recorded = _sae_source(result)  # what the run recorded of its SAE, when no SAE object is given
    release = release or recorded.get("sae_lens_release")
    sae_id = sae_id or recorded.get("sae_lens_sae_id")
    sae_model = sae_model or recorded.get("model_name")
    sampling = run.get("sampling") or {}
    eval_config: dict[str, Any] = {
        "model_name": model_name or sae_model or "",
        "n_latents": len(by_latent),
        "override_latents": sorted(by_latent),
    }
    if isinstance(run.get("seed"), int):
        eval_config["random_seed"] = run["seed"]
    if isinstance(sampling.get("min_activating"), int):
        eval_config["dead_latent_threshold"] = sampling["min_activating"]
    if comparable:
        kwargs = ((run.get("scorer_kwargs") or {}).get("saebench")) or {}
        eval_config.update({k: kwargs[k] for k in _SAEBENCH_CONFIG_FIELDS if k in kwargs})
    summary = result.summary() if isinstance(result, ScoreResult) else None
    details = [] if summary is None else [_clean(row) for row in summary.to_dict(orient="records")]
    note = (
        "autointerp_score is SAEBench's: the mean per-latent accuracy of the saebench scorer (4 activating + 10 "
        "random windows; answering 'none' scores 0.714, see trivial_none_accuracy)"
        if comparable
        else f"autointerp_score is NOT SAEBench's score: it is the mean per-latent {metric} of sae-lens-autointerp's "
        f"{scorer!r} scorer, not comparable with SAEBench results"
    )
    skipped = {str(int(r["latent"])): r["skipped"] for r in records if r.get("skipped")}
    path = Path(path)
    output = {
        "eval_type_id": "autointerp",
        "eval_config": eval_config,
        "eval_id": str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"sae-lens-autointerp:{run.get('run_key') or result.run_key}:{scorer}")
        ),
        "datetime_epoch_millis": int(
            (os.path.getmtime(result.path) if result.path and Path(result.path).is_file() else time.time()) * 1000
        ),
        "eval_result_metrics": {"autointerp": {"autointerp_score": mean, "autointerp_std_dev": std}},
        "eval_result_details": details,
        "sae_bench_commit_hash": f"none: written by sae-lens-autointerp {__version__}, not by SAEBench",
        "sae_lens_id": sae_lens_id or sae_id,
        "sae_lens_release_id": sae_lens_release_id or release,
        "sae_lens_version": _version_of("sae-lens"),
        "sae_cfg_dict": cfg_dict,
        "eval_result_unstructured": {
            "headline": {
                "scorer": scorer,
                "metric": metric,
                "saebench_comparable": comparable,
                "n_latents_scored": len(values),
                "n_latents_without_score": len(per_latent) - len(values),
                "note": note,
            },
            "producer": {
                "package": "sae-lens-autointerp",
                "version": __version__,
                "run_key": run.get("run_key") or result.run_key,
                "explainer": run.get("explainer"),
                "llm": run.get("llm"),
                "scorers": ran,
            },
            "latents": per_latent,
            "skipped": skipped,
            "incomplete": {str(k): v for k, v in (getattr(result, "incomplete", None) or {}).items()},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(output), indent=2, allow_nan=False), encoding="utf-8")
    return path


def _version_of(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
