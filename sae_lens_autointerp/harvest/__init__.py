"""Harvesting latent activations with TransformerLens hooks into an on-disk latent store."""

from typing import TYPE_CHECKING

from ..subjects import ModuleReader
from .config import HarvestConfig, HarvestOptions, HarvestSettings, harvest_config
from .run import harvest, harvest_many, pin_malloc_thresholds
from .store import Example, LatentStore, RandomWindow, deprecated_store_alias

__all__ = [
    "Example",
    "HarvestConfig",
    "HarvestOptions",
    "HarvestSettings",
    "LatentStore",
    "ModuleReader",
    "RandomWindow",
    "harvest",
    "harvest_config",
    "harvest_many",
    "pin_malloc_thresholds",
]

if TYPE_CHECKING:
    from .store import ActivationStore as ActivationStore  # deprecated alias of LatentStore
else:

    def __getattr__(name: str) -> type[LatentStore]:
        return deprecated_store_alias(__name__, name)
