"""learning_curve: what more data would be worth (Hestness et al., "Deep Learning Scaling is
Predictable, Empirically"). One XGBoost fit per nested fraction of the training split (1/32 ... 1)
and per repeat, in parallel as Ray tasks, each early-stopped on the valid split and scored on
the holdout; then err(n) = a * n^(-b) + c fitted with scipy's curve_fit, whose covariance gives
the exponent's standard error and, by sampling the parameters, intervals for the predicted
error at 2x and 10x the data.

Each repeat draws its own random order of the training rows, and fraction f takes the first
f * n rows of it: the subsets are nested and each is a uniform random subset, so there is no
pruning choice whose effect a random-subset control would have to separate out.

Error is 1 - AUC (binary), 1 - accuracy (multiclass) or RMSE (regression): the promotion gate's
primary metric. `exponent_resolved` says whether b is more than two standard errors from 0; when
it is not, the points do not pin down a power law and the predicted gains mean little. Off by default
(`learning_curve.enabled`): it trains len(fractions) x repeats extra models on every run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from data2model import quick_models, tracking
from data2model.errors import D2MError
from data2model.params import LearningCurve, Params
from data2model.preprocess import Preprocessor
from data2model.stage import main
from data2model.tables import atomic_dir, read_json, read_table, write_json

log = logging.getLogger("data2model.learning_curve")
PARAMETER_SAMPLES = 2000
ERROR_METRIC = {"binary": "1 - auc", "multiclass": "1 - accuracy", "regression": "rmse"}
POINTS_SCHEMA = pa.schema([("rows", pa.int64()), ("error", pa.float64()), ("repeat", pa.int64())])


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(n, -b) + c


def holdout_error(task: str, y: np.ndarray, predicted: np.ndarray) -> float:
    """1 - the promotion gate's primary metric (AUC, accuracy), or RMSE: what the gate would
    see improve. AUC, unlike log loss, ignores the base-rate shift of a time-split holdout."""
    from sklearn.metrics import roc_auc_score

    if task == "regression":
        return float(np.sqrt(np.mean((y - predicted) ** 2)))
    if task == "binary":
        return float(1 - roc_auc_score(y, predicted))
    return float(1 - np.mean(predicted.argmax(axis=1) == y))


def fit_power_law(rows: np.ndarray, error: np.ndarray, full: int, seed: int) -> dict[str, Any]:
    """a, b, c with standard errors, and the predicted error at 1x, 2x and 10x `full` rows with
    5-95% intervals from parameter draws of the fit's covariance."""
    from scipy.optimize import curve_fit

    if len(np.unique(rows)) < 4:
        raise D2MError("learning_curve.fractions: fitting a*n^-b + c needs at least 4 distinct training sizes")
    scale = float(rows.max())
    x = rows / scale  # fit in units of the largest size: a stays O(error), the fit is well conditioned
    p0 = (max(error.max() - error.min(), 1e-6), 0.5, max(error.min() * 0.9, 0.0))
    try:
        (a, b, c), cov = curve_fit(power_law, x, error, p0=p0, bounds=([0, 0, 0], [np.inf, 3, np.inf]), maxfev=20000)
    except RuntimeError as err:  # scipy's "optimal parameters not found"
        raise D2MError(f"learning curve: a*n^-b + c does not fit the measured points ({err}); see {list(zip(rows.tolist(), error.round(4).tolist()))}") from None
    draws = np.random.default_rng(seed).multivariate_normal([a, b, c], cov, PARAMETER_SAMPLES, check_valid="ignore")
    draws[:, 1] = np.clip(draws[:, 1], 0, None)
    b_std = float(np.sqrt(cov[1, 1]))
    out = {"a": float(a * scale ** b), "b": float(b), "c": float(c), "b_std": b_std, "c_std": float(np.sqrt(cov[2, 2])), "exponent_resolved": bool(b > 2 * b_std)}
    at_full = power_law(full / scale, a, b, c)
    for times in (1, 2, 10):
        n = times * full / scale
        sampled = power_law(n, *draws.T)
        out[f"error_{times}x"] = float(power_law(n, a, b, c))
        out[f"error_{times}x_p05"], out[f"error_{times}x_p95"] = (float(v) for v in np.percentile(sampled, [5, 95]))
        if times > 1:
            gains = power_law(full / scale, *draws.T) - sampled
            out[f"gain_{times}x"] = float(at_full - power_law(n, a, b, c))
            out[f"gain_{times}x_p05"], out[f"gain_{times}x_p95"] = (float(v) for v in np.percentile(gains, [5, 95]))
    return out


def curve_points(train: pa.Table, valid: pa.Table, test: pa.Table, pre: Preprocessor, knobs: LearningCurve) -> pa.Table:
    """Holdout error of one model per (repeat, fraction), trained in parallel as Ray tasks."""
    import ray

    x, y, types = quick_models.matrix(train, pre)
    xv, yv, _ = quick_models.matrix(valid, pre)
    xt, yt, _ = quick_models.matrix(test, pre)
    params = quick_models.booster(pre.task, len(pre.classes), knobs.eta, knobs.max_depth, knobs.seed)
    fit = ray.remote(num_cpus=1)(quick_models.fit_predict)
    x_ref, y_ref, xt_ref, stop = ray.put(x), ray.put(y), ray.put(xt), ray.put((xv, yv, knobs.early_stopping_rounds))
    jobs, sizes = [], []
    for repeat in range(knobs.repeats):
        order = np.random.default_rng(knobs.seed + repeat).permutation(len(y))
        for fraction in knobs.fractions:
            rows = max(int(round(fraction * len(y))), 2)
            jobs.append(fit.remote(x_ref, y_ref, np.sort(order[:rows]), xt_ref, types, params, knobs.num_boost_round, stop))
            sizes.append((rows, repeat))
    errors = [holdout_error(pre.task, yt, predicted) for predicted in ray.get(jobs)]
    return pa.table({"rows": [s[0] for s in sizes], "error": errors, "repeat": [s[1] for s in sizes]}, schema=POINTS_SCHEMA)


def learning_curve(points: pa.Table, full: int, task: str, seed: int) -> tuple[dict[str, Any], pa.Table]:
    """Pure core: the measured points in; the fitted law and the plot table (measured and fitted) out."""
    rows, error = points["rows"].to_numpy(), points["error"].to_numpy()
    law = fit_power_law(rows.astype(float), error, full, seed)
    grid = np.unique(np.geomspace(rows.min(), 10 * full, 40).astype(np.int64))
    fitted = power_law(grid.astype(float), law["a"], law["b"], law["c"])
    plot = pa.table({
        "rows": np.concatenate([rows, grid]),
        "error": np.concatenate([error, fitted]),
        "kind": ["measured"] * len(rows) + ["fitted"] * len(grid),
    })
    return {"task": task, "error_metric": ERROR_METRIC[task], "train_rows": full, "points": int(len(rows)), **law}, plot


def _draw(plot: pa.Table, law: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = np.array(plot["kind"].to_pylist())
    rows, error = plot["rows"].to_numpy(), plot["error"].to_numpy()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(rows[kind == "measured"], error[kind == "measured"], "o", markersize=4, label="measured (holdout)")
    ax.plot(rows[kind == "fitted"], error[kind == "fitted"], "-", label=f"{law['a']:.3g}·n^-{law['b']:.3f} + {law['c']:.4f}")
    ax.axvline(law["train_rows"], color="grey", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("training rows")
    ax.set_ylabel(law["error_metric"])
    ax.set_title("learning curve")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(params: Params) -> dict[str, Any]:
    import mlflow
    import pyarrow.csv as pacsv

    from data2model.trainers import init_ray

    knobs = params.learning_curve
    if not knobs.enabled:
        report, plot = {"enabled": False}, pa.table({"rows": pa.array([], pa.int64()), "error": pa.array([], pa.float64()), "kind": pa.array([], pa.string())})
    else:
        pre = Preprocessor.load(params.paths.preprocessor)
        train, valid, test = (read_table(params.paths.split(part)) for part in ("train", "valid", "test"))
        init_ray(params.train)
        report, plot = learning_curve(curve_points(train, valid, test, pre, knobs), train.num_rows, pre.task, knobs.seed)
        report["enabled"] = True
    with atomic_dir(params.paths.learning_curve_plots) as folder:
        pacsv.write_csv(plot, folder / "learning_curve.csv")
        if knobs.enabled:
            _draw(plot, report, folder / "learning_curve.png")
            tracking.configure(params)
            with tracking.resume_run(read_json(params.paths.train_report)["run_id"]):
                mlflow.log_metrics({f"learning_curve_{k}": v for k, v in report.items() if isinstance(v, float)})
                mlflow.log_artifact(str(folder / "learning_curve.png"), artifact_path="plots")
    write_json(report, params.paths.learning_curve)
    if knobs.enabled and not report["exponent_resolved"]:
        log.warning("learning curve: exponent b=%.3g +/- %.3g is not resolved from 0; the predicted gains are not meaningful", report["b"], report["b_std"])
    elif knobs.enabled:
        log.info("learning curve: err(n) = %.4g n^-%.3f (+/- %.3f) + %.4f; 2x data: %.4f better, 10x: %.4f", report["a"], report["b"], report["b_std"], report["c"], report["gain_2x"], report["gain_10x"])
    return report


if __name__ == "__main__":
    main(run)
