"""tasks/split.py: time-ordered and stratified random splits of the feature table."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from data2model.errors import DataError
from data2model.params import Split
from data2model.preprocess import LABEL, TIME
from tasks.split import split_table

N = 1000
START = dt.datetime(2013, 1, 1, tzinfo=dt.timezone.utc)


def _features(n: int = N, seed: int = 0, regression: bool = False) -> pa.Table:
    """`row` identifies each row; hours repeat (4 rows an hour) so time ties exist; rows are shuffled."""
    rng = np.random.default_rng(seed)
    hours = rng.permutation(np.arange(n) // 4)
    label = rng.normal(size=n) if regression else (rng.random(n) < 0.3).astype(np.int32)
    return pa.table(
        {
            "row": np.arange(n),
            "x": rng.normal(size=n).astype(np.float32),
            LABEL: label,
            TIME: pa.array([START + dt.timedelta(hours=int(h)) for h in hours], pa.timestamp("s", tz="UTC")),
        }
    )


def _rows(part: pa.Table) -> np.ndarray:
    return part["row"].to_numpy()


def _assert_partition(parts: dict[str, pa.Table], n: int) -> None:
    rows = np.concatenate([_rows(parts[p]) for p in ("train", "valid", "test")])
    assert len(rows) == n
    assert sorted(rows) == list(range(n))


def test_time_split_puts_the_latest_rows_in_test_and_the_next_latest_in_valid():
    table = _features()
    parts = split_table(table, Split(method="time", test_fraction=0.2, valid_fraction=0.1), "binary")
    times = table[TIME].to_numpy().astype(np.int64)
    train, valid, test = (times[_rows(parts[p])] for p in ("train", "valid", "test"))
    assert test.min() >= max(train.max(), valid.max())
    assert valid.min() >= train.max()
    assert valid.mean() > train.mean() and test.mean() > valid.mean()
    _assert_partition(parts, N)


def test_time_split_sizes_follow_the_fractions():
    parts = split_table(_features(), Split(method="time", test_fraction=0.2, valid_fraction=0.1), "binary")
    assert {p: t.num_rows for p, t in parts.items()} == {"train": 720, "valid": 80, "test": 200}


def test_parts_drop_the_time_column_and_keep_everything_else():
    table = _features()
    for method in ("time", "random"):
        parts = split_table(table, Split(method=method), "binary")
        for part in parts.values():
            assert part.column_names == ["row", "x", LABEL]


def test_random_split_is_stratified_by_class():
    table = _features(seed=3)
    parts = split_table(table, Split(method="random", test_fraction=0.2, valid_fraction=0.2, seed=7), "binary")
    overall = table[LABEL].to_numpy().mean()
    for name, part in parts.items():
        assert abs(part[LABEL].to_numpy().mean() - overall) < 0.015, name
    # each class is split on its own: its test share is 20% of it, its valid share 20% of the rest
    for c in (0, 1):
        n_c = int((table[LABEL].to_numpy() == c).sum())
        test_c = int((parts["test"][LABEL].to_numpy() == c).sum())
        valid_c = int((parts["valid"][LABEL].to_numpy() == c).sum())
        assert abs(test_c - 0.2 * n_c) <= 1
        assert abs(valid_c - 0.2 * (n_c - test_c)) <= 1
    _assert_partition(parts, N)
    assert {p: t.num_rows for p, t in parts.items()} == pytest.approx({"train": 640, "valid": 160, "test": 200}, abs=2)


def test_random_split_is_stratified_for_multiclass():
    table = _features(seed=4).set_column(2, LABEL, pa.array(np.arange(N) % 3, pa.int32()))
    parts = split_table(table, Split(method="random", test_fraction=0.3, valid_fraction=0.2), "multiclass")
    for part in parts.values():
        shares = np.bincount(part[LABEL].to_numpy(), minlength=3) / part.num_rows
        assert np.abs(shares - 1 / 3).max() < 0.01


def test_random_split_is_deterministic_per_seed_and_differs_across_seeds():
    table = _features()
    a = split_table(table, Split(method="random", seed=1), "binary")
    b = split_table(table, Split(method="random", seed=1), "binary")
    c = split_table(table, Split(method="random", seed=2), "binary")
    for p in ("train", "valid", "test"):
        assert a[p].equals(b[p])
    assert set(_rows(a["test"])) != set(_rows(c["test"]))


def test_random_split_for_regression():
    table = _features(regression=True)
    parts = split_table(table, Split(method="random", test_fraction=0.25, valid_fraction=0.2, seed=5), "regression")
    assert {p: t.num_rows for p, t in parts.items()} == {"train": 600, "valid": 150, "test": 250}
    _assert_partition(parts, N)
    assert parts["test"][LABEL].type == pa.float64()


def test_time_split_works_without_split_seed_or_stratification():
    table = _features(regression=True)
    parts = split_table(table, Split(method="time", test_fraction=0.1, valid_fraction=0.1), "regression")
    _assert_partition(parts, N)


@pytest.mark.parametrize("method", ["time", "random"])
def test_too_little_data_names_the_empty_part(method):
    table = _features(n=3)
    with pytest.raises(DataError, match=r"split leaves valid empty \(3 rows\)"):
        split_table(table, Split(method=method, test_fraction=0.34, valid_fraction=0.1), "regression")


def test_too_little_data_for_the_holdout():
    with pytest.raises(DataError, match=r"split leaves valid, test empty \(3 rows\)"):
        split_table(_features(n=3), Split(method="time", test_fraction=0.1, valid_fraction=0.1), "regression")


def test_time_split_without_the_time_column():
    table = _features().drop_columns([TIME])
    with pytest.raises(DataError, match="split.time_column 'dep_at' is not in the data"):
        split_table(table, Split(method="time", time_column="dep_at"), "binary")
