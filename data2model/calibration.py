"""Probability calibration and split-conformal prediction, all pure numpy.

A `Calibrator` maps the trained model's scores to calibrated ones (temperature scaling or
isotonic regression, fitted on validation rows, never the holdout). It is a small JSON file
that travels with the registered model, so serving applies exactly what evaluation measured.
Scores have `scoring.predict`'s shape: P(class 1) for binary, an (n, classes) matrix for
multiclass; regression has nothing to calibrate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data2model.errors import D2MError
from data2model.promotion import expected_calibration_error

EPS = 1e-7


def as_matrix(scores: np.ndarray) -> np.ndarray:
    """Class-probability matrix: binary P(1) becomes the two columns [P(0), P(1)]."""
    return np.column_stack([1 - scores, scores]) if scores.ndim == 1 else scores


def _from_matrix(probs: np.ndarray, binary: bool) -> np.ndarray:
    return probs[:, 1] if binary else probs


def _tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probs, EPS, 1)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def _isotonic_curve(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(x, y)
    return fitted.X_thresholds_.tolist(), fitted.y_thresholds_.tolist()


@dataclass
class Calibrator:
    """`none`, `temperature` (one T for all classes) or `isotonic` (one curve per class,
    renormalised to sum to one for multiclass)."""

    method: str = "none"
    temperature: float = 1.0
    curves: list[tuple[list[float], list[float]]] = field(default_factory=list)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        if self.method == "none":
            return scores
        binary = scores.ndim == 1
        probs = as_matrix(scores)
        if self.method == "temperature":
            return _from_matrix(_tempered(probs, self.temperature), binary)
        if binary:
            return np.interp(scores, *self.curves[0])
        out = np.column_stack([np.interp(probs[:, k], *curve) for k, curve in enumerate(self.curves)])
        total = out.sum(axis=1, keepdims=True)
        return np.where(total > 0, out / np.where(total > 0, total, 1), 1 / out.shape[1])

    def save(self, path: str | Path) -> None:
        from data2model.tables import write_json

        write_json(asdict(self), path)

    @classmethod
    def load(cls, path: str | Path) -> Calibrator:
        path = Path(path)
        if not path.exists():
            raise D2MError(f"{path} does not exist: run the calibrate stage (dvc repro calibrate)")
        return cls(**json.loads(path.read_text()))


def fit_calibrator(method: str, y: np.ndarray, scores: np.ndarray) -> Calibrator:
    """Fit on validation labels and the model's scores for them."""
    if method == "none":
        return Calibrator()
    if method == "temperature":
        from scipy.optimize import minimize_scalar

        probs, rows = as_matrix(scores), np.arange(len(y))

        def nll(log_t: float) -> float:
            return -np.log(np.clip(_tempered(probs, np.exp(log_t))[rows, y], EPS, 1)).mean()

        best = minimize_scalar(nll, bounds=(-3, 3), method="bounded")
        return Calibrator("temperature", temperature=float(np.exp(best.x)))
    if method == "isotonic":
        if scores.ndim == 1:
            return Calibrator("isotonic", curves=[_isotonic_curve(scores, y)])
        return Calibrator("isotonic", curves=[_isotonic_curve(scores[:, k], (y == k).astype(float)) for k in range(scores.shape[1])])
    raise D2MError(f"calibration.method {method!r}: expected none, temperature or isotonic")


def confidence_ece(y: np.ndarray, scores: np.ndarray, bins: int) -> float:
    """Binary: ECE of P(1) (as the promotion gate measures it). Multiclass: top-label ECE, the
    confidence of the predicted class against whether it was right."""
    if scores.ndim == 1:
        return expected_calibration_error(y, scores, bins)
    return expected_calibration_error((scores.argmax(axis=1) == y).astype(float), scores.max(axis=1), bins)


def reliability(y: np.ndarray, scores: np.ndarray, bins: int) -> dict[str, list[float]]:
    """Reliability diagram data: per non-empty equal-width bin, mean predicted vs observed."""
    if scores.ndim == 1:
        predicted, observed = scores, y.astype(float)
    else:
        predicted, observed = scores.max(axis=1), (scores.argmax(axis=1) == y).astype(float)
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    kept = [b for b in range(bins) if (which == b).any()]
    return {
        "mean_predicted": [float(predicted[which == b].mean()) for b in kept],
        "fraction_positive": [float(observed[which == b].mean()) for b in kept],
        "count": [int((which == b).sum()) for b in kept],
    }


def conformal_quantile(nonconformity: np.ndarray, alpha: float) -> float:
    """Split-conformal threshold: the ceil((n+1)(1-alpha))-th smallest score, which gives
    coverage of at least 1-alpha on exchangeable new rows."""
    n = len(nonconformity)
    rank = int(np.ceil((n + 1) * (1 - alpha)))
    if rank > n:
        raise D2MError(f"calibration.conformal_alpha={alpha} needs at least {int(np.ceil(1 / alpha)) - 1} calibration rows, got {n}")
    return float(np.sort(nonconformity)[rank - 1])


def nonconformity(y: np.ndarray, scores: np.ndarray, task: str) -> np.ndarray:
    """Classification: 1 - probability of the true class; regression: |residual|."""
    if task == "regression":
        return np.abs(y - scores)
    return 1 - as_matrix(scores)[np.arange(len(y)), y.astype(int)]


def conformal_report(y: np.ndarray, scores: np.ndarray, task: str, q: float) -> dict[str, Any]:
    """Measured coverage of the prediction sets (intervals for regression) on labelled rows."""
    if task == "regression":
        covered = np.abs(y - scores) <= q
        return {"coverage": float(covered.mean()), "interval_width": 2 * q}
    members = 1 - as_matrix(scores) <= q
    covered = members[np.arange(len(y)), y.astype(int)]
    sizes = members.sum(axis=1)
    return {"coverage": float(covered.mean()), "mean_set_size": float(sizes.mean()), "empty_set_rate": float((sizes == 0).mean())}
