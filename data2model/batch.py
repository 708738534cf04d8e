"""Batch scoring: a CSV or Parquet file through a registered model, in record batches, to a
Parquet or CSV file with the model version in a column. Memory is bounded by `batch_rows`,
not by the file; the output appears only when every batch scored (atomic rename)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from data2model.errors import DataError
from data2model.request_checks import Field

log = logging.getLogger("data2model.batch")
VERSION_COLUMN = "model_version"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_ARROW = {"string": pa.string(), "double": pa.float64(), "float": pa.float64()}


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FORMATS)}")
    return fmt


def open_batches(source: Path, fields: list[Field], batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The file's schema and its record batches. CSV columns the model takes as text or
    numbers are read as such, so a code like `0123` is not turned into an integer."""
    import pyarrow.csv as pacsv
    import pyarrow.dataset as ds

    if not source.is_file():
        raise DataError(f"{source} does not exist or is not a file")
    fmt = _format(source)
    if fmt == "csv":
        types = {f.name: _ARROW[f.kind] for f in fields if f.kind in _ARROW}
        file_format = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    else:
        file_format = ds.ParquetFileFormat()
    try:
        dataset = ds.dataset(source, format=file_format)
        schema = dataset.schema
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{source} cannot be read as {fmt}: {err}") from None
    missing = [f.name for f in fields if f.required and f.name not in schema.names]
    if missing:
        raise DataError(f"{source} lacks the model's required column(s) {', '.join(missing)}")
    return schema, dataset.to_batches(batch_size=batch_rows)


def _with_optional(table: pa.Table, fields: list[Field]) -> pa.Table:
    """Optional fields the file lacks become null columns, as a request that omits them."""
    for f in fields:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, _ARROW.get(f.kind, pa.float64())))
    return table


def score_batches(predict: Callable[[pa.Table], Any], version: str, batches: Iterator[pa.RecordBatch], fields: list[Field]) -> Iterator[pa.Table]:
    """Input columns, then the prediction columns, then `model_version`, per batch."""
    for batch in batches:
        table = pa.Table.from_batches([batch])
        predictions = pa.Table.from_pandas(predict(_with_optional(table, fields)), preserve_index=False)
        for name in predictions.column_names:
            table = table.append_column(name if name not in table.column_names else f"predicted_{name}", predictions[name])
        yield table.append_column(VERSION_COLUMN, pa.array([version] * table.num_rows, pa.string()))


def write_batches(tables: Iterator[pa.Table], dest: Path, progress: Callable[[int], None]) -> int:
    """Write every table to `dest` (format by suffix), atomically; returns the row count."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from data2model.tables import atomic_path

    fmt = _format(dest)
    rows = 0
    with atomic_path(dest) as tmp:
        writer = None
        try:
            for table in tables:
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd") if fmt == "parquet" else pacsv.CSVWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema) if fmt == "parquet" else table)
                rows += table.num_rows
                progress(rows)
        finally:
            if writer is not None:
                writer.close()
        if rows == 0:
            raise DataError("the input holds no rows to score")
    return rows


def score_file(model, version: str, fields: list[Field], source: Path, dest: Path, batch_rows: int) -> dict[str, Any]:
    """Score `source` with a loaded pyfunc `model` into `dest`; returns a small summary."""
    from mlflow.exceptions import MlflowException

    from data2model.promotion import model_frame

    schema, batches = open_batches(source, fields, batch_rows)
    input_schema = model.metadata.get_input_schema()

    def predict(table: pa.Table):
        try:
            return model.predict(model_frame(table, input_schema))
        except MlflowException as err:
            raise DataError(f"{source}: the model refused a batch: {err.message}") from None

    rows = write_batches(score_batches(predict, version, batches, fields), dest, lambda n: log.info("scored %s rows of %s", f"{n:,}", source))
    return {"input": str(source), "output": str(dest), "rows": rows, "model_version": version, "input_columns": len(schema.names)}
