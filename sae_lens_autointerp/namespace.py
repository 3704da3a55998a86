"""``sae.autointerp``: autointerp methods bound to one SAE."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import SAE

    from .harvest import ActivationStore
    from .plugin import PluginInfo


class AutointerpNamespace:
    """Autointerp methods bound to one SAE: ``sae.autointerp.harvest(...)``, ``.explain``, ``.score``.

    Created on each access of ``sae.autointerp``; it holds nothing but the SAE reference.
    """

    __slots__ = ("sae",)

    def __init__(self, sae: SAE) -> None:
        self.sae = sae

    def __repr__(self) -> str:
        return f"<autointerp namespace of {type(self.sae).__name__} d_sae={self.sae.cfg.d_sae}>"

    def harvest(self, model: Any, dataset: Any, **kwargs: Any) -> ActivationStore:
        """Stream ``dataset`` through ``model`` and this SAE; see :func:`sae_lens_autointerp.harvest.harvest`."""
        from .harvest import harvest

        return harvest(self.sae, model, dataset, **kwargs)

    @property
    def plugins(self) -> list[PluginInfo]:
        """Installed plugins and what each provides."""
        from .plugin import get_registry

        return get_registry().plugins()

    def explain(self, *args: Any, **kwargs: Any) -> Any:
        """Explain latents of this SAE with an LLM (see ``sae_lens_autointerp.pipeline``)."""
        raise NotImplementedError("explain() lands with the explain/score pipeline")

    def score(self, *args: Any, **kwargs: Any) -> Any:
        """Score explanations of this SAE's latents (see ``sae_lens_autointerp.pipeline``)."""
        raise NotImplementedError("score() lands with the explain/score pipeline")


def for_sae(sae: SAE) -> AutointerpNamespace:
    """The autointerp namespace of ``sae`` (also when ``sae.autointerp`` is taken by something else)."""
    return AutointerpNamespace(sae)
