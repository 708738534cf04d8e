"""tasks/evaluate.py pure functions: metrics on hand-checkable examples and the plot tables
that dvc.yaml's top-level `plots` read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from data2model.preprocess import LABEL, Preprocessor
from tasks.evaluate import choose_threshold, classification_metrics, evaluate, plot_tables, regression_metrics

ROOT = Path(__file__).resolve().parents[1]


def _pre(task: str, classes: list[str]) -> Preprocessor:
    return Preprocessor(task=task, target="t", label_rule=None, classes=classes, input_columns={}, numeric={}, categorical={})


def _dvc_plots() -> dict[str, dict]:
    """File stem -> plot definition, from dvc.yaml's top-level `plots` under paths.plots_dir."""
    plots = {}
    for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]:
        ((path, spec),) = entry.items()
        if path.startswith("${paths.plots_dir}/"):
            plots[Path(path).stem] = spec
    return plots


# --- metrics --------------------------------------------------------------------------------


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    found = classification_metrics(y, scores, "binary", 0.5)
    # 3 of the 4 (positive, negative) pairs are ordered right; at 0.5 only the 0.8 is positive
    assert found["auc"] == pytest.approx(0.75)
    assert found["accuracy"] == pytest.approx(0.75)
    assert found["precision"] == pytest.approx(1.0)
    assert found["recall"] == pytest.approx(0.5)
    assert found["f1"] == pytest.approx(2 / 3)
    assert found["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    assert found["log_loss"] == pytest.approx(-(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4)
    assert found["positive_rate"] == 0.5
    assert all(type(v) is float for v in found.values())


def test_threshold_moves_the_hard_predictions_not_the_auc():
    y = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    found = classification_metrics(y, scores, "binary", 0.3)
    assert found["recall"] == 1.0 and found["accuracy"] == pytest.approx(0.75)
    assert found["auc"] == pytest.approx(0.75)


def test_perfect_and_inverted_scores():
    y = np.array([0, 1, 0, 1, 1])
    perfect = classification_metrics(y, np.array([0.1, 0.9, 0.2, 0.8, 0.7]), "binary", 0.5)
    inverted = classification_metrics(y, np.array([0.9, 0.1, 0.8, 0.2, 0.3]), "binary", 0.5)
    assert perfect["auc"] == 1.0 and perfect["accuracy"] == 1.0 and perfect["f1"] == 1.0
    assert inverted["auc"] == 0.0 and inverted["accuracy"] == 0.0


def test_binary_auc_is_nan_with_one_class_in_the_holdout():
    found = classification_metrics(np.array([1, 1]), np.array([0.7, 0.2]), "binary", 0.5)
    assert math.isnan(found["auc"])
    assert found["accuracy"] == 0.5


def test_multiclass_metrics():
    y = np.array([0, 1, 2, 1])
    scores = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.6, 0.2]])
    found = classification_metrics(y, scores, "multiclass", 0.5)
    assert set(found) == {"accuracy", "log_loss", "f1_macro"}
    assert found["accuracy"] == pytest.approx(0.75)  # the class-2 row is predicted 0
    assert found["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.7) + math.log(0.3) + math.log(0.6)) / 4)
    # per class f1: 0 -> 2/3 (1 tp, 1 fp), 1 -> 1, 2 -> 0
    assert found["f1_macro"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_regression_metrics_by_hand():
    found = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 3.0, 2.0]))
    assert found["rmse"] == pytest.approx(math.sqrt(1.25))
    assert found["mae"] == pytest.approx(0.75)
    assert found["r2"] == pytest.approx(0.0)


def test_choose_threshold_takes_a_number_as_is_and_max_f1_from_the_data():
    y = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    assert choose_threshold(y, scores, 0.42) == 0.42
    # a cut at 0.3 (all three positives, one false positive: f1 6/7) beats 0.6 (f1 4/5)
    assert choose_threshold(y, scores, "max_f1") == pytest.approx(0.3)


# --- plot tables ----------------------------------------------------------------------------


def _binary_example(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    scores = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    return y, scores


def test_binary_plots_have_the_columns_dvc_yaml_names():
    y, scores = _binary_example()
    tables = plot_tables(y, scores, _pre("binary", ["0", "1"]), 0.5)
    plots = _dvc_plots()
    assert set(tables) == {"roc", "confusion", "calibration"}
    for name, table in tables.items():
        assert name in plots, f"dvc.yaml has no plot for {name}.csv"
        assert plots[name]["x"] in table.column_names and plots[name]["y"] in table.column_names, name


def test_regression_plot_has_the_columns_dvc_yaml_names():
    y = np.arange(10, dtype=np.float64)
    tables = plot_tables(y, y * 2, _pre("regression", []), 0.5)
    plots = _dvc_plots()
    assert set(tables) == {"predicted_vs_actual"}
    table = tables["predicted_vs_actual"]
    assert {plots["predicted_vs_actual"]["x"], plots["predicted_vs_actual"]["y"]} <= set(table.column_names)
    assert table["predicted"].to_pylist() == [2.0 * v for v in table["actual"].to_pylist()]


def test_every_dvc_plot_is_produced_by_some_task():
    binary = plot_tables(*_binary_example(), _pre("binary", ["0", "1"]), 0.5)
    regression = plot_tables(np.arange(3.0), np.arange(3.0), _pre("regression", []), 0.5)
    assert set(_dvc_plots()) == set(binary) | set(regression)


def test_regression_scatter_is_thinned_to_at_most_2000_points():
    y = np.arange(5000, dtype=np.float64)
    table = plot_tables(y, y, _pre("regression", []), 0.5)["predicted_vs_actual"]
    assert table.num_rows == 2000
    assert table["actual"][0].as_py() == 0.0 and table["actual"][-1].as_py() == 4999.0


def test_roc_runs_from_the_origin_to_the_corner():
    y, scores = _binary_example()
    roc = plot_tables(y, scores, _pre("binary", ["0", "1"]), 0.5)["roc"]
    fpr, tpr = roc["fpr"].to_numpy(), roc["tpr"].to_numpy()
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert roc.num_rows <= 200


def test_calibration_bins_cover_every_row():
    y = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.05, 0.15, 0.15, 0.95, 1.0, 0.55])
    cal = plot_tables(y, scores, _pre("binary", ["0", "1"]), 0.5)["calibration"].to_pydict()
    assert cal["count"] == [1, 2, 1, 2]  # bins 0, 1, 5 and 9 (a score of 1.0 lands in the last bin)
    assert cal["mean_predicted"] == pytest.approx([0.05, 0.15, 0.55, 0.975])
    assert cal["fraction_positive"] == pytest.approx([0.0, 0.5, 0.0, 1.0])


def test_confusion_uses_class_names():
    y = np.array([0, 1, 1, 0])
    tables = plot_tables(y, np.array([0.2, 0.7, 0.4, 0.9]), _pre("binary", ["late", "on_time"]), 0.5)
    assert tables["confusion"].to_pydict() == {"actual": ["late", "on_time", "on_time", "late"], "predicted": ["late", "on_time", "late", "on_time"]}


def test_multiclass_confusion_uses_class_names_and_argmax():
    y = np.array([2, 0, 1])
    scores = np.array([[0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3]])
    tables = plot_tables(y, scores, _pre("multiclass", ["a", "b", "c"]), 0.5)
    assert set(tables) == {"confusion"}
    assert tables["confusion"].to_pydict() == {"actual": ["c", "a", "b"], "predicted": ["c", "b", "b"]}


def test_evaluate_reports_task_rows_and_metrics():
    test = pa.table({"x": [1.0, 2.0, 3.0, 4.0], LABEL: [1.0, 2.0, 3.0, 4.0]})
    found, plots = evaluate(test, np.array([1.0, 3.0, 3.0, 2.0]), _pre("regression", []), 0.5)
    assert found["task"] == "regression" and found["rows"] == 4
    assert found["mae"] == pytest.approx(0.75)
    assert set(plots) == {"predicted_vs_actual"}


def test_a_split_is_scored_once_per_model_and_again_after_either_changes(tmp_path):
    """calibrate and then evaluate, in one `d2m run` process, score the same splits with the same
    model: the second gets the first's scores, read-only; a new model file or a rewritten split
    is scored again."""
    import os

    import pyarrow.parquet as pq
    import xgboost

    from data2model import scoring
    from data2model.trainers import write_meta
    from data2model.trainers.xgboost_ray import MODEL_FILE

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    model_dir, split = tmp_path / "model", tmp_path / "valid.parquet"

    def train(rounds: int) -> None:
        booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(x, label=x[:, 0] > 0, feature_names=["a", "b"]), rounds)
        write_meta(model_dir, {"framework": "xgboost", "feature_names": ["a", "b"], "feature_types": ["float", "float"]})
        booster.save_model(model_dir / MODEL_FILE)

    train(3)
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], LABEL: (x[:, 0] > 0).astype(int)}), split)
    table, first = scoring.scored_split(model_dir, split)
    assert table.num_rows == 200 and first.shape == (200,) and not first.flags.writeable
    assert scoring.scored_split(model_dir, split)[1] is first
    train(6)
    os.utime(model_dir / MODEL_FILE, ns=(1, 1))  # a new mtime, whatever the clock's resolution
    retrained = scoring.scored_split(model_dir, split)[1]
    assert retrained is not first and not np.allclose(retrained, first)
    pq.write_table(pa.table({"a": x[:100, 0], "b": x[:100, 1], LABEL: np.zeros(100, dtype=int)}), split)
    assert scoring.scored_split(model_dir, split)[1].shape == (100,)
