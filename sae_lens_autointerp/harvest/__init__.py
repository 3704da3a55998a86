"""Harvesting latent activations with TransformerLens hooks into an on-disk activation store."""

from .run import harvest
from .stats import HarvestSettings
from .store import ActivationStore, Example, RandomWindow

__all__ = ["ActivationStore", "Example", "HarvestSettings", "RandomWindow", "harvest"]
