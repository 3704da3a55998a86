"""Explain and score many latents: bounded concurrency, one record per finished latent, resumable.

The modules, top to bottom (each imports only those below it; ``lint-imports`` checks it):

* ``entry``: :func:`run`, composing the rest;
* ``work``: one latent's work in this process (:class:`LatentWork`, built from :class:`RunParts`);
  ``folder``: the run key, the claim on the run folder, ``run.json`` and ``usage.json`` (:class:`RunFolder`);
* ``runner``: the block loop, the bookkeeping of what is written and incomplete, the breaker (:class:`Runner`,
  running any :class:`Work`);
* ``flags``: the known-heuristic flags and what they saved (:class:`Tally`);
* ``plan``: the options checked and resolved before any expensive work (:func:`preflight`, :class:`Plan`);
* ``contract``: what a plugin may return, and the one constructor of a failed entry.
"""

from __future__ import annotations

from .contract import check_output, failed_entry, quarantine
from .entry import DEFAULT_SCORERS, open_client, run, run_sync
from .flags import HEURISTIC_EXPLAINER, Tally
from .folder import RunFolder, versions
from .plan import (
    FILTER_FIELDS,
    Plan,
    backend_name,
    build_config,
    check_latents,
    check_run_options,
    client_identity,
    coerce_explanations,
    preflight,
    protocol_filters,
    provenance,
    sampling_config,
)
from .runner import Incomplete, Outcomes, Prepared, Runner, Work
from .work import LatentWork, RunParts

__all__ = [
    "DEFAULT_SCORERS",
    "FILTER_FIELDS",
    "HEURISTIC_EXPLAINER",
    "Incomplete",
    "LatentWork",
    "Outcomes",
    "Plan",
    "Prepared",
    "RunFolder",
    "RunParts",
    "Runner",
    "Tally",
    "Work",
    "backend_name",
    "build_config",
    "check_latents",
    "check_output",
    "check_run_options",
    "client_identity",
    "coerce_explanations",
    "open_client",
    "failed_entry",
    "preflight",
    "protocol_filters",
    "provenance",
    "quarantine",
    "run",
    "run_sync",
    "sampling_config",
    "versions",
]
