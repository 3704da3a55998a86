"""Neuronpedia interop for sae-lens-autointerp.

* :func:`export_explanations` / ``sae-autointerp-neuronpedia export``: a run's explanations as Neuronpedia
  ``Explanation`` rows, in its bulk-dataset layout (``MODEL/SOURCE/explanations/batch-N.jsonl.gz``) or one file.
* :func:`read_explanations`: ``{latent: description}`` from Neuronpedia explanation files, for ``sae.score``.

The formats live in the core (``sae_lens_autointerp.interchange``); this plugin adds the CLI and the explainer.
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
    # The explainer imports the sampling and records modules: only when it is asked for.
    if name == "NeuronpediaExplainer":
        from .explainer import NeuronpediaExplainer

        return NeuronpediaExplainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
