"""A run's results: the durable file, its index, the tables and summaries, and :class:`ScoreResult`.

- :mod:`.file`: ``results.jsonl``, one JSON record per latent, appended as soon as the latent is done (or left
  incomplete); :class:`ResultsFile` writes and repairs it, :class:`RecordSeq` reads records by offset.
- :mod:`.index`: its SQLite index (``results.jsonl.index.sqlite``), the only code that speaks SQL.
- :mod:`.tables`: the compact rows of a record and ``result.table`` / ``result.summary()`` / the judge checks
  built from them (the columns are described there).
- :mod:`.result`: :class:`ScoreResult`, what ``sae.score()`` / ``sae.autointerp.run()`` return.
- :mod:`.provenance`: which model wrote a record's explanation.

The names below are this package's public face (``from sae_lens_autointerp.results import ScoreResult``).
"""

from .file import SYNC_EVERY_S, RecordSeq, ResultsFile, encode_record, write_error, writes_to
from .index import DAMAGED_SUFFIX, INDEX_FORMAT, INDEX_SUFFIX, ResultsIndex
from .provenance import explanation_model_of, llm_model_name
from .result import Presenter, ScoreResult, install_presenter
from .tables import (
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    SUMMARY_INPUTS,
    TABLE_COLUMNS,
    checks_from_rows,
    judge_checks,
    record_rows,
    records_table,
    rows_frame,
    rows_of,
    summary_from_rows,
    summary_table,
    table_from_rows,
)

__all__ = [
    "DAMAGED_SUFFIX",
    "INDEX_FORMAT",
    "INDEX_SUFFIX",
    "ROW_COLUMNS",
    "SUMMARY_COLUMNS",
    "SUMMARY_INPUTS",
    "SYNC_EVERY_S",
    "TABLE_COLUMNS",
    "Presenter",
    "RecordSeq",
    "ResultsFile",
    "ResultsIndex",
    "ScoreResult",
    "checks_from_rows",
    "encode_record",
    "explanation_model_of",
    "install_presenter",
    "judge_checks",
    "llm_model_name",
    "record_rows",
    "records_table",
    "rows_frame",
    "rows_of",
    "summary_from_rows",
    "summary_table",
    "table_from_rows",
    "write_error",
    "writes_to",
]
