"""Neuronpedia interop for sae-lens-autointerp.

* :func:`export_explanations` / ``sae-autointerp-neuronpedia export``: a run's explanations as Neuronpedia
  explanation objects (the shape of its explanation exports and bulk datasets).
* :func:`read_explanations`: ``{latent: description}`` from a Neuronpedia export, for ``sae.score``.
* the ``"neuronpedia"`` explainer (registered through the ``sae_lens_autointerp`` entry point): the same
  lookup inside ``sae.autointerp.run``, so Neuronpedia's explanations are scored like any other.
"""

from __future__ import annotations

from typing import Any

from .formats import (
    ExportReport,
    NeuronpediaFormatError,
    export_explanations,
    iter_neuronpedia,
    load_results,
    read_explanations,
    split_neuronpedia_id,
    to_neuronpedia,
)

__version__ = "0.1.0"

__all__ = [
    "ExportReport",
    "NeuronpediaExplainer",
    "NeuronpediaFormatError",
    "export_explanations",
    "iter_neuronpedia",
    "load_results",
    "read_explanations",
    "split_neuronpedia_id",
    "to_neuronpedia",
]


def __getattr__(name: str) -> Any:
    # The explainer imports sae_lens_autointerp (and with it SAELens, torch): only when it is asked for, so
    # that the export CLI starts in a fraction of a second.
    if name == "NeuronpediaExplainer":
        from .explainer import NeuronpediaExplainer

        return NeuronpediaExplainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
