"""Entry point of the plugin (``[project.entry-points.sae_lens_autointerp] neuronpedia = ...``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sae_lens_autointerp import hookimpl

SAE_AUTOINTERP_HOOKSPEC_VERSION = 1


@hookimpl
def sae_autointerp_explainers() -> Mapping[str, Callable[..., Any]]:
    from .explainer import NeuronpediaExplainer

    return {"neuronpedia": NeuronpediaExplainer}
