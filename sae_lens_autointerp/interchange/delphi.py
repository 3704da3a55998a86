"""delphi's per-latent explanation and score files: written as delphi's run folder, and its explanations
read back as ``{latent: text}`` (docs/interchange.md)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..numeric import finite
from ..results import ScoreResult
from ..runviews import RunViews
from .common import MAX_EXPLANATION_CHARS, MAX_LINE_BYTES, Export, _records, _sae_source, _usable

log = logging.getLogger("sae_lens_autointerp")


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
        "probability": finite(p.get("probability")),  # null (delphi's value when there is none) for a non-number
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


def _read_explanation(path: Path) -> str:
    """One delphi explanation file (a JSON string), read no further than :data:`MAX_LINE_BYTES`."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_LINE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    if len(data) > MAX_LINE_BYTES:
        raise ConfigError(
            f"{path}: over {MAX_LINE_BYTES:,} bytes; a delphi explanation is one JSON string (is this delphi's "
            "explanations folder?)"
        )
    try:
        text = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; RecursionError: deep nesting
        raise ConfigError(
            f"{path}: not a delphi explanation (a JSON string): {type(exc).__name__}: {str(exc)[:200]}"
        ) from None
    if not isinstance(text, str):
        raise ConfigError(f"{path}: a delphi explanation is a JSON string, got {type(text).__name__}")
    if len(text) > MAX_EXPLANATION_CHARS:
        raise ConfigError(
            f"{path}: an explanation of {len(text):,} characters (at most {MAX_EXPLANATION_CHARS:,} are read; "
            "delphi's explanations are a sentence)"
        )
    return text


def read_delphi_explanations(folder: str | os.PathLike[str], module: str | None = None) -> dict[int, str]:
    """``{latent: explanation}`` from delphi's explanation files (``<module>_latent<N>.txt``, a JSON string
    each), in ``folder`` or its ``explanations/``. ``module`` picks one hookpoint; several without a pick
    raise. delphi's placeholders for a missing explanation ("Explanation could not be parsed.") are left out
    with a warning, never scored as explanations. Plain texts: which examples delphi's explainer read is not
    in these files, so their scores say ``holdout="unknown"``."""
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
        text = _read_explanation(path)
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
