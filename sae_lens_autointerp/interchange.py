"""Interchange with the peers' file formats: SAEBench's autointerp output JSON, Neuronpedia's explanation
rows and delphi's per-latent explanation / score files (export), and explanations read back from delphi and
Neuronpedia files so our scorers can score them (import)."""

from __future__ import annotations
