"""Fitted preprocessing that travels with the model, so serving cannot skew from training.

`Preprocessor.transform` turns raw rows (the columns the source has, in any order) into the
model's feature table: numeric columns as float32 with nulls filled by the training median,
categorical columns as int32 codes (0 = unseen or null), and calendar parts of timestamps.
It is fitted once (features stage), saved as JSON, and applied again inside the served model.
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data2model.errors import DataError
from data2model.params import Data, Features

LABEL = "label"
TIME = "__time"
UNSEEN = 0
_CALENDAR = {"hour": pc.hour, "dow": pc.day_of_week, "month": pc.month, "doy": pc.day_of_year}
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}


@dataclass
class Preprocessor:
    task: str
    target: str
    label_rule: str | None
    classes: list[str]
    input_columns: dict[str, str]
    numeric: dict[str, dict[str, float]]
    categorical: dict[str, list[str]]
    timestamps: list[str] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def cardinalities(self) -> dict[str, int]:
        """Codes per categorical feature, the unseen code included (embedding table sizes)."""
        return {name: len(vocab) + 1 for name, vocab in self.categorical.items()}

    def transform(self, table: pa.Table) -> pa.Table:
        missing = [c for c in self.input_columns if c not in table.column_names]
        if missing:
            raise DataError(f"input is missing column(s) {', '.join(missing)}")
        derived = _with_calendar(table, self.timestamps)
        arrays, names = [], []
        for name, stats in self.numeric.items():
            values = _as_float(derived[name], name)
            arrays.append(pc.fill_null(values, stats["fill"]).cast(pa.float32()))
            names.append(name)
        for name, vocab in self.categorical.items():
            arrays.append(encode_categories(derived[name], vocab))
            names.append(name)
        return pa.table(arrays, names=names)

    def decode(self, codes: np.ndarray) -> list[Any]:
        """Class indices back to the original label values (binary without a rule, multiclass)."""
        return [self.classes[int(i)] for i in codes]

    def save(self, path: str | Path) -> None:
        from data2model.tables import write_json

        write_json(asdict(self), path, sort_keys=False)  # feature order is part of the model

    @classmethod
    def load(cls, path: str | Path) -> "Preprocessor":
        return cls(**json.loads(Path(path).read_text()))


def _as_float(column: pa.ChunkedArray | pa.Array, name: str) -> pa.ChunkedArray:
    try:
        return column.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DataError(f"column {name} must be numeric: {err}") from None


def as_utc_naive(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Timestamps as UTC wall time without a zone: tz-aware values, ISO strings with or without
    an offset (as JSON requests carry them) all land on the same instants."""
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp(column.type.unit)) if column.type.tz else column
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return column.cast(pa.string()).cast(target).cast(pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    raise DataError(f"column {name} must hold timestamps (ISO 8601 text or datetime), got {column.type}")


def _with_calendar(table: pa.Table, timestamps: list[str]) -> pa.Table:
    for name in timestamps:
        values = as_utc_naive(table[name], name)
        for part, fn in _CALENDAR.items():
            table = table.append_column(f"{name}_{part}", fn(values).cast(pa.int32()))
    return table


def encode_categories(column: pa.ChunkedArray, vocab: list[str]) -> pa.ChunkedArray:
    index = pc.index_in(column.cast(pa.string()), value_set=pa.array(vocab, pa.string()))
    return pc.fill_null(pc.add(index, 1), UNSEEN).cast(pa.int32())


def _vocabulary(column: pa.ChunkedArray, params: Features) -> list[str]:
    counts = pc.value_counts(column.cast(pa.string()).drop_null()).to_pylist()
    kept = [c for c in counts if c["counts"] >= params.min_category_count]
    kept.sort(key=lambda c: (-c["counts"], c["values"]))
    return sorted(c["values"] for c in kept[: params.max_categories])


def _numeric_stats(column: pa.ChunkedArray) -> dict[str, float]:
    values = column.cast(pa.float64())
    valid = values.drop_null().to_numpy()
    valid = valid[np.isfinite(valid)]
    fill = float(np.median(valid)) if valid.size else 0.0
    filled = pc.fill_null(values, fill).to_numpy()
    std = float(np.std(filled))
    return {"fill": fill, "mean": float(np.mean(filled)), "std": std if std > 0 else 1.0}


def derive_label(table: pa.Table, data: Data, classes: list[str] | None = None) -> tuple[pa.Table, list[str]]:
    """Rows with a usable target and the label column; `classes` names the class indices.

    Given `classes` (found once on the whole target column), a batch of rows is labelled the
    same way as any other batch, and a batch with no usable target is simply empty.
    """
    if data.target not in table.column_names:
        raise DataError(f"data.target {data.target!r} is not a column (columns: {', '.join(table.column_names)})")
    table = table.filter(usable_target(table[data.target]))
    if classes is None:
        if table.num_rows == 0:
            raise DataError(f"data.target {data.target!r} is null in every row")
        classes = label_classes(table[data.target], data)
    target = table[data.target]
    rule = data.parsed_rule()
    if data.task == "regression":
        return table.append_column(LABEL, _as_float(target, data.target)), classes
    if rule is not None:
        op, threshold = rule
        label = np.asarray(_OPS[op](_as_float(target, data.target).to_numpy(), threshold), dtype=np.int32)
        return table.append_column(LABEL, pa.array(label, pa.int32())), classes
    codes = pc.index_in(target.cast(pa.string()), value_set=pa.array(classes, pa.string())).cast(pa.int32())
    return table.append_column(LABEL, codes), classes


def usable_target(target: pa.ChunkedArray) -> pa.ChunkedArray:
    """Which rows derive_label keeps: a target that is neither null nor NaN."""
    usable = pc.is_valid(target)
    return pc.and_(usable, pc.invert(pc.is_nan(target))) if pa.types.is_floating(target.type) else usable


def label_classes(target: pa.ChunkedArray, data: Data) -> list[str]:
    """The label's classes: none for regression, 0/1 under a rule, else the target's values."""
    if data.task == "regression":
        return []
    if data.parsed_rule() is not None:
        return ["0", "1"]
    classes = sorted(pc.unique(target.cast(pa.string())).to_pylist())
    expected = "exactly 2" if data.task == "binary" else "at least 2"
    if (data.task == "binary" and len(classes) != 2) or len(classes) < 2:
        raise DataError(f"data.task {data.task} needs {expected} distinct values in {data.target!r}, found {len(classes)}")
    return classes


def fit_preprocessor(table: pa.Table, data: Data, params: Features, classes: list[str]) -> Preprocessor:
    """Learn vocabularies and fill values from the label-free feature columns of `table`."""
    unknown = [c for c in params.categorical if c not in table.column_names]
    if unknown:
        raise DataError(f"features.categorical names column(s) not in the data: {', '.join(unknown)}")
    skip = {data.target, LABEL, *data.exclude}
    inputs = {f.name: str(f.type) for f in table.schema if f.name not in skip}
    timestamps = [n for n in inputs if pa.types.is_timestamp(table.schema.field(n).type)]
    derived = _with_calendar(table, timestamps)
    numeric, categorical = {}, {}
    for f in derived.schema:
        if f.name in skip or f.name in timestamps:
            continue
        if f.name in params.categorical or pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_dictionary(f.type):
            categorical[f.name] = _vocabulary(derived[f.name], params)
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type):
            numeric[f.name] = _numeric_stats(derived[f.name])
    if not numeric and not categorical:
        raise DataError("no feature columns left after data.exclude and data.target")
    return Preprocessor(
        task=data.task, target=data.target, label_rule=data.label_rule, classes=classes,
        input_columns=inputs, numeric=numeric, categorical=categorical, timestamps=timestamps,
    )
