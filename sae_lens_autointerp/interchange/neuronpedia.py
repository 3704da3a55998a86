"""Neuronpedia's explanation rows: written as its bulk-dataset layout (or one file), and read back as
``{latent: text}`` (docs/interchange.md)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..results import ScoreResult, explanation_model_of
from .common import MAX_EXPLANATION_CHARS, MAX_LINE_BYTES, Export, _records, _run_info, _sae_source, _usable

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
    return _id_part(model_id, "model id", neuronpedia_id), _id_part(source, "source", neuronpedia_id)


# the two halves of an id name folders of the bulk layout: no separators, no control characters
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]")


def _id_part(part: Any, what: str, whole: Any) -> str:
    """``part`` when it can name a folder under the export's folder, else a ConfigError ('..' would climb out)."""
    if not isinstance(part, str) or part.strip() in ("", ".", "..") or _UNSAFE_ID.search(part):
        raise ConfigError(
            f"the Neuronpedia {what} {part!r} (of {whole!r}) is not a folder name: it may not be empty, '.' or "
            "'..', or hold '/', '\\' or control characters; pass the SAE's real id (e.g. 'gpt2-small/8-res-jb')"
        )
    return part


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
    return _id_part(model_id, "model id", model_id), _id_part(source, "source", source)


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
    # the ids are checked above; this also catches a link inside the folder that leads out of it
    if not out.resolve().is_relative_to(Path(folder).resolve()):
        raise ConfigError(f"{out} leads outside {folder}; pass --out a folder without links out of it")
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
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
            raise NeuronpediaFormatError(f"{path}: not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        if isinstance(data, dict) and isinstance(data.get("explanations"), list):
            data = data["explanations"]
        if not isinstance(data, list):
            raise NeuronpediaFormatError(f"{path}: expected a JSON array of explanation objects")
        for i, item in enumerate(data):
            yield _check(item, path, i)
        return
    for lineno, line in _lines(path, gzipped=name.endswith(".gz")):
        if line.strip():
            try:
                item = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise NeuronpediaFormatError(f"{path}:{lineno}: not UTF-8 text ({exc.reason})") from None
            except json.JSONDecodeError as exc:
                raise NeuronpediaFormatError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            except RecursionError:
                raise NeuronpediaFormatError(f"{path}:{lineno}: not an explanation (JSON nested too deep)") from None
            yield _check(item, path, lineno)


def _lines(path: Path, *, gzipped: bool) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a JSONL file, gzipped or not, read a bounded piece at a time: a line over
    :data:`MAX_LINE_BYTES` (a gzip bomb's one endless line) is refused after reading that much of it."""
    kind = "gzip " if gzipped else ""
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as fh:
            lineno = 0
            while line := fh.readline(MAX_LINE_BYTES + 1):
                lineno += 1
                if len(line) > MAX_LINE_BYTES:
                    raise NeuronpediaFormatError(
                        f"{path}:{lineno}: a line longer than {MAX_LINE_BYTES:,} bytes; Neuronpedia's explanation "
                        "rows are far shorter (is this an explanations file?)"
                    )
                yield lineno, line
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut-off gzip an EOFError
        raise NeuronpediaFormatError(f"{path}: not a readable {kind}file ({type(exc).__name__}: {exc})") from None


def _natural_key(path: Path) -> tuple[Any, ...]:
    """batch-2 before batch-10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path)))


def _check(item: Any, path: Path, where: int) -> dict[str, Any]:
    """``item`` when it is an explanation object: an ``index`` that is a latent number (an int or a string of
    digits, as Neuronpedia writes it; never a float or a bool, which ``int()`` would quietly turn into one) and
    a ``description`` that is a string of at most :data:`MAX_EXPLANATION_CHARS` characters."""
    if not isinstance(item, dict) or "index" not in item or "description" not in item:
        raise NeuronpediaFormatError(f"{path} (item {where}): an explanation object needs 'index' and 'description'")
    index = item["index"]
    if not (
        (isinstance(index, int) and not isinstance(index, bool) and index >= 0)
        or (isinstance(index, str) and _DIGITS.fullmatch(index))
    ):
        raise NeuronpediaFormatError(
            f"{path} (item {where}): 'index' must be a latent number (an integer >= 0 or a string of digits), "
            f"got {_short(index)}"
        )
    text = item["description"]
    if not isinstance(text, str):
        raise NeuronpediaFormatError(
            f"{path} (item {where}): 'description' must be a string, got {type(text).__name__} {_short(text)}"
        )
    if len(text) > MAX_EXPLANATION_CHARS:
        raise NeuronpediaFormatError(
            f"{path} (item {where}): a description of {len(text):,} characters (at most {MAX_EXPLANATION_CHARS:,} "
            "are read; Neuronpedia's explanations are a phrase or a sentence)"
        )
    return item


_DIGITS = re.compile(r"[0-9]{1,30}")  # ASCII digits only: str.isdigit() also takes '²' and '٣'


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    out. Plain texts: which examples Neuronpedia's explainer read is not in the export, so their scores say
    ``holdout="unknown"``.
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
        text = item["description"].strip()  # a string: _check
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
