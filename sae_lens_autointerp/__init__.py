"""sae-lens-autointerp: explain and score SAELens SAE latents with LLMs.

``import sae_lens_autointerp`` attaches ``explain()``, ``score()`` and the ``autointerp`` namespace to every
``sae_lens.SAE`` (idempotent, see :mod:`sae_lens_autointerp.attach`).
"""

from __future__ import annotations

from ._version import __version__

from . import embedded
from .attach import install as _install
from .config import HarvestConfig, RunConfig
from .errors import AutointerpError, ConfigError, PluginError, UnknownPluginItemError
from .harvest import ActivationStore
from .namespace import AutointerpNamespace, for_sae
from .hookspecs import hookimpl
from .registry import get_registry

_install()

__all__ = [
    "__version__",
    "ActivationStore",
    "AutointerpNamespace",
    "for_sae",
    "AutointerpError",
    "ConfigError",
    "HarvestConfig",
    "RunConfig",
    "PluginError",
    "UnknownPluginItemError",
    "embedded",
    "get_registry",
    "hookimpl",
]
