"""Interchange with the peers' file formats: SAEBench's autointerp output JSON, Neuronpedia's explanation
rows and delphi's per-latent explanation / score files (export), and explanations read back from delphi and
Neuronpedia files so our scorers can score them (import).

Exports take a :class:`~sae_lens_autointerp.results.ScoreResult` (``report.load(run_dir)``, ``sae.score(...)``)
and write only what the run recorded; what a format wants and a run does not hold is left out and said so
(docs/interchange.md). Imports return ``{latent: text}``, ready for ``sae.score(..., explanations=...)``.

One module per format (:mod:`.saebench`, :mod:`.delphi`, :mod:`.neuronpedia`); :mod:`.formats` makes each an
export format of the plugin registry (``sae-autointerp export --format``), where a plugin adds its own.
"""

from ..results import explanation_model_of
from .common import Export
from .delphi import DELPHI_SCORERS, read_delphi_explanations, to_delphi
from .formats import BUILTIN_EXPORTERS, Exporter, ExportOption, export, exporter
from .neuronpedia import (
    NEURONPEDIA_BATCH_SIZE,
    NEURONPEDIA_DATASETS_URL,
    NEURONPEDIA_DEFAULT_AUTHOR_ID,
    NeuronpediaFormatError,
    iter_neuronpedia,
    neuronpedia_cuid,
    neuronpedia_rows,
    read_neuronpedia,
    split_neuronpedia_id,
    to_neuronpedia,
    write_neuronpedia_file,
)
from .saebench import to_saebench

__all__ = [
    "BUILTIN_EXPORTERS",
    "DELPHI_SCORERS",
    "NEURONPEDIA_BATCH_SIZE",
    "NEURONPEDIA_DATASETS_URL",
    "NEURONPEDIA_DEFAULT_AUTHOR_ID",
    "ExportOption",
    "Export",
    "Exporter",
    "NeuronpediaFormatError",
    "explanation_model_of",
    "export",
    "exporter",
    "iter_neuronpedia",
    "neuronpedia_cuid",
    "neuronpedia_rows",
    "read_delphi_explanations",
    "read_neuronpedia",
    "split_neuronpedia_id",
    "to_delphi",
    "to_neuronpedia",
    "to_saebench",
    "write_neuronpedia_file",
]
