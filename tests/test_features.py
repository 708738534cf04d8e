"""preprocess.py and tasks/features.py: labels, the fitted preprocessor, and the feature table."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from data2model.errors import DataError
from data2model.params import Data, Features, parse_params
from data2model.preprocess import LABEL, TIME, UNSEEN, Preprocessor, derive_label, fit_preprocessor
from tasks.features import build_features

UTC = dt.timezone.utc
ALL = Features(min_category_count=1)  # keep every level unless a test is about pruning


# --- derive_label ---------------------------------------------------------------------------


def test_label_rule_gives_zero_one_and_drops_rows_without_a_target():
    raw = pa.table({"delay": [10.0, 20.0, None, 15.0, 16.0], "row": [0, 1, 2, 3, 4]})
    out, classes = derive_label(raw, Data(target="delay", label_rule="> 15"))
    assert classes == ["0", "1"]
    assert out["row"].to_pylist() == [0, 1, 3, 4]
    assert out[LABEL].to_pylist() == [0, 1, 0, 1]
    assert out.schema.field(LABEL).type == pa.int32()


@pytest.mark.parametrize("rule, expected", [(">= 15", [0, 1, 1, 1]), ("< 15", [1, 0, 0, 0]), ("== 15", [0, 0, 1, 0]), ("!= 15", [1, 1, 0, 1])])
def test_every_rule_operator(rule, expected):
    raw = pa.table({"delay": pa.array([10, 20, 15, 16], pa.int64())})
    assert derive_label(raw, Data(target="delay", label_rule=rule))[0][LABEL].to_pylist() == expected


def test_binary_without_rule_encodes_two_string_classes_in_sorted_order():
    raw = pa.table({"status": ["on_time", "late", None, "late"]})
    out, classes = derive_label(raw, Data(target="status", label_rule=None, task="binary"))
    assert classes == ["late", "on_time"]
    assert out[LABEL].to_pylist() == [1, 0, 0]


def test_multiclass_labels_index_the_sorted_classes():
    raw = pa.table({"kind": ["b", "a", "c", "a", None]})
    out, classes = derive_label(raw, Data(target="kind", label_rule=None, task="multiclass"))
    assert classes == ["a", "b", "c"]
    assert out[LABEL].to_pylist() == [1, 0, 2, 0]


def test_regression_label_is_the_target_as_float():
    raw = pa.table({"y": pa.array([3, None, -1], pa.int32())})
    out, classes = derive_label(raw, Data(target="y", label_rule=None, task="regression"))
    assert classes == []
    assert out[LABEL].type == pa.float64()
    assert out[LABEL].to_pylist() == [3.0, -1.0]


def test_missing_target_is_named():
    with pytest.raises(DataError, match=r"data.target 'delay' is not a column \(columns: a, b\)"):
        derive_label(pa.table({"a": [1], "b": [2]}), Data(target="delay"))


def test_all_null_target():
    with pytest.raises(DataError, match="null in every row"):
        derive_label(pa.table({"delay": pa.array([None, None], pa.float64())}), Data(target="delay"))


def test_binary_with_three_classes():
    with pytest.raises(DataError, match="needs exactly 2 distinct values in 'c', found 3"):
        derive_label(pa.table({"c": ["x", "y", "z"]}), Data(target="c", label_rule=None, task="binary"))


def test_multiclass_with_one_class():
    with pytest.raises(DataError, match="needs at least 2 distinct values in 'c', found 1"):
        derive_label(pa.table({"c": ["x", "x"]}), Data(target="c", label_rule=None, task="multiclass"))


# --- fit_preprocessor and transform ---------------------------------------------------------


def _fit(table: pa.Table, features: Features = ALL, **data) -> Preprocessor:
    data = Data(**{"target": "y", "label_rule": None, "task": "regression", **data})
    labelled, classes = derive_label(table, data)
    return fit_preprocessor(labelled, data, features, classes)


def test_numeric_nulls_are_filled_with_the_training_median():
    train = pa.table({"x": [1.0, 2.0, None, 4.0, 100.0], "y": [0.0] * 5})
    pre = _fit(train)
    assert pre.numeric["x"]["fill"] == 3.0
    out = pre.transform(pa.table({"x": pa.array([None, 7.0], pa.float64())}))
    assert out["x"].to_pylist() == [3.0, 7.0]
    assert out.schema.field("x").type == pa.float32()
    assert pre.transform(train)["x"].to_pylist() == [1.0, 2.0, 3.0, 4.0, 100.0]


def test_unseen_and_null_categories_get_code_zero():
    pre = _fit(pa.table({"c": ["b", "a", "b", None], "y": [0.0] * 4}))
    assert pre.categorical["c"] == ["a", "b"]
    codes = pre.transform(pa.table({"c": ["a", "b", "never seen", None]}))["c"].to_pylist()
    assert codes == [1, 2, UNSEEN, UNSEEN]
    assert pre.cardinalities == {"c": 3}


def test_features_categorical_turns_a_numeric_column_into_categories():
    train = pa.table({"flight": [1545, 1545, 33, 7], "distance": [100, 200, 300, 400], "y": [0.0] * 4})
    pre = _fit(train, Features(categorical=["flight"], min_category_count=1))
    assert "flight" in pre.categorical and "flight" not in pre.numeric
    assert "distance" in pre.numeric
    assert pre.categorical["flight"] == ["1545", "33", "7"]
    out = pre.transform(pa.table({"flight": [33, 1545, 999], "distance": [1, 2, 3]}))
    assert out["flight"].to_pylist() == [2, 1, UNSEEN]
    assert out.schema.field("flight").type == pa.int32()


def test_features_categorical_naming_an_absent_column():
    with pytest.raises(DataError, match="features.categorical names column\\(s\\) not in the data: nope"):
        _fit(pa.table({"a": [1, 2], "y": [0.0, 1.0]}), Features(categorical=["nope"]))


def test_max_categories_keeps_the_most_frequent_levels():
    c = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"]
    pre = _fit(pa.table({"c": c, "y": [0.0] * len(c)}), Features(max_categories=2, min_category_count=1))
    assert pre.categorical["c"] == ["a", "b"]
    assert pre.transform(pa.table({"c": ["a", "b", "c", "d"]}))["c"].to_pylist() == [1, 2, UNSEEN, UNSEEN]


def test_min_category_count_drops_rare_levels():
    c = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"]
    pre = _fit(pa.table({"c": c, "y": [0.0] * len(c)}), Features(max_categories=10, min_category_count=3))
    assert pre.categorical["c"] == ["a", "b", "c"]


def test_excluded_columns_and_the_target_are_not_inputs():
    train = pa.table({"x": [1.0, 2.0], "leak": [5.0, 6.0], "y": [0.0, 1.0]})
    pre = _fit(train, exclude=["leak"])
    assert list(pre.input_columns) == ["x"]
    assert pre.feature_names == ["x"]
    out = pre.transform(pa.table({"x": [3.0]}))  # serving needs neither the leak nor the target
    assert out.column_names == ["x"]


def test_nothing_left_to_learn_from():
    with pytest.raises(DataError, match="no feature columns left"):
        _fit(pa.table({"leak": [1.0, 2.0], "y": [0.0, 1.0]}), exclude=["leak"])


# 02:30 UTC on 1 Jan 2013 is still 31 Dec 2012 in New York: a zone mix-up changes every part.
INSTANT = dt.datetime(2013, 1, 1, 2, 30, tzinfo=UTC)


def _timestamp_preprocessor() -> Preprocessor:
    times = [INSTANT + dt.timedelta(days=d) for d in range(5)]
    return _fit(pa.table({"when": pa.array(times, pa.timestamp("us", tz="UTC")), "y": [0.0] * 5}))


def test_timestamps_become_calendar_features():
    pre = _timestamp_preprocessor()
    assert pre.timestamps == ["when"]
    assert pre.feature_names == ["when_hour", "when_dow", "when_month", "when_doy"]
    out = pre.transform(pa.table({"when": pa.array([INSTANT], pa.timestamp("us", tz="UTC"))}))
    # 2013-01-01 is a Tuesday (Monday = 0)
    assert out.to_pylist() == [{"when_hour": 2.0, "when_dow": 1.0, "when_month": 1.0, "when_doy": 1.0}]


@pytest.mark.parametrize(
    "column",
    [
        pa.array([INSTANT], pa.timestamp("s", tz="UTC")),
        pa.array([INSTANT], pa.timestamp("us", tz="America/New_York")),
        pa.array([INSTANT.replace(tzinfo=None)], pa.timestamp("ns")),
        pa.array(["2013-01-01T02:30:00Z"]),
        pa.array(["2013-01-01T02:30:00+00:00"]),
        pa.array(["2012-12-31T21:30:00-05:00"]),
        pa.array(["2013-01-01T02:30:00"]),
    ],
    ids=["utc-s", "new-york", "naive-ns", "iso-Z", "iso-+00:00", "iso--05:00", "iso-naive"],
)
def test_the_same_instant_in_any_form_gives_the_same_features(column):
    pre = _timestamp_preprocessor()
    reference = pre.transform(pa.table({"when": pa.array([INSTANT], pa.timestamp("us", tz="UTC"))}))
    assert pre.transform(pa.table({"when": column})).equals(reference)


def test_text_that_is_not_a_timestamp():
    with pytest.raises(DataError, match="column when must hold timestamps"):
        _timestamp_preprocessor().transform(pa.table({"when": ["yesterday"]}))


def test_transform_names_a_missing_input_column():
    pre = _fit(pa.table({"a": [1.0, 2.0], "b": ["x", "y"], "c": [1, 2], "y": [0.0, 1.0]}))
    with pytest.raises(DataError, match="input is missing column\\(s\\) b, c"):
        pre.transform(pa.table({"a": [1.0]}))


def test_transform_ignores_extra_columns_and_column_order():
    pre = _fit(pa.table({"a": [1.0, 2.0], "b": ["x", "y"], "y": [0.0, 1.0]}))
    out = pre.transform(pa.table({"extra": [0], "b": ["y"], "a": [5.0]}))
    assert out.to_pylist() == [{"a": 5.0, "b": 2}]


def test_numeric_input_that_is_not_a_number():
    pre = _fit(pa.table({"a": [1.0, 2.0], "y": [0.0, 1.0]}))
    with pytest.raises(DataError, match="column a must be numeric"):
        pre.transform(pa.table({"a": ["fast"]}))


def test_save_and_load_round_trip(tmp_path):
    train = pa.table(
        {
            "x": [1.5, None, 3.0],
            "c": ["p", "q", "p"],
            "when": pa.array([INSTANT, INSTANT, None], pa.timestamp("us", tz="UTC")),
            "y": ["no", "yes", "no"],
        }
    )
    pre = _fit(train, task="binary")
    pre.save(tmp_path / "pre.json")
    loaded = Preprocessor.load(tmp_path / "pre.json")
    assert loaded == pre
    assert loaded.classes == ["no", "yes"]
    # write_json sorts keys, so the loaded feature order may differ; scorers select by name.
    fitted, served = pre.transform(train), loaded.transform(train)
    assert sorted(served.column_names) == sorted(fitted.column_names)
    assert served.select(fitted.column_names).equals(fitted)


# --- build_features -------------------------------------------------------------------------


def test_build_features_keeps_the_split_time_column_and_the_label():
    times = [dt.datetime(2013, 1, 1, h, tzinfo=UTC) for h in range(4)]
    raw = pa.table(
        {
            "time_hour": pa.array(times, pa.timestamp("s", tz="UTC")),
            "origin": ["JFK", "EWR", "JFK", "LGA"],
            "dep_delay": [1.0, 2.0, 3.0, 4.0],
            "arr_delay": [30.0, None, 0.0, 16.0],
        }
    )
    params = parse_params({"data": {"exclude": ["dep_delay"]}, "features": {"min_category_count": 1}})
    table, pre = build_features(raw, params)
    assert table.num_rows == 3  # the row without arr_delay is gone
    assert table[TIME].to_pylist() == [times[0], times[2], times[3]]
    assert table[LABEL].to_pylist() == [1, 0, 1]
    assert set(table.column_names) == {*pre.feature_names, LABEL, TIME}
    assert "dep_delay" not in table.column_names and "arr_delay" not in table.column_names
    assert table["time_hour_hour"].to_pylist() == [0.0, 2.0, 3.0]


def test_build_features_without_a_time_column_adds_none():
    raw = pa.table({"x": [1.0, 2.0, 3.0], "arr_delay": [1.0, 20.0, 30.0]})
    params = parse_params({"split": {"method": "random", "time_column": None}})
    table, _ = build_features(raw, params)
    assert table.column_names == ["x", LABEL]


# --- the stage edge: streaming ---------------------------------------------------------------


def _stage_params(tmp_path, **sections):
    paths = {"validated": str(tmp_path / "validated.parquet"), "features": str(tmp_path / "features.parquet"), "preprocessor": str(tmp_path / "pre.json")}
    return parse_params({"paths": paths, **sections})


def test_run_streams_batches_and_matches_the_in_memory_table(tmp_path):
    """Many small batches, a class that first appears in the last one, a batch whose targets
    are all null: the streamed output equals build_features on the whole table."""
    import pyarrow.parquet as pq

    from tasks import features

    n = 5000
    kinds = ["a", "b"] * (n // 2 - 50) + ["c"] * 100
    target = pa.array([None] * 1000 + kinds[1000:], pa.string())
    raw = pa.table({"x": pa.array([float(i % 97) for i in range(n)]), "g": [f"g{i % 7}" for i in range(n)], "kind": target})
    params = _stage_params(tmp_path, data={"target": "kind", "label_rule": None, "task": "multiclass", "batch_rows": 1000}, split={"method": "random", "time_column": None}, features={"min_category_count": 1})
    pq.write_table(raw, params.paths.validated)
    summary = features.run(params)
    expected, pre = build_features(raw, params)
    streamed = pq.read_table(params.paths.features)
    assert summary["rows"] == summary["fitted_on_rows"] == 4000 == streamed.num_rows
    assert streamed.equals(expected.cast(streamed.schema))
    assert Preprocessor.load(params.paths.preprocessor) == pre and pre.classes == ["a", "b", "c"]


def test_run_fits_on_a_seeded_sample_when_the_data_is_larger(tmp_path):
    import pyarrow.parquet as pq

    from tasks import features

    raw = pa.table({"x": pa.array([float(i) for i in range(20000)]), "arr_delay": pa.array([float(i % 40) for i in range(20000)])})
    params = _stage_params(tmp_path, data={"batch_rows": 1000}, split={"method": "random", "time_column": None}, features={"fit_sample_rows": 2000})
    pq.write_table(raw, params.paths.validated)
    first = features.run(params)
    fitted = Preprocessor.load(params.paths.preprocessor)
    assert first["rows"] == 20000 and 1700 < first["fitted_on_rows"] < 2300
    assert abs(fitted.numeric["x"]["fill"] - 10000) < 1000  # the sample's median is near the data's
    assert features.run(params) == first and Preprocessor.load(params.paths.preprocessor) == fitted  # same seed, same sample
    assert pq.read_table(params.paths.features).num_rows == 20000
