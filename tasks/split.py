"""split: train / valid / test. Time-ordered for the default (the holdout is the latest period),
random and stratified by label for classification otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data2model.errors import DataError
from data2model.params import Params, Split
from data2model.preprocess import LABEL, TIME
from data2model.stage import main
from data2model.tables import read_table, write_table

PARTS = ("train", "valid", "test")


def _by_time(table: pa.Table, params: Split) -> dict[str, np.ndarray]:
    if TIME not in table.column_names:
        raise DataError(f"split.method is 'time' but split.time_column {params.time_column!r} is not in the data")
    order = pc.sort_indices(table, sort_keys=[(TIME, "ascending")]).to_numpy()
    n_test = int(round(len(order) * params.test_fraction))
    rest, test = order[: len(order) - n_test], order[len(order) - n_test :]
    n_valid = int(round(len(rest) * params.valid_fraction))
    return {"train": rest[: len(rest) - n_valid], "valid": rest[len(rest) - n_valid :], "test": test}


def _at_random(table: pa.Table, params: Split, stratify: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(params.seed)
    groups = [np.flatnonzero(table[LABEL].to_numpy() == c) for c in np.unique(table[LABEL].to_numpy())] if stratify else [np.arange(table.num_rows)]
    parts: dict[str, list[np.ndarray]] = {p: [] for p in PARTS}
    for rows in groups:
        rows = rng.permutation(rows)
        n_test = int(round(len(rows) * params.test_fraction))
        n_valid = int(round((len(rows) - n_test) * params.valid_fraction))
        parts["test"].append(rows[:n_test])
        parts["valid"].append(rows[n_test : n_test + n_valid])
        parts["train"].append(rows[n_test + n_valid :])
    return {p: np.sort(np.concatenate(v)) for p, v in parts.items()}


def split_table(table: pa.Table, params: Split, task: str) -> dict[str, pa.Table]:
    """Row sets for each part; every part must be non-empty."""
    indices = _by_time(table, params) if params.method == "time" else _at_random(table, params, task != "regression")
    body = table.drop_columns([TIME]) if TIME in table.column_names else table
    parts = {p: body.take(pa.array(rows, pa.int64())) for p, rows in indices.items()}
    empty = [p for p, t in parts.items() if t.num_rows == 0]
    if empty:
        raise DataError(f"split leaves {', '.join(empty)} empty ({table.num_rows} rows): use more data or change split fractions")
    return parts


def run(params: Params) -> dict[str, Any]:
    parts = split_table(read_table(params.paths.features), params.split, params.data.task)
    for name, part in parts.items():
        write_table(part, params.paths.split(name))
    return {name: part.num_rows for name, part in parts.items()}


if __name__ == "__main__":
    main(run)
