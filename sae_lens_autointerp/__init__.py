"""sae-lens-autointerp: explain and score SAELens SAE latents with LLMs.

``import sae_lens_autointerp`` attaches ``explain()``, ``score()`` and the ``autointerp`` namespace to every
``sae_lens.SAE`` (idempotent, see :mod:`sae_lens_autointerp.attach`). That is the only thing the import
changes: no logging handler, warnings filter, environment variable, thread count or allocator setting
(tests/test_side_effects.py). Messages go to the ``sae_lens_autointerp`` logger, which has no handler of its
own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import baselines, embedded
from ._version import __version__
from .attach import install as _install
from .compare import Comparison, compare
from .config import HarvestConfig, RunConfig
from .errors import AutointerpError, ConfigError, PluginError, UnknownPluginItemError
from .harvest import LatentStore, harvest_many
from .harvest.store import deprecated_store_alias as _deprecated_store_alias
from .hookspecs import hookimpl
from .namespace import AutointerpNamespace, for_sae
from .registry import get_registry
from .report import write_site  # also installs the pages and plots of ScoreResult (to_html, show, plot)
from .similarity import explanation_similarity, match_latents, similarity, similarity_matrix
from .subjects import HFModel, NNsightModel

_install()

__all__ = [
    "AutointerpError",
    "AutointerpNamespace",
    "Comparison",
    "ConfigError",
    "HFModel",
    "HarvestConfig",
    "LatentStore",
    "NNsightModel",
    "PluginError",
    "RunConfig",
    "UnknownPluginItemError",
    "__version__",
    "baselines",
    "compare",
    "embedded",
    "explanation_similarity",
    "for_sae",
    "get_registry",
    "harvest_many",
    "hookimpl",
    "match_latents",
    "similarity",
    "similarity_matrix",
    "write_site",
]

if TYPE_CHECKING:
    from .harvest import ActivationStore as ActivationStore  # deprecated alias of LatentStore
else:

    def __getattr__(name: str) -> type[LatentStore]:
        return _deprecated_store_alias(__name__, name)
