"""split: train / valid / test (encoded), plus the holdout's raw rows for the promotion gate.
Time-ordered for the default (the holdout is the latest period), random and stratified by label
for classification otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data2model.errors import DataError
from data2model.params import Data, Params, Split
from data2model.preprocess import LABEL, TIME, derive_label, usable_target
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


def split_indices(table: pa.Table, params: Split, task: str) -> dict[str, np.ndarray]:
    """Row numbers of each part; every part must be non-empty."""
    indices = _by_time(table, params) if params.method == "time" else _at_random(table, params, task != "regression")
    empty = [p for p, rows in indices.items() if len(rows) == 0]
    if empty:
        raise DataError(f"split leaves {', '.join(empty)} empty ({table.num_rows} rows): use more data or change split fractions")
    return indices


def split_table(table: pa.Table, params: Split, task: str) -> dict[str, pa.Table]:
    body = table.drop_columns([TIME]) if TIME in table.column_names else table
    return {p: body.take(pa.array(rows, pa.int64())) for p, rows in split_indices(table, params, task).items()}


def raw_holdout(validated: pa.Table, data: Data, feature_rows: int, test_rows: np.ndarray) -> pa.Table:
    """The holdout rows as they arrived, with the label: features encodes derive_label's rows in
    order, so the same row numbers pick them out. Models with different preprocessors can all
    be scored on it. The rows are picked first and labelled after: labelling the whole table to
    keep a tenth of it filtered every column of every row."""
    target = validated.select([data.target]) if data.target in validated.column_names else validated  # else derive_label says it is missing
    _, classes = derive_label(target, data)  # on the whole target column, as features finds them
    kept = np.flatnonzero(usable_target(validated[data.target]).to_numpy(zero_copy_only=False))
    if len(kept) != feature_rows:
        raise DataError(f"features hold {feature_rows} rows but the validated table labels {len(kept)}: rerun the features stage")
    labelled, _ = derive_label(validated.take(pa.array(kept[test_rows], pa.int64())), data, classes)
    return labelled


def run(params: Params) -> dict[str, Any]:
    features = read_table(params.paths.features)
    indices = split_indices(features, params.split, params.data.task)
    body = features.drop_columns([TIME]) if TIME in features.column_names else features
    for name, rows in indices.items():
        write_table(body.take(pa.array(rows, pa.int64())), params.paths.split(name))
    holdout = raw_holdout(read_table(params.paths.validated), params.data, features.num_rows, indices["test"])
    write_table(holdout, params.paths.raw_holdout())
    return {name: len(rows) for name, rows in indices.items()}


if __name__ == "__main__":
    main(run)
