"""calibrate: how far the model's probabilities are from observed frequencies (ECE at several
bin counts on the holdout), an optional calibrator fitted on the validation split that the
served model applies (evaluate and register read it), and optional split-conformal prediction
sets whose coverage is measured on the holdout.

The validation split is the only data the calibrator and the conformal threshold see. When
both are on it is split in two random halves, so the conformal threshold is computed on
probabilities the calibrator was not fitted to. Regression has no probabilities: the
calibrator is skipped (and says so) and conformal gives intervals of |residual|.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from data2model import calibration as cal
from data2model import tracking
from data2model.params import Calibration, Params
from data2model.preprocess import LABEL, Preprocessor
from data2model.scoring import scored_split
from data2model.stage import main
from data2model.tables import atomic_dir, read_json

log = logging.getLogger("data2model.calibrate")
RELIABILITY_SCHEMA = pa.schema([("mean_predicted", pa.float64()), ("fraction_positive", pa.float64()), ("count", pa.int64())])


def halves(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[: rows // 2]), np.sort(order[rows // 2:])


def calibrate(task: str, y_valid: np.ndarray, valid: np.ndarray, y_test: np.ndarray, test: np.ndarray, knobs: Calibration) -> tuple[cal.Calibrator, dict[str, Any], dict[str, pa.Table]]:
    """Pure core: validation and holdout scores in; the calibrator, the report and the
    reliability table of the uncalibrated model out."""
    classify = task != "regression"
    method = knobs.method if classify else "none"
    conformal = knobs.conformal_alpha is not None
    fit_rows, conformal_rows = halves(len(y_valid), knobs.seed) if method != "none" and conformal else (np.arange(len(y_valid)),) * 2
    calibrator = cal.fit_calibrator(method, y_valid[fit_rows].astype(int) if classify else y_valid, valid[fit_rows])
    report: dict[str, Any] = {"task": task, "method": method, "calibration_rows": int(len(fit_rows)) if method != "none" else 0}
    if knobs.method != "none" and not classify:
        report["skipped"] = f"calibration.method={knobs.method} calibrates class probabilities: skipped for regression"
    if method == "temperature":
        report["temperature"] = calibrator.temperature
    after = calibrator.apply(test)
    plots = {"reliability_before": RELIABILITY_SCHEMA.empty_table()}  # regression: the header only, so the output exists
    if classify:
        for bins in knobs.bins:
            report[f"ece_before_{bins}"] = cal.confidence_ece(y_test, test, bins)
            report[f"ece_after_{bins}"] = cal.confidence_ece(y_test, after, bins)
        plots["reliability_before"] = pa.table(cal.reliability(y_test, test, max(knobs.bins)), schema=RELIABILITY_SCHEMA)
    if conformal:
        scores = calibrator.apply(valid[conformal_rows])
        q = cal.conformal_quantile(cal.nonconformity(y_valid[conformal_rows], scores, task), knobs.conformal_alpha)
        report |= {"conformal_alpha": knobs.conformal_alpha, "conformal_rows": int(len(conformal_rows)), "conformal_threshold": q}
        report |= {f"conformal_{k}": v for k, v in cal.conformal_report(y_test, after, task, q).items()}
    return calibrator, report, plots


def run(params: Params) -> dict[str, Any]:
    import mlflow
    import pyarrow.csv as pacsv

    from data2model.tables import write_json
    from tasks.evaluate import draw

    pre = Preprocessor.load(params.paths.preprocessor)
    (valid, valid_scores), (test, test_scores) = (scored_split(params.paths.model_dir, params.paths.split(part)) for part in ("valid", "test"))
    calibrator, report, plots = calibrate(pre.task, valid[LABEL].to_numpy(), valid_scores, test[LABEL].to_numpy(), test_scores, params.calibration)
    tracking.configure(params)
    with tracking.resume_run(read_json(params.paths.train_report)["run_id"]), atomic_dir(params.paths.calibration_plots) as folder:
        mlflow.log_metrics({f"calibration_{k}": v for k, v in report.items() if isinstance(v, float)})
        for name, table in plots.items():
            pacsv.write_csv(table, folder / f"{name}.csv")
            if table.num_rows:
                draw(name, table, folder / f"{name}.png")
                mlflow.log_artifact(str(folder / f"{name}.png"), artifact_path="plots")
    calibrator.save(params.paths.calibrator)
    write_json(report, params.paths.calibration)
    log.info("calibration: %s", ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()))
    return report


if __name__ == "__main__":
    main(run)
