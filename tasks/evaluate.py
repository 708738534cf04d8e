"""evaluate: score the holdout with the trained model through the serving path (scoring.py,
then the calibrate stage's calibrator, as the served model does) and write metrics.json
plus plot data for `dvc plots` and pictures for MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data2model import tracking
from data2model.calibration import Calibrator, reliability
from data2model.params import Params
from data2model.preprocess import LABEL, Preprocessor
from data2model.scoring import decide, scored_split
from data2model.stage import main
from data2model.tables import atomic_dir, read_json

log = logging.getLogger("data2model.evaluate")
ROC_POINTS = 200
CALIBRATION_BINS = 10
SCATTER_POINTS = 2000


def classification_metrics(y: np.ndarray, scores: np.ndarray, task: str, threshold: float) -> dict[str, float]:
    from sklearn import metrics as m

    predicted = decide(scores, task, threshold)
    out = {"accuracy": m.accuracy_score(y, predicted)}
    if task == "binary":
        out |= {
            "auc": m.roc_auc_score(y, scores) if len(np.unique(y)) == 2 else float("nan"),
            "log_loss": m.log_loss(y, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]),
            "f1": m.f1_score(y, predicted, zero_division=0),
            "precision": m.precision_score(y, predicted, zero_division=0),
            "recall": m.recall_score(y, predicted, zero_division=0),
            "brier": m.brier_score_loss(y, scores),
            "positive_rate": float(np.mean(y)),
        }
    else:
        labels = list(range(scores.shape[1]))
        out |= {
            "log_loss": m.log_loss(y, np.clip(scores, 1e-7, 1), labels=labels),
            "f1_macro": m.f1_score(y, predicted, average="macro", zero_division=0),
        }
    return {k: float(v) for k, v in out.items()}


def regression_metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as m

    return {
        "rmse": float(np.sqrt(m.mean_squared_error(y, predicted))),
        "mae": float(m.mean_absolute_error(y, predicted)),
        "r2": float(m.r2_score(y, predicted)),
    }


def choose_threshold(y_valid: np.ndarray, valid_scores: np.ndarray, setting: float | str) -> float:
    """The binary decision threshold: as configured, or the F1-best on the validation split."""
    if setting != "max_f1":
        return float(setting)
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y_valid, valid_scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def plot_tables(y: np.ndarray, scores: np.ndarray, pre: Preprocessor, threshold: float) -> dict[str, pa.Table]:
    """Data behind each plot, named as dvc.yaml's top-level `plots` name the files."""
    if pre.task == "regression":
        keep = np.linspace(0, len(y) - 1, min(SCATTER_POINTS, len(y))).astype(int)
        return {"predicted_vs_actual": pa.table({"actual": y[keep], "predicted": scores[keep]})}
    names = np.array(pre.classes, dtype=object)
    predicted = decide(scores, pre.task, threshold)
    tables = {"confusion": pa.table({"actual": names[y.astype(int)], "predicted": names[predicted]})}
    if pre.task == "binary":
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, scores)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(ROC_POINTS, len(fpr))).astype(int))
        tables["roc"] = pa.table({"fpr": fpr[keep], "tpr": tpr[keep]})
        tables["calibration"] = pa.table(reliability(y, scores, CALIBRATION_BINS))
    return tables


def evaluate(test: pa.Table, scores: np.ndarray, pre: Preprocessor, threshold: float) -> tuple[dict[str, Any], dict[str, pa.Table]]:
    """Pure core: holdout labels and model scores in, metrics and plot tables out."""
    y = test[LABEL].to_numpy()
    found = regression_metrics(y, scores) if pre.task == "regression" else classification_metrics(y, scores, pre.task, threshold)
    return {"task": pre.task, "rows": int(test.num_rows), **found}, plot_tables(y, scores, pre, threshold)


def draw(name: str, table: pa.Table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    cols = table.column_names
    if name == "confusion":
        import pandas as pd

        counts = pd.crosstab(table["actual"].to_numpy(), table["predicted"].to_numpy())
        ax.imshow(counts.to_numpy(), cmap="Blues")
        ax.set_xticks(range(counts.shape[1]), counts.columns, rotation=45)
        ax.set_yticks(range(counts.shape[0]), counts.index)
        for (i, j), v in np.ndenumerate(counts.to_numpy()):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
    else:
        x, y = table[cols[0]].to_numpy(), table[cols[1]].to_numpy()
        ax.plot(x, y, "." if name == "predicted_vs_actual" else "-o", markersize=3)
        lo, hi = (0, 1) if name != "predicted_vs_actual" else (min(x.min(), y.min()), max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="grey")
        ax.set_xlabel(cols[0])
        ax.set_ylabel(cols[1])
    ax.set_title(name.replace("_", " "))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(params: Params) -> dict[str, Any]:
    import mlflow
    import pyarrow.csv as pacsv

    from data2model.tables import write_json

    pre = Preprocessor.load(params.paths.preprocessor)
    calibrator = Calibrator.load(params.paths.calibrator)
    threshold = 0.5
    if pre.task == "binary":
        valid, valid_scores = scored_split(params.paths.model_dir, params.paths.split("valid"))
        threshold = choose_threshold(valid[LABEL].to_numpy(), calibrator.apply(valid_scores), params.evaluate.threshold)
    test, test_scores = scored_split(params.paths.model_dir, params.paths.split("test"))
    found, plots = evaluate(test, calibrator.apply(test_scores), pre, threshold)
    if pre.task == "binary":
        found["threshold"] = threshold
    tracking.configure(params)
    with tracking.resume_run(read_json(params.paths.train_report)["run_id"]), atomic_dir(params.paths.plots_dir) as folder:
        mlflow.log_metrics({f"test_{k}": v for k, v in found.items() if isinstance(v, float)})
        for name, table in plots.items():
            pacsv.write_csv(table, folder / f"{name}.csv")
            draw(name, table, folder / f"{name}.png")
            mlflow.log_artifact(str(folder / f"{name}.png"), artifact_path="plots")
    write_json(found, params.paths.metrics)
    log.info("holdout: %s", ", ".join(f"{k}={v:.4f}" for k, v in found.items() if isinstance(v, float)))
    return found


if __name__ == "__main__":
    main(run)
