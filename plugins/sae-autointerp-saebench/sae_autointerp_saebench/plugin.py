"""Entry point of the plugin (``[project.entry-points.sae_lens_autointerp] saebench = ...``).

sae-lens-autointerp finds this module through the entry point; user code never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sae_lens_autointerp import hookimpl

#: The hook specification version this plugin was written against (sae_lens_autointerp.plugin.HOOKSPEC_VERSION).
SAE_AUTOINTERP_HOOKSPEC_VERSION = 1


@hookimpl
def sae_autointerp_scorers() -> Mapping[str, Callable[..., Any]]:
    from .scorer import SAEBenchCleanScorer, SAEBenchScorer

    return {"saebench": SAEBenchScorer, "saebench-clean": SAEBenchCleanScorer}


@hookimpl
def sae_autointerp_explainers() -> Mapping[str, Callable[..., Any]]:
    from .explainer import SAEBenchCleanExplainer, SAEBenchExplainer

    return {"saebench": SAEBenchExplainer, "saebench-clean": SAEBenchCleanExplainer}
