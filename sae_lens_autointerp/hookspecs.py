"""Hook specifications: the whole contract between sae-lens-autointerp and its plugins.

A leaf module (it imports only pluggy and typing), so a plugin, the registry and the built-ins can all import
it without pulling in anything else. A plugin is a module (or any object) with ``@hookimpl`` functions named
like the specs below, declared as an entry point in the group ``sae_lens_autointerp``::

    from sae_lens_autointerp import hookimpl      # the same marker as sae_lens_autointerp.hookspecs.hookimpl

    SAE_AUTOINTERP_HOOKSPEC_VERSION = 1

    @hookimpl
    def sae_autointerp_scorers():
        return {"mine": MyScorer}

Every hook returns a mapping ``name -> factory``. The factory is called with the keyword arguments the user
passed for that item (for example ``scorer_kwargs["mine"]``) and returns the object implementing the
matching protocol. Returning ``None`` or ``{}`` means "nothing of this kind". pluggy's ``hookwrapper=True`` /
``wrapper=True`` implementations are supported: the registry calls each plugin's implementation through a
pluggy hook caller, with the wrappers around it (see ``sae_lens_autointerp.registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

#: The pluggy project name; also the entry-point group plugins declare.
PROJECT_NAME = "sae_lens_autointerp"

#: Version of the specifications below. It only grows compatibly (new optional hooks, new ``Context``
#: fields) within a number; an incompatible change bumps it. A plugin may declare
#: ``SAE_AUTOINTERP_HOOKSPEC_VERSION`` and is refused, by name, when it needs a newer one than this.
HOOKSPEC_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Factories = Mapping[str, Callable[..., Any]] | None


class AutointerpSpecs:
    """Hook specifications, version :data:`HOOKSPEC_VERSION`. Each hook takes no argument."""

    @hookspec
    def sae_autointerp_scorers(self) -> Factories:
        """Return ``{name: factory}`` of scorers.

        ``factory(**scorer_kwargs[name])`` returns an object with ``name``, ``needs_explanation``, optionally
        ``needs_llm`` (default True), and ``async score(sample, explanation, ctx) -> ScorerOutput``
        (``sae_lens_autointerp.records.Scorer``). ``sae.score(..., scorers=[name])`` then uses it.
        """

    @hookspec
    def sae_autointerp_explainers(self) -> Factories:
        """Return ``{name: factory}`` of explainers.

        ``factory(**explainer_kwargs)`` returns an object with ``name``, optionally ``needs_llm``, and
        ``async explain(sample, ctx) -> Explanation`` (``sae_lens_autointerp.records.Explainer``).
        ``sae.explain(..., explainer=name)`` then uses it.
        """

    @hookspec
    def sae_autointerp_llm_clients(self) -> Factories:
        """Return ``{prefix: factory}`` of LLM backends.

        ``llm="prefix:model"`` calls ``factory(model="model", **llm_kwargs)`` and ``llm="prefix"`` calls
        ``factory(model=None, **llm_kwargs)``; the factory returns an ``LLMClient``
        (simplest: a subclass of ``sae_lens_autointerp.llm.BaseClient``).
        """

    @hookspec
    def sae_autointerp_exporters(self) -> Factories:
        """Return ``{name: factory}`` of export formats (modelled on datasette's ``register_output_renderer``).

        ``factory()`` returns an object with ``description`` (one line), ``options`` (a sequence of
        ``sae_lens_autointerp.interchange.ExportOption``: its settings, each also a flag of
        ``sae-autointerp export``) and ``export(result, out, **options) -> Export`` (writes a ``ScoreResult`` to
        the path ``out``; ``sae_lens_autointerp.interchange.Exporter``). ``sae-autointerp export --format name``
        and ``sae_lens_autointerp.interchange.export(result, name, out, ...)`` then use it.
        """
