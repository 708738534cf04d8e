"""Monitoring's decisions on small tables: drift against a contract built by the validation
gate's own profiler, prediction drift, labels joined for live metrics, and the trigger's
cool-down and evidence window."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from data2model.contract import profile
from data2model.errors import DataError
from data2model.monitoring import assess, join_labels, live_metrics, served_rows, trigger_decision, window_start
from data2model.params import Data, Monitor

RNG = np.random.default_rng(0)
NOW = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)


def flights(n: int, month_low: int = 1, month_high: int = 12) -> pa.Table:
    return pa.table({
        "month": RNG.integers(month_low, month_high + 1, n),
        "distance": RNG.normal(1000, 300, n),
        "carrier": RNG.choice(["UA", "DL", "AA", "B6"], n),
        "flight": RNG.integers(1, 3000, n),
    })


def served(table: pa.Table, probability: np.ndarray | None = None) -> pa.Table:
    n = table.num_rows
    p = probability if probability is not None else RNG.uniform(0, 1, n)
    return (table.append_column("pred_prediction", pa.array((p > 0.5).astype(int)))
            .append_column("pred_probability", pa.array(p))
            .append_column("model_version", pa.array(["3"] * n))
            .append_column("logged_at", pa.array([NOW] * n, pa.timestamp("us", tz="UTC"))))


CONTRACT = profile(flights(20_000))
CFG = Monitor(min_rows=500)
REFERENCE = pa.chunked_array([RNG.uniform(0, 1, 5000)])


def test_in_distribution_traffic_is_no_breach():
    result = assess(served(flights(2000)), CONTRACT, REFERENCE, "binary", CFG)
    assert not result.breach and result.drifted == {} and result.prediction_psi < 0.05
    assert set(result.feature_psi) == {"month", "distance", "carrier", "flight"}


def test_a_later_period_drifts_and_names_the_column():
    result = assess(served(flights(2000, 11, 12)), CONTRACT, REFERENCE, "binary", CFG)
    assert result.breach and list(result.drifted) == ["month"]
    assert "month" in result.reasons[0] and "1 column(s) drifted" in result.reasons[0]


def test_shifted_predictions_alone_are_a_breach():
    result = assess(served(flights(2000), probability=RNG.uniform(0.8, 1.0, 2000)), CONTRACT, REFERENCE, "binary", CFG)
    assert result.drifted == {} and result.prediction_psi > 1 and "prediction distribution drifted" in result.reasons[0]


def test_too_little_traffic_is_reported_but_never_a_breach():
    result = assess(served(flights(200, 11, 12)), CONTRACT, REFERENCE, "binary", CFG)
    assert result.drifted and not result.breach


def test_cooldown_and_evidence_window():
    assert trigger_decision(False, None, NOW, 24) == (False, "no threshold crossed")
    assert trigger_decision(True, None, NOW, 24)[0]
    act, why = trigger_decision(True, NOW - timedelta(hours=2), NOW, 24)
    assert not act and "cool-down" in why
    assert trigger_decision(True, NOW - timedelta(hours=25), NOW, 24)[0]
    assert window_start(NOW, 24, None) == NOW - timedelta(hours=24)
    assert window_start(NOW, 24, NOW - timedelta(hours=1)) == NOW - timedelta(hours=1)  # evidence after the last trigger only


def test_live_metrics_join_labels_on_the_key_and_measure_the_drop():
    table = flights(3000)
    delay = RNG.normal(10, 30, 3000)
    probability = 1 / (1 + np.exp(-(delay + RNG.normal(0, 30, 3000) - 15) / 10))  # informative, far from perfect
    rows = served(table, probability)
    labels = pa.table({"carrier": table["carrier"], "flight": table["flight"], "month": table["month"], "arr_delay": delay}).slice(0, 2000)
    joined = join_labels(rows, labels, ["carrier", "flight", "month"])
    assert joined.num_rows >= 2000
    live = live_metrics(joined, "binary", Data(), {"auc": 0.99}, ["carrier"], 200)
    assert live["metric"] == "auc" and 0.6 < live["value"] < 0.95 and live["drop"] == pytest.approx(0.99 - live["value"], abs=1e-6)
    assert set(live["slices"]) == {"carrier=AA", "carrier=B6", "carrier=DL", "carrier=UA"}
    result = assess(rows, CONTRACT, REFERENCE, "binary", CFG, live)
    assert any("live auc" in r for r in result.reasons)


def test_a_timestamp_key_joins_across_units_and_zones():
    """The inference log keeps time_hour as zone-naive microseconds; a labels file has its own
    unit and often a zone (the raw data's time_hour is UTC milliseconds)."""
    hours = [datetime(2013, 11, 2, h, tzinfo=timezone.utc) for h in range(4)]
    logged = pa.table({"flight": [1, 2, 3, 4], "time_hour": pa.array([h.replace(tzinfo=None) for h in hours], pa.timestamp("us")), "pred_probability": [0.1, 0.2, 0.3, 0.4]})
    labels = pa.table({"flight": [1, 2, 3, 9], "time_hour": pa.array(hours, pa.timestamp("ms", tz="UTC")), "arr_delay": [5.0, 20.0, 40.0, 0.0]})
    joined = join_labels(logged, labels, ["flight", "time_hour"])
    assert dict(zip(joined["flight"].to_pylist(), joined["arr_delay"].to_pylist())) == {"1": 5.0, "2": 20.0, "3": 40.0}


def test_a_key_the_log_lacks_is_a_clear_error():
    with pytest.raises(DataError, match="monitor.key"):
        join_labels(served(flights(10)), pa.table({"tailnum": ["N1"]}), ["tailnum"])


def test_served_rows_reads_only_the_window(tmp_path):
    import pyarrow.parquet as pq

    old, new = served(flights(5)), served(flights(7))
    old = old.set_column(old.column_names.index("logged_at"), "logged_at", pa.array([NOW - timedelta(hours=30)] * 5, pa.timestamp("us", tz="UTC")))
    pq.write_table(old, tmp_path / "requests-1.parquet")
    pq.write_table(new, tmp_path / "requests-2.parquet")
    assert served_rows(tmp_path, NOW - timedelta(hours=24)).num_rows == 7
    assert served_rows(tmp_path / "none", NOW) is None
