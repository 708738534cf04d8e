"""`d2m tune`'s search: ASHA over a declared space on a real flights split, trials in MLflow,
the best config as train.xgboost overrides the params model accepts; a bad space is named."""

from __future__ import annotations

import mlflow
import pytest

from data2model.errors import D2MError
from data2model.params import check_overrides, parse_params
from data2model.tables import write_table
from data2model.tuning import domains, search
from tasks.features import build_features
from tasks.split import split_table
from tests.conftest import ROOT, small_flights


def test_a_bad_search_space_is_named():
    with pytest.raises(D2MError, match="tune.search_space.num_boost_round: not a tunable"):
        domains({"num_boost_round": {"randint": [10, 100]}})
    with pytest.raises(D2MError, match="tune.search_space.eta: expected one of loguniform"):
        domains({"eta": {"normal": [0.1, 0.01]}})
    with pytest.raises(D2MError, match="train.framework is torch"):
        search(parse_params({"train": {"framework": "torch"}}))


def test_asha_search_on_real_flights_logs_trials_and_returns_valid_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {
        "data": {"exclude": ["dep_time", "dep_delay", "arr_time", "air_time"]}, "split": {"method": "random"},
        "train": {"storage_path": str(tmp_path / "ray")},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_dir": str(tmp_path / "artifacts")},
        "tune": {"num_samples": 6, "max_rounds": 40, "grace_rounds": 4, "reduction_factor": 2},
    }
    params = parse_params(raw)
    features, pre = build_features(small_flights(6000), params)
    for part, table in split_table(features, params.split, pre.task).items():
        write_table(table, params.paths.split(part))
    pre.save(params.paths.preprocessor)
    found = search(params)
    assert found["trials"] == 6 and found["stopped_early"] >= 1 and found["metric"] == "logloss"
    assert set(found["overrides"]) == {f"train.xgboost.{k}" for k in ("eta", "max_depth", "min_child_weight")}
    check_overrides(found["overrides"], ROOT)
    client = mlflow.MlflowClient(params.tracking.uri)
    children = client.search_runs([client.get_run(found["mlflow_run_id"]).info.experiment_id], f"tags.mlflow.parentRunId = '{found['mlflow_run_id']}'")
    assert len(children) == 6 and min(r.data.metrics["valid_logloss"] for r in children) == pytest.approx(found["best_metric"])
