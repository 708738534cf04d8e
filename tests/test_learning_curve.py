"""learning_curve: the power-law fit recovers known parameters with honest uncertainty, and the
stage's core measures a falling curve on real flights for a classification and a regression
target, with nested random subsets trained as Ray tasks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data2model.errors import D2MError, ParamsError
from data2model.params import LearningCurve, parse_params
from tasks.features import build_features
from tasks.learning_curve import curve_points, fit_power_law, learning_curve, power_law
from tasks.split import split_table
from tests.conftest import small_flights

FRACTIONS = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]


def test_fit_recovers_a_known_power_law_within_its_standard_error():
    rng = np.random.default_rng(0)
    rows = np.repeat(np.array([500, 1000, 2000, 4000, 8000, 16000], dtype=float), 3)
    error = power_law(rows, 3.0, 0.4, 0.2) * (1 + rng.normal(0, 0.005, len(rows)))
    law = fit_power_law(rows, error, 16000, seed=0)
    assert abs(law["b"] - 0.4) < 3 * law["b_std"] + 0.02 and law["b_std"] < 0.1
    assert law["c"] == pytest.approx(0.2, abs=0.03)
    truth_gain = power_law(16000, 3.0, 0.4, 0.2) - power_law(160000, 3.0, 0.4, 0.2)
    assert law["gain_10x_p05"] <= truth_gain * 1.2 and law["gain_10x_p95"] >= truth_gain * 0.8
    assert 0 < law["gain_2x"] < law["gain_10x"]


def test_too_few_sizes_is_a_clear_error():
    with pytest.raises(D2MError, match="at least 4 distinct training sizes"):
        fit_power_law(np.array([100.0, 200.0, 400.0]), np.array([0.5, 0.4, 0.35]), 400, seed=0)
    with pytest.raises(ParamsError, match="learning_curve.fractions"):
        parse_params({"learning_curve": {"fractions": [0.5, 1.0, 2.0, 0.25]}})


@pytest.fixture(scope="module")
def flights() -> pa.Table:
    return small_flights(16000)


@pytest.mark.parametrize(("task", "data"), [
    ("binary", {}),
    ("regression", {"label_rule": None, "task": "regression"}),
])
def test_error_falls_with_more_rows_on_real_flights(flights, ray_cluster, task, data):
    params = parse_params({"data": {"exclude": ["dep_time", "dep_delay", "arr_time", "air_time"], **data}, "split": {"method": "random"}})
    features, pre = build_features(flights, params)
    parts = split_table(features, params.split, pre.task)
    knobs = LearningCurve(enabled=True, fractions=FRACTIONS, repeats=2, num_boost_round=200)
    points = curve_points(parts["train"], parts["valid"], parts["test"], pre, knobs)
    assert points.num_rows == len(FRACTIONS) * 2
    assert sorted(set(points["rows"].to_pylist()))[-1] == parts["train"].num_rows
    report, plot = learning_curve(points, parts["train"].num_rows, pre.task, seed=0)
    rows, error = points["rows"].to_numpy(), points["error"].to_numpy()
    print(f"{task}: b={report['b']:.3f}+/-{report['b_std']:.3f} c={report['c']:.4f} gain2x={report['gain_2x']:.4f} gain10x={report['gain_10x']:.4f} {report['error_metric']}@1x={report['error_1x']:.4f}")
    assert error[rows == rows.max()].mean() < error[rows == rows.min()].mean()
    assert report["b"] > 0 and report["gain_10x"] >= report["gain_2x"] >= 0
    assert set(plot["kind"].to_pylist()) == {"measured", "fitted"}
