"""The PyTorch trainer end to end on small learnable tables: 2 Ray workers (DDP on gloo), MLflow
on SQLite, then the saved model folder scored back through data2model.scoring."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from data2model.params import Data, Features, TorchParams, Train
from data2model.preprocess import LABEL, derive_label, fit_preprocessor
from data2model.scoring import load_scorer
from data2model.trainers import TrainJob, torch_mlp

TRAIN_ROWS, VALID_ROWS, TEST_ROWS = 2400, 600, 2000
EPOCHS, PATIENCE = 12, 2


def raw_table(rows: int, seed: int) -> pa.Table:
    """Numeric columns on different scales (one with nulls), two categorical columns, and three
    targets with signal in both kinds of column."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    x3 = 1000 + 50 * rng.normal(size=rows)
    colour = rng.integers(0, 5, size=rows)
    shape = rng.integers(0, 8, size=rows)
    colour_effect = np.array([-1.5, -0.5, 0.0, 0.5, 1.5])[colour]
    shape_effect = np.linspace(-1, 1, 8)[shape]
    logit = 2 * x1 - x2 + colour_effect + (x3 - 1000) / 50
    scores = np.column_stack([x1 + colour_effect, -x1 + shape_effect, x2]) + 0.3 * rng.normal(size=(rows, 3))
    x2_with_nulls = pa.array(np.where(rng.random(rows) < 0.05, np.nan, x2), from_pandas=True)
    return pa.table({
        "x1": x1, "x2": x2_with_nulls, "x3": x3,
        "colour": [f"c{i}" for i in colour], "shape": [f"s{i}" for i in shape],
        "flag": logit + rng.logistic(size=rows),
        "kind": [["ant", "bee", "cat"][i] for i in scores.argmax(axis=1)],
        "amount": 100 + 3 * x1 + x2**2 + 2 * shape_effect + 0.3 * rng.normal(size=rows),
    })


DATA = {
    "binary": Data(target="flag", label_rule="> 0", task="binary", exclude=["kind", "amount"]),
    "multiclass": Data(target="kind", label_rule=None, task="multiclass", exclude=["flag", "amount"]),
    "regression": Data(target="amount", label_rule=None, task="regression", exclude=["flag", "kind"]),
}


def encode(raw: pa.Table, data: Data, pre=None):
    labelled, classes = derive_label(raw, data)
    pre = pre or fit_preprocessor(labelled, data, Features(), classes)
    return pre.transform(labelled).append_column(LABEL, labelled[LABEL]), pre


def train(task: str, root: Path, tracking_uri: str):
    """Fit on 2 workers; return the outcome, the preprocessor, the test features and labels,
    and the run id the epochs were logged to."""
    data = DATA[task]
    train_table, pre = encode(raw_table(TRAIN_ROWS, seed=1), data)
    valid_table, _ = encode(raw_table(VALID_ROWS, seed=2), data, pre)
    test_table, _ = encode(raw_table(TEST_ROWS, seed=3), data, pre)
    pq.write_table(train_table, root / "train.parquet")
    pq.write_table(valid_table, root / "valid.parquet")
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("torch") or client.get_experiment(
        client.create_experiment("torch", artifact_location=(root / "artifacts").as_uri()))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    params = Train(
        framework="torch", num_workers=2, seed=7,
        torch=TorchParams(epochs=EPOCHS, batch_size=128, lr=1e-2, hidden=[32, 16], embedding_dim=4,
                          dropout=0.0, early_stopping_epochs=PATIENCE),
    )
    job = TrainJob(
        train_path=root / "train.parquet", valid_path=root / "valid.parquet", preprocessor=pre, params=params,
        model_dir=root / "model", storage_path=root / "ray", tracking_uri=tracking_uri, run_id=run_id, name=f"torch-{task}",
    )
    outcome = torch_mlp.fit(job)
    features = test_table.drop_columns([LABEL])
    return outcome, job, features, test_table[LABEL].to_numpy(), run_id


def check_outcome(outcome, job: TrainJob, run_id: str) -> list[float]:
    """Common contract: outcome fields, the model folder, and one MLflow step per epoch run,
    which shows every worker stopped where early stopping says."""
    assert outcome.metric == "valid_loss"
    assert outcome.rows == TRAIN_ROWS
    meta = json.loads((job.model_dir / "model.json").read_text())
    assert meta["framework"] == "torch" and meta["task"] == job.preprocessor.task
    assert meta["feature_names"] == job.preprocessor.feature_names
    history = mlflow.MlflowClient(job.tracking_uri).get_metric_history(run_id, "valid_loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(len(losses)))
    assert len(losses) == min(EPOCHS, outcome.best_iteration + PATIENCE + 1)
    assert outcome.best_score == pytest.approx(min(losses))
    assert losses[outcome.best_iteration] == pytest.approx(min(losses))
    return losses


def test_binary_learns_and_scores_back(ray_cluster, tracking_uri, tmp_path):
    outcome, job, features, labels, run_id = train("binary", tmp_path, tracking_uri)
    check_outcome(outcome, job, run_id)
    assert outcome.extra["best_valid_auc"] > 0.8
    scores = load_scorer(job.model_dir).predict(features)
    assert scores.shape == (TEST_ROWS,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(labels, scores) > 0.8


def test_multiclass_beats_majority_class(ray_cluster, tracking_uri, tmp_path, monkeypatch):
    outcome, job, features, labels, run_id = train("multiclass", tmp_path, tracking_uri)
    check_outcome(outcome, job, run_id)
    scorer = load_scorer(job.model_dir)
    probs = scorer.predict(features)
    assert probs.shape == (TEST_ROWS, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    majority = np.bincount(labels).max() / len(labels)
    assert (probs.argmax(axis=1) == labels).mean() > majority + 0.2
    # Scoring in slices (as for tables too big for one pass) gives the same numbers.
    monkeypatch.setattr(torch_mlp, "_EVAL_BATCH", 7)
    np.testing.assert_allclose(scorer.predict(features), probs, rtol=1e-5, atol=1e-7)
    assert scorer.predict(features.slice(0, 0)).shape == (0, 3)


def test_regression_undoes_target_scaling(ray_cluster, tracking_uri, tmp_path):
    outcome, job, features, labels, run_id = train("regression", tmp_path, tracking_uri)
    check_outcome(outcome, job, run_id)
    values = load_scorer(job.model_dir).predict(features)
    assert values.shape == (TEST_ROWS,)
    rmse = float(np.sqrt(np.mean((values - labels) ** 2)))
    assert rmse < 0.5 * labels.std()
    assert outcome.extra["best_valid_rmse"] < 0.5 * labels.std()
