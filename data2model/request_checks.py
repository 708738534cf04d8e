"""Turn a scoring request into the frame a model's input schema asks for, or refuse it with an
HTTP status and a message naming the field. MLflow's own server answers 500 without a
Content-Type, drops unknown columns, truncates 9.5 in an integer column and lets nulls into
required columns; these checks close those gaps before the model sees a row.

Accepted bodies are MLflow's: JSON with `dataframe_split`, `dataframe_records`, `instances` or
`inputs`, or CSV with a header row.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

JSON_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
MAX_ERRORS_SHOWN = 5


@dataclass
class RequestError(Exception):
    status: int
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # MLflow's ColSpec type name: long, integer, double, float, string, boolean, datetime
    required: bool


def fields_of(schema) -> list[Field]:
    """The input columns of an MLflow `Schema` (a model logged with a column signature)."""
    return [Field(c.name, c.type.name, c.required) for c in schema.inputs]


def parse_body(body: bytes, content_type: str | None, fields: list[Field]) -> dict[str, list[Any]]:
    """Column name -> values, from JSON or CSV. Nothing is checked against `fields` yet except
    the CSV reader's column types."""
    if not content_type:
        raise RequestError(415, "missing Content-Type header: send application/json (MLflow's dataframe_split, dataframe_records, instances or inputs) or text/csv")
    mime, _, options = content_type.partition(";")
    mime = mime.strip().lower()
    if "charset" in options.lower() and "utf-8" not in options.lower():
        raise RequestError(415, f"only UTF-8 bodies are accepted, got Content-Type {content_type!r}")
    if not body.strip():
        raise RequestError(400, "request body is empty: send rows to score")
    if mime == "application/json":
        return _columns_from_json(body)
    if mime == "text/csv":
        return _columns_from_csv(body, fields)
    raise RequestError(415, f"unsupported Content-Type {mime!r}: send application/json or text/csv")


def _columns_from_json(body: bytes) -> dict[str, list[Any]]:
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"request body is not valid JSON: {err}") from None
    keys = [k for k in JSON_KEYS if isinstance(doc, dict) and k in doc]
    if len(keys) != 1:
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise RequestError(400, f"the JSON body must be an object with exactly one of {', '.join(JSON_KEYS)}; got {found}")
    payload = doc[keys[0]]
    if keys[0] == "dataframe_split":
        return _columns_from_split(payload)
    if isinstance(payload, dict):  # `inputs` as column -> values
        lengths = {len(v) if isinstance(v, list) else 1 for v in payload.values()}
        if len(lengths) > 1:
            raise RequestError(400, f"{keys[0]}: columns have different lengths {sorted(lengths)}")
        return {str(k): (v if isinstance(v, list) else [v]) for k, v in payload.items()}
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        raise RequestError(400, f"{keys[0]} must be a list of records (objects of field -> value)")
    names = list(dict.fromkeys(k for record in payload for k in record))
    return {n: [record.get(n, _ABSENT) for record in payload] for n in names}


def _columns_from_split(split: Any) -> dict[str, list[Any]]:
    if not isinstance(split, dict) or not isinstance(split.get("columns"), list) or not isinstance(split.get("data"), list):
        raise RequestError(400, "dataframe_split must be an object with a `columns` list and a `data` list of rows")
    columns = split["columns"]
    if len(set(columns)) != len(columns):
        raise RequestError(400, f"dataframe_split.columns repeats a field: {columns}")
    for i, row in enumerate(split["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise RequestError(400, f"dataframe_split.data row {i} has {size} values for {len(columns)} columns")
    return {str(c): [row[i] for row in split["data"]] for i, c in enumerate(columns)}


_CSV_TYPES = {"string": "string", "double": "float64", "float": "float64", "long": "int64", "integer": "int64", "boolean": "bool"}


def _columns_from_csv(body: bytes, fields: list[Field]) -> dict[str, list[Any]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {f.name: pa.type_for_alias(_CSV_TYPES[f.kind]) for f in fields if f.kind in _CSV_TYPES}
    try:
        table = pacsv.read_csv(io.BytesIO(body), convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise RequestError(400, f"request body is not a CSV the model's fields fit: {err}") from None
    return table.to_pydict()


class _Absent:
    """A field a record left out (distinct from an explicit null)."""

    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def _is_null(value: Any) -> bool:
    return value is None or value is _ABSENT or (isinstance(value, float) and math.isnan(value))


def _check_value(kind: str, value: Any) -> str | None:
    """Why `value` cannot be a `kind`, or None if it can."""
    if kind in ("long", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected an integer, got {value!r}"
        if isinstance(value, float) and (math.isinf(value) or not value.is_integer()):
            return f"expected an integer, got {value!r}"
    elif kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isinf(value):
            return f"expected a finite number, got {value!r}"
    elif kind == "string":
        if not isinstance(value, str):
            return f"expected a string, got {value!r}"
    elif kind == "boolean":
        if not isinstance(value, bool):
            return f"expected true or false, got {value!r}"
    elif kind == "datetime":
        if isinstance(value, datetime):  # CSV bodies arrive parsed
            return None
        if not isinstance(value, str):
            return f"expected an ISO-8601 timestamp string, got {value!r}"
        try:
            pd.Timestamp(value)
        except ValueError:
            return f"expected an ISO-8601 timestamp string, got {value!r}"
    return None


def _series(kind: str, values: list[Any]) -> pd.Series:
    clean = [None if _is_null(v) else v for v in values]
    if kind in ("long", "integer"):
        return pd.Series([None if v is None else int(v) for v in clean], dtype="int64" if None not in clean else "Int64")
    if kind in ("double", "float"):
        return pd.Series([math.nan if v is None else float(v) for v in clean], dtype="float64")
    if kind == "datetime":  # the models take zone-naive UTC, as MLflow's datetime columns are
        return pd.Series(pd.to_datetime(clean, utc=True, format="ISO8601")).dt.tz_localize(None)
    if kind == "boolean":
        return pd.Series(clean, dtype="boolean" if None in clean else "bool")
    return pd.Series(clean, dtype="object")


_EXACT = {"long": (int,), "integer": (int,), "double": (int, float), "float": (int, float), "string": (str,), "boolean": (bool,), "datetime": (str,)}


def _fast_series(f: Field, values: list[Any]) -> pd.Series | None:
    """The usual request in one conversion per column: every value exactly of the field's
    Python type (null allowed where optional), numbers finite, timestamps ISO. None sends the
    field to the value-by-value checks, which say what is wrong (or accept 9.0 as an integer).
    Exact types matter: Arrow and pandas would quietly turn 9.5 into 9 and True into 1.0."""
    allowed = _EXACT.get(f.kind, ()) + (() if f.required else (type(None),))
    if not all(type(v) in allowed for v in values):
        return None
    if f.kind == "datetime":
        try:
            return _series(f.kind, values)
        except ValueError:
            return None
    column = _series(f.kind, values)
    if f.kind in ("double", "float") and (np.isinf(column).any() or (f.required and column.isna().any())):
        return None
    return column


def _field_errors(f: Field, values: list[Any]) -> list[str]:
    """Up to one more than MAX_ERRORS_SHOWN problems of one field (enough to say "and more")."""
    errors = []
    for i, value in enumerate(values):
        if _is_null(value):
            if f.required:
                errors.append(f"field {f.name!r} row {i}: {'missing' if value is _ABSENT else 'null or NaN'} in a required field")
        elif (why := _check_value(f.kind, value)) is not None:
            errors.append(f"field {f.name!r} row {i}: {why}")
        if len(errors) > MAX_ERRORS_SHOWN:
            break
    return errors


def to_frame(columns: dict[str, list[Any]], fields: list[Field], max_rows: int) -> pd.DataFrame:
    """Check every field and value; the frame has the schema's columns, in its order."""
    rows = len(next(iter(columns.values()))) if columns else 0
    if rows == 0:
        raise RequestError(400, "no rows to score")
    known = {f.name for f in fields}
    extra = [c for c in columns if c not in known]
    if extra:
        raise RequestError(400, f"unexpected field(s) {', '.join(map(repr, extra))}: the model takes {', '.join(f.name for f in fields)}")
    missing = [f.name for f in fields if f.required and f.name not in columns]
    if missing:
        raise RequestError(400, f"missing required field(s) {', '.join(map(repr, missing))}")
    if rows > max_rows:
        raise RequestError(413, f"{rows} rows in one request is more than serve.max_rows={max_rows}: split the batch")
    series, errors = {}, []
    for f in fields:
        values = columns.get(f.name, [None] * rows)
        fast = _fast_series(f, values)
        if fast is not None:
            series[f.name] = fast
        elif problems := _field_errors(f, values):
            errors += problems
        else:
            series[f.name] = _series(f.kind, values)
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = " (and more)" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise RequestError(400, "; ".join(shown) + more)
    return pd.DataFrame(series)


def request_frame(body: bytes, content_type: str | None, fields: list[Field], max_rows: int) -> pd.DataFrame:
    return to_frame(parse_body(body, content_type, fields), fields, max_rows)


def json_records(table, names: list[str]) -> list[dict[str, Any]]:
    """Rows of an Arrow table as a client sends them: the named fields, timestamps as ISO
    strings, missing numbers as null."""
    def value(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.isoformat()
        return None if isinstance(v, float) and math.isnan(v) else v

    return [{n: value(row[n]) for n in names} for row in table.select(names).to_pylist()]
