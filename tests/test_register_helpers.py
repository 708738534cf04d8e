"""tasks/register.py pure helpers (signature, example, aliases, round-trip check, pins) and
served_model.predictions_frame, the served model's output shape."""

from __future__ import annotations

import datetime as dt
from importlib import metadata

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from data2model.errors import D2MError
from data2model.preprocess import Preprocessor
from data2model.served_model import predictions_frame
from data2model.tables import Footer
from tasks.register import check_round_trip, input_example, input_schema, requirements

UTC = dt.timezone.utc


def _raw() -> pa.Table:
    n = 8
    return pa.table(
        {
            "flight": pa.array(range(n), pa.int64()),
            # the only null is past the example's 5 rows: the client type still follows all rows
            "dep_hour": pa.array([5, 6, 7, 8, 9, 10, 11, None], pa.int32()),
            "time_hour": pa.array([dt.datetime(2013, 1, 1, h, tzinfo=UTC) for h in range(n)], pa.timestamp("s", tz="UTC")),
            "carrier": ["UA", None, "AA", "DL", "UA", "B6", "UA", "AA"],
            "origin": ["JFK"] * n,
            "distance": [100.0 * i for i in range(n)],
            "weekend": [i % 2 == 0 for i in range(n)],
        }
    )


def _footer(table: pa.Table) -> Footer:
    return Footer(table.schema, table.num_rows, {name: table[name].null_count for name in table.column_names})


def _pre(task: str, classes: list[str], label_rule: str | None = None) -> Preprocessor:
    return Preprocessor(task=task, target="t", label_rule=label_rule, classes=classes, input_columns={}, numeric={}, categorical={})


# --- signature and example ------------------------------------------------------------------


def test_input_schema_types_and_optionality():
    specs = {c.name: (c.type.name, c.required) for c in input_schema(_footer(_raw())).inputs}
    assert specs == {
        "flight": ("long", True),
        "dep_hour": ("double", False),  # an int that can be missing arrives as NaN
        "time_hour": ("datetime", True),
        "carrier": ("string", False),
        "origin": ("string", True),
        "distance": ("double", True),
        "weekend": ("boolean", True),
    }


def test_input_schema_keeps_the_column_order():
    assert [c.name for c in input_schema(_footer(_raw())).inputs] == _raw().column_names


def test_input_example_is_five_rows_in_client_types():
    example = input_example(_raw(), _footer(_raw()))
    assert isinstance(example, pd.DataFrame)
    assert list(example.columns) == _raw().column_names
    assert len(example) == 5
    assert example["flight"].dtype == np.int64
    assert example["dep_hour"].dtype == np.float64
    assert example["dep_hour"].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert example["distance"].dtype == np.float64


def test_input_example_timestamps_are_zone_naive_utc():
    raw = _raw()
    ny = raw.set_column(2, "time_hour", raw["time_hour"].cast(pa.timestamp("s", tz="America/New_York")))
    for table in (raw, ny):
        column = input_example(table, _footer(table))["time_hour"]
        assert column.dt.tz is None
        assert column.iloc[0] == pd.Timestamp("2013-01-01 00:00:00")
        assert column.iloc[4] == pd.Timestamp("2013-01-01 04:00:00")


# --- round trip -----------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"prediction": ["late", "on_time"], "probability": [0.75, 0.25]})


def test_round_trip_passes_on_equal_frames_and_tiny_float_noise():
    check_round_trip(_frame(), _frame())
    noisy = _frame().assign(probability=[0.75 * (1 + 1e-7), 0.25])
    check_round_trip(_frame(), noisy)


def test_round_trip_catches_a_different_number():
    with pytest.raises(D2MError, match="probability differs"):
        check_round_trip(_frame(), _frame().assign(probability=[0.75, 0.26]))


def test_round_trip_catches_a_different_class():
    with pytest.raises(D2MError, match="prediction differs"):
        check_round_trip(_frame(), _frame().assign(prediction=["late", "late"]))


@pytest.mark.parametrize(
    "served",
    [
        pd.DataFrame({"prediction": ["late", "on_time"]}),
        pd.DataFrame({"probability": [0.75, 0.25], "prediction": ["late", "on_time"]}),
        pd.DataFrame({"prediction": ["late"], "probability": [0.75]}),
    ],
    ids=["missing-column", "column-order", "fewer-rows"],
)
def test_round_trip_catches_a_different_shape(served):
    with pytest.raises(D2MError, match="the logged model answered columns"):
        check_round_trip(_frame(), served)


# --- requirements ---------------------------------------------------------------------------


def test_requirements_pin_the_installed_versions():
    pins = dict(line.split("==") for line in requirements("xgboost"))
    assert set(pins) == {"mlflow", "numpy", "pandas", "pyarrow", "pydantic", "pyyaml", "xgboost"}
    for name, version in pins.items():
        assert version == metadata.version(name)
    assert "torch" in {line.split("==")[0] for line in requirements("torch")}
    assert "xgboost" not in {line.split("==")[0] for line in requirements("torch")}


# --- predictions_frame ----------------------------------------------------------------------


def test_binary_with_a_label_rule_predicts_zero_or_one():
    out = predictions_frame(np.array([0.1, 0.6, 0.4], np.float32), _pre("binary", ["0", "1"], "> 15"), 0.5)
    assert list(out.columns) == ["prediction", "probability"]
    assert out["prediction"].tolist() == [0, 1, 0]
    assert all(isinstance(v, int) for v in out["prediction"].tolist())
    assert out["probability"].dtype == np.float64
    assert out["probability"].tolist() == pytest.approx([0.1, 0.6, 0.4])


def test_binary_threshold_decides():
    out = predictions_frame(np.array([0.1, 0.6, 0.4]), _pre("binary", ["0", "1"], "> 15"), 0.35)
    assert out["prediction"].tolist() == [0, 1, 1]


def test_binary_with_string_classes_predicts_the_class_names():
    out = predictions_frame(np.array([0.9, 0.2]), _pre("binary", ["late", "on_time"]), 0.5)
    assert out["prediction"].tolist() == ["on_time", "late"]
    assert out["probability"].tolist() == [0.9, 0.2]


def test_multiclass_gives_one_probability_column_per_class():
    scores = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], np.float32)
    out = predictions_frame(scores, _pre("multiclass", ["a", "b", "c"]), 0.5)
    assert list(out.columns) == ["prediction", "probability_a", "probability_b", "probability_c"]
    assert out["prediction"].tolist() == ["b", "a"]
    probabilities = out[["probability_a", "probability_b", "probability_c"]].to_numpy()
    assert probabilities.dtype == np.float64
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert probabilities == pytest.approx(scores)


def test_regression_gives_the_value():
    out = predictions_frame(np.array([1.5, -2.0], np.float32), _pre("regression", []), 0.5)
    assert list(out.columns) == ["prediction"]
    assert out["prediction"].dtype == np.float64
    assert out["prediction"].tolist() == [1.5, -2.0]
