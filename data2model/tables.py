"""Table and file I/O at the stage edges. Every write is atomic: a temp file, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data2model.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@contextlib.contextmanager
def parquet_writer(path: str | Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer into a temp file that replaces `path` only if the block succeeds: write
    one batch at a time, publish all of them or nothing."""
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        yield writer


def write_batches(batches: Iterable[pa.RecordBatch | pa.Table], path: str | Path, schema: pa.Schema | None = None) -> int:
    """Stream record batches (or small tables) into a Parquet file, atomically; memory is one
    batch. The schema is `schema`, else the first batch's. Returns the rows written; a batch
    iterator that raises leaves no file behind."""
    rows = 0
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd") if schema is not None else None
        try:
            for batch in batches:
                if writer is None:
                    writer = pq.ParquetWriter(tmp, batch.schema, compression="zstd")
                writer.write(batch)
                rows += batch.num_rows
            if writer is None:
                raise DataError(f"nothing to write to {path}: no rows and no schema")
        finally:
            if writer is not None:
                writer.close()
    return rows


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """An open Parquet file to stream record batches from. Without pre-buffering: with it (the
    default), iter_batches keeps every column chunk it has read, so memory grows with the file
    (measured: 613 MB held after streaming 10M rows, 3 MB without)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: run the stage that writes it first (dvc repro)")
    return pq.ParquetFile(path, pre_buffer=False)


def thinned(table: pa.Table, keep: float, rng) -> pa.Table:
    """Each row kept with probability `keep` (all of them at 1.0): one batch's share of a seeded
    uniform sample drawn from a stream."""
    import numpy as np

    return table if keep >= 1.0 else table.filter(pa.array(np.asarray(rng.random(table.num_rows)) < keep))


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: run the stage that writes it first (dvc repro)")
    return pq.read_table(path, columns=columns)


@dataclass(frozen=True)
class Footer:
    """What a Parquet file's footer tells without its data being read."""

    schema: pa.Schema
    rows: int
    nulls: dict[str, int]


def read_footer(path: str | Path, columns: list[str] | None = None) -> Footer:
    """The Arrow schema (of `columns`, in that order), the row count and each column's nulls,
    from the footer's statistics; a column they do not count (nested, or a file written
    without statistics) is read to count them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: run the stage that writes it first (dvc repro)")
    file = pq.ParquetFile(path)
    missing = [c for c in columns or [] if c not in file.schema_arrow.names]
    if missing:
        raise DataError(f"{path} has no column {', '.join(map(repr, missing))}")
    schema = file.schema_arrow if columns is None else pa.schema([file.schema_arrow.field(c) for c in columns])
    meta = file.metadata
    leaves = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    nulls = {}
    for name in schema.names:
        stats = [meta.row_group(g).column(leaves[name]).statistics for g in range(meta.num_row_groups)] if name in leaves else [None]
        if all(s is not None and s.has_null_count for s in stats):
            nulls[name] = sum(s.null_count for s in stats)
        else:
            nulls[name] = file.read(columns=[name]).column(0).null_count
    return Footer(schema, meta.num_rows, nulls)


def read_head(path: str | Path, rows: int, columns: list[str] | None = None) -> pa.Table:
    """The first `rows` rows (of `columns`), decoding only the first pages they are in."""
    file = pq.ParquetFile(path)
    batch = next(file.iter_batches(batch_size=rows, columns=columns), None)
    schema = file.schema_arrow if columns is None else pa.schema([file.schema_arrow.field(c) for c in columns])
    return pa.Table.from_batches([batch] if batch is not None else [], schema).slice(0, rows)


def write_json(obj: Any, path: str | Path, sort_keys: bool = True) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist: run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
