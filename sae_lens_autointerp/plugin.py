"""Deprecated compatibility module: the plugin system now lives in

* :mod:`sae_lens_autointerp.hookspecs`: ``hookimpl``, ``hookspec``, ``HOOKSPEC_VERSION``, the specs;
* :mod:`sae_lens_autointerp.registry`: ``Registry``, ``get_registry``, ``get_client``, ``PluginInfo``,
  ``RegisteredItem``.

Everything that used to be importable from here still is (``from sae_lens_autointerp.plugin import
get_registry`` keeps working); new code should import from the two modules above, or use
``from sae_lens_autointerp import hookimpl, get_registry``.
"""

from __future__ import annotations

from .hookspecs import HOOKSPEC_VERSION, PROJECT_NAME, AutointerpSpecs, hookimpl, hookspec
from .registry import (
    BLOCK_ENV_VAR,
    ENTRY_POINT_GROUP,
    KINDS,
    LOAD_ENV_VAR,
    TRACE_ENV_VAR,
    PluginInfo,
    RegisteredItem,
    Registry,
    get_registry,
)

__all__ = [
    "BLOCK_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "HOOKSPEC_VERSION",
    "KINDS",
    "LOAD_ENV_VAR",
    "PROJECT_NAME",
    "TRACE_ENV_VAR",
    "AutointerpSpecs",
    "PluginInfo",
    "RegisteredItem",
    "Registry",
    "get_registry",
    "hookimpl",
    "hookspec",
]
