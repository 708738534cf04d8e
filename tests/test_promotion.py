"""The promotion gate (pure decision and scoring) and promote / rollback against a real MLflow
registry on SQLite."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import mlflow.pyfunc
import pytest
from mlflow.types import ColSpec, Schema

from data2model.canary import compare
from data2model.errors import CanaryFailed, D2MError
from data2model.params import Data, Register
from data2model.preprocess import LABEL
from data2model.promotion import Scores, audit_trail, decide, expected_calibration_error, model_frame, move_champion, rollback, score
from tasks.split import raw_holdout

RULES = Register(tolerance=0.002, max_slice_drop=0.02, min_slice_rows=200, max_ece=0.05)


# --- the decision ---------------------------------------------------------------------------


def test_better_challenger_is_promoted():
    d = decide("binary", Scores(0.70, ece=0.01), Scores(0.72, ece=0.01), RULES)
    assert d.promote and d.metric == "auc"
    assert d.table[0] == {"scope": "overall", "rows": None, "champion": 0.70, "challenger": 0.72, "change": 0.02}


def test_worse_challenger_is_not_promoted_and_the_reason_says_why():
    d = decide("binary", Scores(0.70, ece=0.01), Scores(0.69, ece=0.01), RULES)
    assert not d.promote
    assert "auc 0.6900 vs champion 0.7000" in d.reason and "tolerance 0.002" in d.reason


def test_challenger_within_tolerance_is_promoted_just_beyond_is_not():
    assert decide("binary", Scores(0.700, ece=0.01), Scores(0.6985, ece=0.01), RULES).promote
    assert not decide("binary", Scores(0.700, ece=0.01), Scores(0.6975, ece=0.01), RULES).promote


def test_a_slice_regression_blocks_even_when_overall_improves():
    champion = Scores(0.70, {"carrier=UA": (0.71, 500), "carrier=AA": (0.69, 400)}, ece=0.01)
    challenger = Scores(0.72, {"carrier=UA": (0.74, 500), "carrier=AA": (0.66, 400)}, ece=0.01)
    d = decide("binary", champion, challenger, RULES)
    assert not d.promote
    assert "slice carrier=AA" in d.reason and "carrier=UA" not in d.reason
    assert {r["scope"]: r["rows"] for r in d.table} == {"overall": None, "carrier=AA": 400, "carrier=UA": 500, "ece": None}


def test_slices_only_one_model_has_or_without_a_value_are_not_compared():
    champion = Scores(0.70, {"origin=JFK": (0.9, 300), "origin=EWR": (float("nan"), 300)}, ece=0.01)
    challenger = Scores(0.70, {"origin=LGA": (0.1, 300), "origin=EWR": (0.1, 300)}, ece=0.01)
    d = decide("binary", champion, challenger, RULES)
    assert d.promote and [r["scope"] for r in d.table] == ["overall", "ece"]


def test_calibration_error_above_max_blocks():
    d = decide("binary", Scores(0.70, ece=0.01), Scores(0.75, ece=0.08), RULES)
    assert not d.promote and "calibration error 0.0800 is above max_ece 0.05" in d.reason


def test_regression_metric_is_lower_is_better():
    better = decide("regression", Scores(10.0), Scores(9.0), RULES)
    worse = decide("regression", Scores(10.0), Scores(11.0), RULES)
    assert better.promote and better.metric == "rmse" and better.table[0]["change"] == 1.0
    assert not worse.promote and worse.table[0]["change"] == -1.0
    assert [r["scope"] for r in better.table] == ["overall"]  # no calibration rule outside binary


def test_every_failed_rule_is_listed():
    champion = Scores(0.70, {"carrier=AA": (0.70, 400)}, ece=0.01)
    d = decide("binary", champion, Scores(0.60, {"carrier=AA": (0.60, 400)}, ece=0.2), RULES)
    assert d.reason.count(";") == 2


# --- scoring --------------------------------------------------------------------------------


def test_ece_is_zero_when_calibrated_and_the_gap_when_not():
    y = np.array([0, 1] * 50)
    assert expected_calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)


def test_score_computes_per_slice_metrics_and_ignores_small_slices():
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.4).astype(int)
    p = np.clip(y * 0.6 + rng.random(1000) * 0.4, 0, 1)
    carrier = np.array(["UA"] * 700 + ["AA"] * 250 + ["XX"] * 50)
    s = score("binary", y, pd.DataFrame({"probability": p}), {"carrier": carrier}, min_rows=200)
    assert set(s.slices) == {"carrier=UA", "carrier=AA"} and s.slices["carrier=AA"][1] == 250
    assert s.overall > 0.9 and s.ece is not None
    from sklearn.metrics import roc_auc_score

    for name, rows in (("UA", slice(0, 700)), ("AA", slice(700, 950))):  # each slice scored on its own rows
        assert s.slices[f"carrier={name}"][0] == pytest.approx(roc_auc_score(y[rows], p[rows]))


def test_multiclass_scores_accuracy_on_class_values():
    out = pd.DataFrame({"prediction": ["a", "b", "b", "c"]})
    s = score("multiclass", np.array(["a", "b", "c", "c"], dtype=object), out, {}, min_rows=1)
    assert s.overall == 0.75 and s.ece is None


def test_raw_holdout_picks_the_same_rows_the_encoded_split_did():
    validated = pa.table({"x": [1.0, 2.0, 3.0, 4.0, 5.0], "arr_delay": [0.0, None, 30.0, 5.0, 60.0]})
    data = Data(target="arr_delay", label_rule="> 15", task="binary")
    # derive_label keeps rows 0, 2, 3, 4; the encoded test rows 1 and 3 are raw rows x=3 and x=5
    holdout = raw_holdout(validated, data, feature_rows=4, test_rows=np.array([1, 3]))
    assert holdout["x"].to_pylist() == [3.0, 5.0] and holdout[LABEL].to_pylist() == [1, 1]
    with pytest.raises(D2MError, match="rerun the features stage"):
        raw_holdout(validated, data, feature_rows=5, test_rows=np.array([1]))


def test_raw_holdout_codes_classes_found_on_the_whole_target():
    validated = pa.table({"x": [1, 2, 3, 4, 5], "kind": ["a", None, "b", "c", "c"]})
    data = Data(target="kind", label_rule=None, task="multiclass")
    # the holdout holds only "c" rows: its code is still 2 of a, b, c, as features encoded it
    holdout = raw_holdout(validated, data, feature_rows=4, test_rows=np.array([2, 3]))
    assert holdout["x"].to_pylist() == [4, 5] and holdout[LABEL].to_pylist() == [2, 2]
    with pytest.raises(D2MError, match="data.target 'gone' is not a column"):
        raw_holdout(validated, Data(target="gone", label_rule=None, task="multiclass"), feature_rows=4, test_rows=np.array([0]))


# --- promote / rollback on a real registry --------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Three versions of a tiny pyfunc in a SQLite-backed registry; version 1 is champion."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = mlflow.create_experiment("promotion", artifact_location=(root / "artifacts").as_uri())
    client = mlflow.MlflowClient()
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=["mlflow"])
    for _ in range(3):
        mlflow.register_model(info.model_uri, "gate-test")
    client.set_registered_model_alias("gate-test", "champion", "1")
    yield client
    mlflow.set_tracking_uri(None)


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"probability": np.full(len(model_input), 0.5)})


def _champion(client) -> str:
    return str(client.get_model_version_by_alias("gate-test", "champion").version)


def test_promote_then_rollback_moves_the_alias_and_keeps_an_audit_trail(registry):
    event = move_champion(registry, "gate-test", 2, "promote", "better on holdout")
    assert _champion(registry) == "2"
    assert event["previous_champion"] == "1" and event["status"] == "done"
    trail = audit_trail(registry, "gate-test", 2)
    assert [(e["action"], e["reason"], e["previous_champion"], e["status"]) for e in trail] == [("promote", "better on holdout", "1", "done")]
    assert trail[0]["at"].endswith("+00:00")

    move_champion(registry, "gate-test", 3, "promote", "even better")
    back = rollback(registry, "gate-test", "v3 misbehaves")
    assert _champion(registry) == "2" and back["previous_champion"] == "3"
    assert audit_trail(registry, "gate-test", 2)[-1]["action"] == "rollback"
    rollback(registry, "gate-test", "further back")  # walks the chain, not a toggle
    assert _champion(registry) == "1"
    with pytest.raises(D2MError, match="records no previous champion"):
        rollback(registry, "gate-test", "nothing before 1")
    assert _champion(registry) == "1"


def test_promote_refuses_unknown_or_current_versions_and_leaves_the_champion(registry):
    before = _champion(registry)
    with pytest.raises(D2MError, match="has no version 99"):
        move_champion(registry, "gate-test", 99, "promote", "typo")
    with pytest.raises(D2MError, match="already the champion"):
        move_champion(registry, "gate-test", before, "promote", "again")
    assert _champion(registry) == before


def test_a_failing_alias_move_leaves_the_old_champion_and_a_pending_event(registry, monkeypatch):
    before = _champion(registry)
    target = "3" if before != "3" else "2"

    def fail(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(registry, "set_registered_model_alias", fail)
    with pytest.raises(RuntimeError):
        move_champion(registry, "gate-test", target, "promote", "will fail")
    assert _champion(registry) == before
    assert audit_trail(registry, "gate-test", target)[-1]["status"] == "pending"


def test_a_failed_canary_moves_nothing_and_is_audited_as_blocked(registry):
    before = _champion(registry)
    target = "3" if before != "3" else "2"

    def failing_canary(name, version):
        raise CanaryFailed("the server answered holdout rows with HTTP 400: field 'x'")

    with pytest.raises(D2MError, match=f"champion stays {before}: canary failed: the server answered"):
        move_champion(registry, "gate-test", target, "promote", "looks good", check=failing_canary)
    assert _champion(registry) == before
    blocked = audit_trail(registry, "gate-test", target)[-1]
    assert blocked["status"] == "blocked" and blocked["canary"]["passed"] is False and "HTTP 400" in blocked["canary"]["reason"]
    event = move_champion(registry, "gate-test", target, "promote", "canary passes", check=lambda name, version: {"passed": True, "p50_ms": 3.0})
    assert _champion(registry) == target and event["canary"] == {"passed": True, "p50_ms": 3.0}
    rollback(registry, "gate-test", "restore for the next test")
    assert _champion(registry) == before


def test_canary_compare_takes_numbers_within_tolerance_and_nothing_else():
    expected = pd.DataFrame({"prediction": [0, 1], "probability": [0.25, 0.75]})
    assert compare(expected, [{"prediction": 0, "probability": 0.25 + 1e-9}, {"prediction": 1, "probability": 0.75}], 1e-6) == pytest.approx(1e-9)
    for served, words in [
        ([{"prediction": 0, "probability": 0.3}, {"prediction": 1, "probability": 0.75}], "probability differs"),
        ([{"prediction": 0, "probability": 0.25}], "1 predictions for 2 rows"),
        ([{"prediction": 0, "p": 0.25}, {"prediction": 1, "p": 0.75}], "columns"),
    ]:
        with pytest.raises(CanaryFailed, match=words):
            compare(expected, served, 1e-6)
    labels = pd.DataFrame({"prediction": ["EWR", "JFK"]})
    with pytest.raises(CanaryFailed, match="prediction differs"):
        compare(labels, [{"prediction": "EWR"}, {"prediction": "LGA"}], 0.0)


def test_cli_promote_and_rollback_exit_codes(registry, tmp_path, monkeypatch, capsys):
    import mlflow

    from data2model.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"register:\n  model_name: gate-test\n  canary:\n    enabled: false\ntracking:\n  uri: {mlflow.get_tracking_uri()}\n  experiment: promotion\n")
    before = _champion(registry)
    target = "3" if before != "3" else "2"
    assert main(["promote", target, "--reason", "from the cli"]) == 0
    assert _champion(registry) == target and "champion is now version" in capsys.readouterr().out
    assert main(["promote", "99", "--reason", "x"]) == 1
    assert main(["rollback", "--reason", "cli rollback"]) == 0
    assert _champion(registry) == before
    with pytest.raises(SystemExit) as usage:
        main(["promote", "2"])  # --reason is required
    assert usage.value.code == 2
    assert audit_trail(registry, "gate-test", before)[-1]["reason"] == "cli rollback"


def test_model_frame_follows_the_schema_or_sends_every_raw_column_without_one():
    table = pa.table(
        {
            "n": pa.array([1, 2], pa.int32()),
            "t": pa.array([dt.datetime(2013, 1, 1, 5, tzinfo=dt.timezone.utc)] * 2, pa.timestamp("s", tz="UTC")),
            LABEL: [0, 1],
        }
    )
    typed = model_frame(table, Schema([ColSpec("double", "n"), ColSpec("datetime", "t")]))
    assert list(typed.columns) == ["n", "t"] and typed["n"].dtype == np.float64 and typed["t"].dt.tz is None
    assert list(model_frame(table, None).columns) == ["n", "t"]
