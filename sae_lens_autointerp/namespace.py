"""``sae.autointerp``: the namespace object (filled in by later modules)."""
from __future__ import annotations
from typing import Any

class AutointerpNamespace:
    """Autointerp methods bound to one SAE."""

    def __init__(self, sae: Any) -> None:
        self.sae = sae

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        """Explain latents."""
        raise NotImplementedError

    def score(self, *args: Any, **kwargs: Any) -> Any:
        """Score explanations."""
        raise NotImplementedError


def for_sae(sae: Any) -> AutointerpNamespace:
    return AutointerpNamespace(sae)
