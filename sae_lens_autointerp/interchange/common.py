"""What every export shares: the :class:`Export` it returns, and a run's records, run.json and usable
explanations as the formats read them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..results import ScoreResult

#: Imported files (Neuronpedia, delphi) are read in pieces no longer than this (a JSONL line, a delphi
#: explanation file): 1 MiB is far above a Neuronpedia row with its ``embedding`` column (256 floats, ~5 KB),
#: and a gzip bomb or a file that is not an explanation file is refused after reading this much, not all of it.
MAX_LINE_BYTES = 1 << 20
#: The longest explanation an import takes (characters). Neuronpedia's and delphi's explanations are a phrase
#: or a sentence; a longer "description" is a wrong or hostile file, refused with its file and line.
MAX_EXPLANATION_CHARS = 8192


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


def _sae_source(result: Any) -> dict[str, Any]:
    """What run.json records of the SAE's origin (``sae_source``: release, SAE id, Neuronpedia id, model)."""
    source = _run_info(result).get("sae_source")
    return source if isinstance(source, dict) else {}
