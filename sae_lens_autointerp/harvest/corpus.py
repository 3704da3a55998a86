"""Turn the ``dataset`` argument into a stream of fixed-length token sequences.

Accepted forms: a Hugging Face dataset name (``split``, ``text_column``, ``streaming``, ``dataset_config``)
or a ``datasets.Dataset`` / ``IterableDataset`` object,
a local ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` file or a folder of them, a list of strings, or a
tensor of token ids (``[n_seq, seq_len]`` used as is, or 1-D, cut into sequences).

Pre-tokenized data (SAELens's pre-tokenized datasets, ``sae_lens pretokenize`` output): a Hugging Face dataset,
``.jsonl`` or ``.parquet`` whose rows hold token ids, in ``text_column`` or, when that column is absent, in
``tokens`` or ``input_ids`` (the columns SAELens's ``ActivationsStore`` reads). Each row is one sequence, cut to
``ctx_len`` as SAELens does (the rest of a longer row is dropped, with a warning) and used as is: the BOS and
separators pretokenizing added are kept, none is added. Rows stream, so the corpus never sits in memory.

Documents are tokenized without special tokens, joined with the separator token (EOS) and cut into
sequences of ``ctx_len`` tokens; when the SAE was trained with ``prepend_bos`` each sequence starts with
BOS. The last, shorter sequence is kept (padded and masked later), never dropped.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    import datasets

#: What ``dataset=`` accepts (see the module docstring).
CorpusLike: TypeAlias = (
    "str | os.PathLike[str] | Sequence[str] | torch.Tensor | datasets.Dataset | datasets.IterableDataset"
)

TEXT_SUFFIXES = (".txt", ".md", ".rst")
#: Columns of pre-tokenized rows, looked for in this order when ``text_column`` is not in the data (as SAELens).
TOKEN_COLUMNS = ("tokens", "input_ids")
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True)
class CorpusSpec:
    """A resolved ``dataset`` argument: how to iterate it and how to identify it in store keys."""

    kind: str  # "hf", "files", "texts", "tokens"
    source: Any
    text_column: str
    split: str
    streaming: bool
    dataset_config: str | None
    fingerprint: dict[str, Any]
    #: Set when the rows hold token ids (pre-tokenized data): the column they are read from.
    token_column: str | None = None

    @property
    def column(self) -> str:
        """The column rows are read from: the token column of pre-tokenized data, else ``text_column``."""
        return self.token_column or self.text_column


def resolve_corpus(
    dataset: CorpusLike,
    *,
    text_column: str = "text",
    split: str = "train",
    streaming: bool = True,
    dataset_config: str | None = None,
) -> CorpusSpec:
    """Validate ``dataset`` cheaply (first record only) and describe it."""
    common: dict[str, Any] = dict(
        text_column=text_column, split=split, streaming=streaming, dataset_config=dataset_config
    )
    if isinstance(dataset, torch.Tensor):
        if dataset.numel() == 0:
            raise ConfigError("the token tensor is empty; pass at least one token id")
        if dataset.dtype.is_floating_point or dataset.ndim not in (1, 2):
            raise ConfigError(
                f"a token tensor must hold integer ids shaped [n_seq, seq_len] or [n_tokens], got "
                f"{dataset.dtype} {tuple(dataset.shape)}"
            )
        tokens = dataset.detach().cpu().long()
        token_digest = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()
        return CorpusSpec("tokens", tokens, fingerprint={"tokens": token_digest, "shape": list(tokens.shape)}, **common)
    if isinstance(dataset, (list, tuple)):
        if not dataset:
            raise ConfigError("the corpus is an empty list; pass at least one non-empty string")
        bad = [i for i, doc in enumerate(dataset) if not isinstance(doc, str)]
        if bad:
            raise ConfigError(
                f"a text corpus must be a list of strings; item {bad[0]} is {type(dataset[bad[0]]).__name__}"
            )
        if not any(doc.strip() for doc in dataset):
            raise ConfigError("every string in the corpus is empty; pass some text")
        digest = hashlib.sha256()
        for doc in dataset:
            digest.update(doc.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        return CorpusSpec(
            "texts", list(dataset), fingerprint={"texts": digest.hexdigest(), "n": len(dataset)}, **common
        )
    if _is_hf_dataset(dataset):
        fingerprint = getattr(dataset, "_fingerprint", None) or repr(dataset)
        spec = CorpusSpec("hf", dataset, fingerprint={"hf_object": str(fingerprint), "column": text_column}, **common)
        return _check_hf_column(spec)
    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset).expanduser()
        if path.exists():
            files = _data_files(path)
            token_column = _file_token_column(files[0], text_column)
            column = token_column or text_column
            fingerprint = _files_fingerprint(files, column)
            spec = CorpusSpec("files", files, fingerprint=fingerprint, token_column=token_column, **common)
            first = next(iter(_iter_rows(spec)), None)
            if first is None:
                raise ConfigError(f"the corpus at {path} holds no text; point at a non-empty file")
            return spec
        if isinstance(dataset, os.PathLike) or str(dataset).endswith(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES):
            raise ConfigError(f"no such file or folder: {path}")
        spec = CorpusSpec(
            "hf",
            str(dataset),
            fingerprint={"hf": str(dataset), "config": dataset_config, "split": split, "column": text_column},
            **common,
        )
        return _check_hf_column(spec)
    raise ConfigError(
        f"dataset must be a Hugging Face dataset name, a local path, a list of strings or a tensor of token "
        f"ids, got {type(dataset).__name__}"
    )


def _data_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES:
            raise ConfigError(
                f"{path}: unsupported file type {path.suffix or '(none)'!r}; the corpus reads "
                f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)} (convert it, or load it with "
                "datasets.load_dataset(...) and pass the Dataset)"
            )
        return [path]
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    )
    if not files:
        raise ConfigError(f"the folder {path} has no .txt/.jsonl/.parquet files")
    return files


def _files_fingerprint(files: list[Path], text_column: str) -> dict[str, Any]:
    entries = []
    for f in files:
        st = f.stat()
        entries.append([str(f.resolve()), st.st_size, int(st.st_mtime)])
    return {"files": entries, "column": text_column}


def _is_hf_dataset(obj: Any) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(obj, (datasets.Dataset, datasets.IterableDataset))


def _open_hf(spec: CorpusSpec, streaming: bool) -> Any:
    if not isinstance(spec.source, str):
        return spec.source  # a datasets.Dataset / IterableDataset object
    import datasets

    try:
        return datasets.load_dataset(spec.source, spec.dataset_config, split=spec.split, streaming=streaming)
    except Exception as exc:
        raise ConfigError(
            f"could not open Hugging Face dataset {spec.source!r} (split {spec.split!r}): {exc}. Check the name, "
            "split and network, or pass a local file / list of strings instead"
        ) from exc


def _check_hf_column(spec: CorpusSpec) -> CorpusSpec:
    """The spec, told where the rows' text or token ids are (from the first row)."""
    name = spec.source if isinstance(spec.source, str) else type(spec.source).__name__
    first = next(iter(_open_hf(spec, streaming=True)), None)
    if first is None:
        raise ConfigError(f"dataset {name!r} (split {spec.split!r}) is empty")
    column = _row_column(first, spec.text_column)
    if column is None:
        raise ConfigError(
            f"dataset {name!r} has no column {spec.text_column!r} (nor a pre-tokenized {' or '.join(TOKEN_COLUMNS)}); "
            f"its columns are {sorted(first)}. Pass text_column=..."
        )
    if not _holds_tokens(first[column]):
        return spec
    return replace(spec, token_column=column, fingerprint={**spec.fingerprint, "column": column})


def _row_column(row: Mapping[str, Any], text_column: str) -> str | None:
    """``text_column`` if the row has it, else the first pre-tokenized column it has (None: neither)."""
    if text_column in row:
        return text_column
    return next((c for c in TOKEN_COLUMNS if c in row), None)


def _holds_tokens(value: Any) -> bool:
    """Whether a row's value is a sequence of token ids (pre-tokenized) rather than text."""
    if isinstance(value, str) or value is None:
        return False
    if isinstance(value, torch.Tensor):
        return not value.dtype.is_floating_point
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # a numpy array
        return value.dtype.kind in "iu"
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _file_token_column(path: Path, text_column: str) -> str | None:
    """The token column of a pre-tokenized ``.jsonl`` / ``.parquet`` file (from its first row), else None."""
    if path.suffix in TEXT_SUFFIXES:
        return None
    if path.suffix in JSONL_SUFFIXES:
        with path.open(encoding="utf-8") as fh:
            line = next((line for line in fh if line.strip()), None)
        try:
            row = json.loads(line) if line is not None else None
        except json.JSONDecodeError:
            return None  # reported with its line number when the rows are read
        if not isinstance(row, dict):
            return None
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        batch = next(pf.iter_batches(batch_size=1), None)
        if batch is None:
            return None
        row = {name: batch.column(i)[0].as_py() for i, name in enumerate(batch.schema.names)}
    column = _row_column(row, text_column)
    return column if column is not None and _holds_tokens(row[column]) else None


def _iter_documents(spec: CorpusSpec) -> Iterator[str]:
    yield from (str(text) for text in _iter_rows(spec))


def _iter_rows(spec: CorpusSpec) -> Iterator[Any]:
    """Each row's non-empty value in ``spec.column``: a text, or the token ids of pre-tokenized data."""
    if spec.kind == "texts":
        yield from (doc for doc in spec.source if doc)
    elif spec.kind == "files":
        for path in spec.source:
            yield from _iter_file(path, spec.column)
    elif spec.kind == "hf":
        column = spec.column
        for row in _open_hf(spec, streaming=spec.streaming):
            value = row[column]
            if value is not None and len(value):
                yield value
    else:  # pragma: no cover - tokens never reach here
        raise AssertionError(spec.kind)


def _iter_file(path: Path, text_column: str) -> Iterator[Any]:
    if path.suffix in TEXT_SUFFIXES:
        # Paragraph by paragraph, so a huge file never sits in memory at once.
        with path.open(encoding="utf-8", errors="replace") as fh:
            buffer: list[str] = []
            for line in fh:
                if line.strip():
                    buffer.append(line)
                elif buffer:
                    yield "".join(buffer)
                    buffer = []
            if buffer:
                yield "".join(buffer)
    elif path.suffix in JSONL_SUFFIXES:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{lineno} is not valid JSON ({exc}); one JSON object per line") from exc
                if not isinstance(row, dict) or text_column not in row:
                    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise ConfigError(
                        f"{path}:{lineno} has no field {text_column!r} (it has {keys}); pass text_column=..."
                    )
                if row[text_column]:
                    yield row[text_column]
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_column not in pf.schema_arrow.names:
            raise ConfigError(
                f"{path} has no column {text_column!r}; its columns are {pf.schema_arrow.names}. Pass text_column=..."
            )
        for batch in pf.iter_batches(columns=[text_column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                if value:
                    yield value


def iter_sequences(
    spec: CorpusSpec,
    tokenizer: Any,
    *,
    ctx_len: int,
    prepend_bos: bool,
    bos_id: int | None,
    separator_id: int | None,
    tokenize_batch: int = 64,
) -> Iterator[list[int]]:
    """Yield token sequences of exactly ``ctx_len`` ids, except possibly the last one (shorter)."""
    if spec.kind == "tokens":
        yield from _token_tensor_sequences(spec.source, ctx_len)
        return
    if spec.token_column is not None:
        yield from _pretokenized_sequences(spec, ctx_len)
        return
    bos: list[int] = [bos_id] if prepend_bos and bos_id is not None else []
    body = ctx_len - len(bos)
    if body < 1:
        raise ConfigError(f"ctx_len={ctx_len} leaves no room for text; use ctx_len >= 2")
    buffer: list[int] = []
    docs = _iter_documents(spec)
    while True:
        chunk = list(itertools.islice(docs, tokenize_batch))
        if not chunk:
            break
        encoded = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            if not ids:
                continue
            if buffer and separator_id is not None:
                buffer.append(separator_id)
            buffer.extend(ids)
            n_full = len(buffer) // body
            for i in range(n_full):
                yield bos + buffer[i * body : (i + 1) * body]
            del buffer[: n_full * body]  # one copy per document, not one per sequence
    if buffer:
        yield bos + buffer


def _pretokenized_sequences(spec: CorpusSpec, ctx_len: int) -> Iterator[list[int]]:
    """One sequence per pre-tokenized row, cut to ``ctx_len`` (as SAELens's ActivationsStore does)."""
    warned = False
    for row in _iter_rows(spec):
        ids = row.tolist() if hasattr(row, "tolist") else list(row)
        if not _holds_tokens(ids):
            raise ConfigError(
                f"a row of the pre-tokenized column {spec.token_column!r} holds {type(row).__name__} values that "
                "are not all integer token ids; fix the data or pass text_column=... naming a text column"
            )
        if len(ids) > ctx_len and not warned:
            warnings.warn(
                f"the pre-tokenized rows hold {len(ids)} tokens but ctx_len={ctx_len}: each row is cut to "
                f"{ctx_len} and the rest dropped (as SAELens does); pass ctx_len={len(ids)} to read whole rows",
                stacklevel=2,
            )
            warned = True
        yield ids[:ctx_len]


def _token_tensor_sequences(tokens: torch.Tensor, ctx_len: int) -> Iterator[list[int]]:
    if tokens.ndim == 2:
        if tokens.shape[1] > ctx_len:
            raise ConfigError(
                f"the token tensor has sequences of {tokens.shape[1]} tokens but ctx_len={ctx_len}; pass "
                f"ctx_len={tokens.shape[1]} or cut the tensor"
            )
        for row in tokens:
            yield row.tolist()
    else:
        for start in range(0, tokens.shape[0], ctx_len):
            yield tokens[start : start + ctx_len].tolist()


def batched(seqs: Iterable[Sequence[int]], batch_size: int) -> Iterator[list[Sequence[int]]]:
    iterator = iter(seqs)
    while batch := list(itertools.islice(iterator, batch_size)):
        yield batch
