"""Streaming export writers: an iterable of row dicts in, a JSON-lines or Parquet file out.

``write_export(rows, path, kind)`` checks each row against the shape of ``kind`` (see
:mod:`.rows`), writes it, and returns the number of rows. The format follows the suffix of
``path``: ``.jsonl`` (one JSON object a line, UTF-8) or ``.parquet`` (written with
``pyarrow.parquet.ParquetWriter`` in batches of ``batch_size`` rows, with a fixed schema per kind;
``raw`` infers its schema from the first batch). Rows are never all in memory: at most one batch.

The file is written under a temporary name next to ``path`` and renamed when complete, so a
reader never sees half an export, and a failure (a bad row) leaves no file behind. Both formats
load with ``datasets.load_dataset("json" | "parquet", data_files=...)``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .records import validate_messages
from .rows import EXPORT_KINDS

SUFFIXES = (".jsonl", ".parquet")
# Columns of each kind, in the order they are written.
COLUMNS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected", "margin"),
    "kto": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
    "listwise": ("prompt", "completions", "ranks"),
    "critique": ("prompt", "completion", "critique", "rewrite"),
}


def export_schema(kind: str):  # -> pyarrow.Schema | None
    """The Parquet schema of ``kind`` (None for ``raw``, whose schema comes from its first rows)."""
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    messages = pa.list_(message)
    types = {
        "prompt": messages,
        "chosen": messages,
        "rejected": messages,
        "margin": pa.float64(),
        "completion": messages,
        "label": pa.bool_(),
        "completions": pa.list_(messages),
        "ranks": pa.list_(pa.int64()),
        "critique": pa.string(),
        "rewrite": pa.string(),
    }
    if kind == "raw":
        return None
    if kind not in COLUMNS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {EXPORT_KINDS}")
    return pa.schema([pa.field(name, types[name], nullable=name == "rewrite") for name in COLUMNS[kind]])


def _check_answer(value: Any, key: str) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key!r} must be a non-empty list of chat messages")
    for message in value:
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or not isinstance(message["role"], str)
            or not isinstance(message["content"], str)
        ):
            raise ValueError(f"{key!r} must hold {{'role', 'content'}} string messages, got {message!r:.80}")


def validate_row(row: Any, kind: str) -> None:
    """Raise ValueError unless ``row`` has exactly the columns of ``kind`` with the right types."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {EXPORT_KINDS}")
    if not isinstance(row, Mapping):
        raise ValueError(f"a row must be a mapping, got {type(row).__name__}")
    if kind == "raw":
        if not all(isinstance(key, str) for key in row):
            raise ValueError("raw row keys must be strings")
        return
    if set(row) != set(COLUMNS[kind]):
        raise ValueError(f"a {kind} row has the keys {list(COLUMNS[kind])}, got {list(row)} (use 'raw' for others)")
    validate_messages(row["prompt"])
    if kind == "preference":
        _check_answer(row["chosen"], "chosen")
        _check_answer(row["rejected"], "rejected")
        margin = row["margin"]
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
            raise ValueError(f"'margin' must be a finite number, got {margin!r}")
    elif kind == "kto":
        _check_answer(row["completion"], "completion")
        if not isinstance(row["label"], bool):
            raise ValueError(f"'label' must be true or false, got {row['label']!r}")
    elif kind == "listwise":
        completions, ranks = row["completions"], row["ranks"]
        if not isinstance(completions, list) or len(completions) < 2:
            raise ValueError("'completions' must be a list of at least 2 answers")
        for completion in completions:
            _check_answer(completion, "completions[]")
        if (
            not isinstance(ranks, list)
            or len(ranks) != len(completions)
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in ranks)
            or ranks != sorted(ranks)
        ):
            raise ValueError(f"'ranks' must be one non-decreasing integer >= 0 per completion, got {ranks!r}")
    elif kind == "critique":
        _check_answer(row["completion"], "completion")
        if not isinstance(row["critique"], str) or not row["critique"].strip():
            raise ValueError("'critique' must be a non-empty string")
        if row["rewrite"] is not None and not isinstance(row["rewrite"], str):
            raise ValueError("'rewrite' must be a string or null")


def _normalised(row: Mapping[str, Any], kind: str) -> dict[str, Any]:
    if kind == "raw":
        return dict(row)
    out = {name: row[name] for name in COLUMNS[kind]}
    if kind == "preference":
        out["margin"] = float(out["margin"])
    return out


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"export file {path.name!r} must end with one of {SUFFIXES}")
    return suffix


def write_export(rows: Iterable[Mapping[str, Any]], path: str | Path, kind: str, *, batch_size: int = 1000) -> int:
    """Write ``rows`` of ``kind`` to ``path`` (``.jsonl`` or ``.parquet``); return the row count.

    A row that does not fit ``kind`` raises ValueError naming its 0-based position, and no file
    is left behind. An existing file at ``path`` is replaced only when the new one is complete.
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {EXPORT_KINDS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    path = Path(path)
    suffix = _suffix(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")

    def checked() -> Iterator[dict[str, Any]]:
        for i, row in enumerate(rows):
            try:
                validate_row(row, kind)
            except ValueError as e:
                raise ValueError(f"row {i}: {e}") from None
            yield _normalised(row, kind)

    try:
        count = _write_jsonl(checked(), tmp) if suffix == ".jsonl" else _write_parquet(checked(), tmp, kind, batch_size)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _write_jsonl(rows: Iterator[dict[str, Any]], path: Path) -> int:
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            try:
                line = json.dumps(row, ensure_ascii=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"row {count} is not JSON-serialisable: {e}") from None
            f.write(line + "\n")
            count += 1
    return count


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path, kind: str, batch_size: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = export_schema(kind)
    writer: pq.ParquetWriter | None = None
    count = 0

    def flush(batch: list[dict[str, Any]]) -> None:
        nonlocal schema, writer, count
        where = f"rows {count}..{count + len(batch) - 1}"
        if schema is None:  # raw: the first batch decides the columns and their types
            table = pa.Table.from_pylist(batch)
            schema = table.schema
        else:
            unknown = {key for row in batch for key in row} - set(schema.names)
            if unknown:
                raise ValueError(
                    f"{where} have columns {sorted(unknown)} that the first batch did not have "
                    "(Parquet needs one schema; export such rows as .jsonl)"
                )
            try:
                table = pa.Table.from_pylist(batch, schema=schema)
            except (pa.ArrowException, TypeError, ValueError) as e:
                raise ValueError(f"{where} do not fit the Parquet schema {schema}: {e}") from None
        if writer is None:
            writer = pq.ParquetWriter(str(path), schema)
        writer.write_table(table)
        count += len(batch)

    try:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch or writer is None:  # an empty export is still a valid file with the schema
            flush(batch)
    finally:
        if writer is not None:
            writer.close()
    return count


def read_export(path: str | Path, *, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    """Stream the rows of an export written by :func:`write_export` (``.jsonl`` or ``.parquet``)."""
    path = Path(path)
    if _suffix(path) == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
        return
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(str(path))
    try:
        for batch in parquet.iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    finally:
        parquet.close()
