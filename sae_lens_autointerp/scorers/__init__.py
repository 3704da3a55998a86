"""Scorers: how well an explanation (or, for intruder, the latent itself) predicts the latent."""

from .classification import DetectionScorer, FuzzingActiveScorer, FuzzingScorer
from .intruder import IntruderScorer
from .simulation import SimulationScorer

__all__ = ["DetectionScorer", "FuzzingActiveScorer", "FuzzingScorer", "IntruderScorer", "SimulationScorer"]
