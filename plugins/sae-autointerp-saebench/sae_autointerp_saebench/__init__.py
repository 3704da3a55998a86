"""SAEBench-compatible autointerp for sae-lens-autointerp: the "saebench" explainer and scorer.

Installed, it registers itself through the ``sae_lens_autointerp`` entry-point group, so
``sae.score(..., scorers=["saebench"])`` works without importing this package. Import it only for
:func:`saebench_summary` or to build the classes yourself.
"""

from __future__ import annotations

from .explainer import SAEBenchCleanExplainer, SAEBenchExplainer
from .protocol import (
    SAEBENCH_SAMPLING,
    SAEBenchConfig,
    parse_explanation,
    parse_predictions,
    select_examples,
    select_saebench,
)
from .scorer import SAEBenchCleanScorer, SAEBenchScorer
from .summary import saebench_summary

__version__ = "0.1.0"

__all__ = [
    "SAEBENCH_SAMPLING",
    "SAEBenchCleanExplainer",
    "SAEBenchCleanScorer",
    "SAEBenchConfig",
    "SAEBenchExplainer",
    "SAEBenchScorer",
    "parse_explanation",
    "parse_predictions",
    "saebench_summary",
    "select_examples",
    "select_saebench",
]
