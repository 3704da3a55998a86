"""Export formats as plugins: the :class:`Exporter` protocol, the three built-in formats, and :func:`export`.

A format is provided by a plugin's ``sae_autointerp_exporters`` hook (``{name: factory}``, like scorers and
explainers; datasette's ``register_output_renderer`` is the model): ``factory()`` returns an
:class:`Exporter`, which declares its settings (:class:`ExportOption`, each also a flag of
``sae-autointerp export``) and writes a run with :meth:`Exporter.export`. The built-in formats below are
registered by the built-in plugin (``sae_lens_autointerp.builtin``) through the same hook, so
``sae-autointerp export --format`` lists whatever is installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError, PluginError
from ..registry import get_registry
from ..results import ScoreResult
from .common import Export
from .delphi import to_delphi
from .neuronpedia import NEURONPEDIA_DEFAULT_AUTHOR_ID, to_neuronpedia
from .saebench import to_saebench


@dataclass(frozen=True)
class ExportOption:
    """One setting of an export format: a keyword argument of its :meth:`Exporter.export` (``name``) and the
    flag ``--name-with-dashes`` of ``sae-autointerp export`` (or ``flag``)."""

    name: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    #: a flag without a value (True when given)
    switch: bool = False
    #: the format refuses to run without it
    required: bool = False
    #: the command-line flag, when it is not ``--`` + ``name`` with dashes
    flag: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@runtime_checkable
class Exporter(Protocol):
    """What an ``sae_autointerp_exporters`` factory returns."""

    #: one line for ``sae-autointerp export --help``
    description: str
    #: its settings, beyond the result and where to write it
    options: Sequence[ExportOption]

    def export(self, result: ScoreResult, out: Path, **options: Any) -> Export:
        """Write ``result`` to ``out`` (a file or a folder, as the format says); the files written, how many
        latents, and the latents left out with the reason. Bad input raises ``ConfigError``."""
        ...


class SAEBenchExporter:
    description = "SAEBench's autointerp eval output JSON (--out: the file)"
    options = (
        ExportOption("scorer", "the scorer whose number to write when 'saebench' did not run"),
        ExportOption("model_name", "the model's name"),
        ExportOption("sae_lens_release_id", "the SAELens release", flag="--release"),
        ExportOption("sae_lens_id", "the SAELens SAE id", flag="--sae-id"),
    )

    def export(self, result: ScoreResult, out: Path, **options: Any) -> Export:
        path = to_saebench(result, out, **options)
        written = json.loads(path.read_text(encoding="utf-8"))["eval_result_unstructured"]
        skipped = {int(k): f"skipped: {why}" for k, why in written["skipped"].items()}
        return Export(paths=[path], written=len(written["latents"]), skipped=skipped)


class DelphiExporter:
    description = "delphi's per-latent explanation and score files (--out: delphi's run folder)"
    options = (ExportOption("module", "the hook point in delphi's file names, e.g. layers.3", required=True),)

    def export(self, result: ScoreResult, out: Path, **options: Any) -> Export:
        return to_delphi(result, out, **options)


class NeuronpediaExporter:
    description = "Neuronpedia's bulk explanation dataset (--out: the folder)"
    options = (
        ExportOption("neuronpedia_id", "MODEL/SOURCE, e.g. gpt2-small/8-res-jb"),
        ExportOption("author_id", "the authorId (default: Neuronpedia's bot user)"),
        ExportOption("type_name", "a registered explanation typeName"),
        ExportOption("explanation_model", "the model that wrote the explanations"),
        ExportOption("unattributed", "explanations no model wrote", default="error", choices=("error", "skip")),
        ExportOption("overwrite", "replace existing batch files", switch=True, default=False),
    )

    def export(self, result: ScoreResult, out: Path, **options: Any) -> Export:
        author = options.pop("author_id", None) or NEURONPEDIA_DEFAULT_AUTHOR_ID
        return to_neuronpedia(result, out, author_id=author, **options)


#: Names an option may not have: the arguments of ``export`` and of ``sae-autointerp export`` themselves.
_RESERVED = {"result", "results", "name", "format", "out"}

#: The built-in formats, registered by the built-in plugin.
BUILTIN_EXPORTERS = {"saebench": SAEBenchExporter, "delphi": DelphiExporter, "neuronpedia": NeuronpediaExporter}


def exporter(name: str) -> Exporter:
    """The export format ``name``, from whichever installed plugin provides it (the registry's rules)."""
    made = get_registry().create("exporters", name)
    problem = None
    if not isinstance(made, Exporter):
        problem = (
            f"returned a {type(made).__name__}, which is not an Exporter (it needs description, options and "
            "export(result, out, **options))"
        )
    elif not all(isinstance(o, ExportOption) for o in made.options):
        problem = "declares options that are not ExportOption"
    elif clash := sorted({o.name for o in made.options} & _RESERVED):
        problem = f"declares options named {clash}, which are export's own arguments"
    if problem is not None:
        raise PluginError(f"plugin {get_registry().get('exporters', name).plugin!r}: exporter {name!r} {problem}")
    return made


def export(result: ScoreResult, name: str, out: str | os.PathLike[str], **options: Any) -> Export:
    """Write ``result`` in the export format ``name`` (``saebench``, ``delphi``, ``neuronpedia`` or a plugin's)
    to ``out``. ``options`` are the format's settings (:attr:`Exporter.options`); a required one that is
    missing, or one the format does not have, raises ``ConfigError``."""
    fmt = exporter(name)
    known = {o.name: o for o in fmt.options}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"export format {name!r} has no option {unknown}; it has {sorted(known) or 'none'}")
    for option in known.values():
        if option.required and options.get(option.name) is None:
            raise ConfigError(f"--format {name} needs {option.cli_flag} ({option.help})")
    return fmt.export(result, Path(out), **options)
