"""label_audit: confident learning (Northcutt et al.) on the training split. K-fold out-of-fold
class probabilities, one XGBoost fit per fold as a Ray task, then cleanlab's
`find_label_issues`: the estimated label-issue rate, the suspect rows ranked by how unlikely
their label is, and an optional gate on the rate.

Off by default (`label_audit.enabled`): it trains `folds` extra models on every run.
Classification only: with a regression target it writes an empty report saying so.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from data2model import quick_models, tracking
from data2model.errors import D2MError, DataError
from data2model.params import LabelAudit, Params
from data2model.preprocess import Preprocessor
from data2model.stage import main
from data2model.tables import atomic_dir, read_json, read_table, write_json, write_table

log = logging.getLogger("data2model.label_audit")
ISSUES_SCHEMA = pa.schema([("row", pa.int64()), ("given", pa.string()), ("suggested", pa.string()), ("label_quality", pa.float64())])


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, task: str, classes: int, types: list[str], knobs: LabelAudit) -> np.ndarray:
    """(rows, classes) probabilities, each row predicted by the model that did not see it;
    the folds train in parallel as Ray tasks of one CPU each."""
    import ray
    from sklearn.model_selection import StratifiedKFold

    params = quick_models.booster(task, classes, knobs.eta, knobs.max_depth, knobs.seed)
    fold = ray.remote(num_cpus=1)(quick_models.fit_predict)
    x_ref, y_ref = ray.put(x), ray.put(y)
    splits = list(StratifiedKFold(knobs.folds, shuffle=True, random_state=knobs.seed).split(x, y))
    found = ray.get([fold.remote(x_ref, y_ref, fit, x[held], types, params, knobs.num_boost_round) for fit, held in splits])
    probs = np.zeros((len(y), classes))
    for (_, held), p in zip(splits, found):
        probs[held] = np.column_stack([1 - p, p]) if classes == 2 else p
    return probs


def find_issues(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Suspect rows, most suspect first, and every row's label quality (self-confidence)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    ranked = find_label_issues(y, probs, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence")
    return ranked, get_label_quality_scores(y, probs, method="self_confidence")


def audit(features: pa.Table, pre: Preprocessor, knobs: LabelAudit) -> tuple[dict[str, Any], pa.Table]:
    """Pure core (Ray aside): the encoded training split in, the report and ranked suspects out."""
    rows = features.num_rows
    keep = np.sort(np.random.default_rng(knobs.seed).choice(rows, knobs.max_rows, replace=False)) if knobs.max_rows and rows > knobs.max_rows else np.arange(rows)
    x, y, types = quick_models.matrix(features.take(keep), pre)
    classes = len(pre.classes)
    if np.bincount(y, minlength=classes).min() < knobs.folds:
        raise DataError(f"label_audit.folds={knobs.folds}: every class needs at least that many training rows")
    probs = out_of_fold_probabilities(x, y, pre.task, classes, types, knobs)
    ranked, quality = find_issues(y, probs)
    label_names = np.array(pre.classes, dtype=object)
    issues = pa.table({
        "row": pa.array(keep[ranked], pa.int64()),
        "given": pa.array(label_names[y[ranked]].astype(str)),
        "suggested": pa.array(label_names[probs[ranked].argmax(axis=1)].astype(str)),
        "label_quality": pa.array(quality[ranked], pa.float64()),
    }, schema=ISSUES_SCHEMA)
    report = {
        "rows_audited": int(len(y)), "label_issues": int(len(ranked)), "label_issue_rate": len(ranked) / len(y),
        "folds": knobs.folds, "out_of_fold_accuracy": float((probs.argmax(axis=1) == y).mean()),
        "issue_rate_by_class": {str(c): float(np.isin(np.flatnonzero(y == k), ranked).mean()) for k, c in enumerate(pre.classes)},
    }
    return report, issues


def gate(rate: float, max_rate: float | None, suspects: str) -> None:
    """The optional gate: a run whose estimated label-issue rate is above max_rate fails."""
    if max_rate is not None and rate > max_rate:
        raise D2MError(f"label audit: estimated label-issue rate {rate:.4f} is above label_audit.max_issue_rate {max_rate} (suspects: {suspects})")


def by_class_plot(report: dict[str, Any]) -> pa.Table:
    rates = report.get("issue_rate_by_class", {})
    return pa.table({"given": list(rates), "issue_rate": list(rates.values())}, schema=pa.schema([("given", pa.string()), ("issue_rate", pa.float64())]))


def run(params: Params) -> dict[str, Any]:
    import mlflow
    import pyarrow.csv as pacsv

    from data2model.trainers import init_ray

    knobs, pre = params.label_audit, Preprocessor.load(params.paths.preprocessor)
    if not knobs.enabled:
        report, issues = {"enabled": False}, ISSUES_SCHEMA.empty_table()
    elif pre.task == "regression":
        report, issues = {"enabled": True, "skipped": "label audit needs class labels: skipped for regression"}, ISSUES_SCHEMA.empty_table()
    else:
        init_ray(params.train)
        report, issues = audit(read_table(params.paths.split("train")), pre, knobs)
        report["enabled"] = True
    with atomic_dir(params.paths.label_audit_plots) as folder:
        pacsv.write_csv(by_class_plot(report), folder / "issue_rate_by_class.csv")
    write_table(issues, params.paths.label_issues)
    write_json(report, params.paths.label_audit)
    if "label_issue_rate" in report:
        tracking.configure(params)
        with tracking.resume_run(read_json(params.paths.train_report)["run_id"]):
            mlflow.log_metrics({"label_issue_rate": report["label_issue_rate"], "label_issues": report["label_issues"]})
        log.info("label audit: %d of %d training rows look mislabelled (%.2f%%)", report["label_issues"], report["rows_audited"], 100 * report["label_issue_rate"])
        gate(report["label_issue_rate"], knobs.max_issue_rate, params.paths.label_issues)
    return {k: v for k, v in report.items() if not isinstance(v, dict)}


if __name__ == "__main__":
    main(run)
