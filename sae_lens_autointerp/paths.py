"""Where sae-lens-autointerp keeps caches (activation stores, converted models, LLM responses)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "SAE_AUTOINTERP_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$SAE_AUTOINTERP_CACHE`` or ``~/.cache/sae-lens-autointerp``, joined with ``parts`` and created."""
    root = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "sae-lens-autointerp")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
