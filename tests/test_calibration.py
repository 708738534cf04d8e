"""Calibration and split-conformal prediction: the calibrator recovers a known miscalibration,
conformal sets reach their coverage on exchangeable rows, regression skips cleanly, and the
calibrator file round-trips into the served model's path."""

from __future__ import annotations

import numpy as np
import pytest

from data2model.calibration import Calibrator, confidence_ece, conformal_quantile, fit_calibrator
from data2model.errors import D2MError
from data2model.params import Calibration
from tasks.calibrate import calibrate


def _overconfident_binary(n: int, seed: int, temperature: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """True P(1) from a logit; the model reports the logit times `temperature` (overconfident)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return y, 1 / (1 + np.exp(-logit * temperature))


def _overconfident_multiclass(n: int, seed: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.2, (n, classes))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(classes, p=p) for p in true])
    sharp = np.exp(2 * logits)
    return y, sharp / sharp.sum(axis=1, keepdims=True)


def test_temperature_recovers_the_overconfidence_and_cuts_ece():
    y, p = _overconfident_binary(20000, seed=0)
    calibrator = fit_calibrator("temperature", y, p)
    assert calibrator.temperature == pytest.approx(2.0, rel=0.1)
    y_new, p_new = _overconfident_binary(20000, seed=1)
    before, after = confidence_ece(y_new, p_new, 10), confidence_ece(y_new, calibrator.apply(p_new), 10)
    assert before > 0.05 and after < 0.02 and after < before / 3


def test_temperature_keeps_the_ranking_so_auc_is_unchanged():
    from sklearn.metrics import roc_auc_score

    y, p = _overconfident_binary(5000, seed=2)
    calibrated = fit_calibrator("temperature", y, p).apply(p)
    assert roc_auc_score(y, calibrated) == pytest.approx(roc_auc_score(y, p), abs=1e-9)


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_multiclass_calibration_cuts_top_label_ece_and_rows_sum_to_one(method):
    y, p = _overconfident_multiclass(6000, seed=3)
    calibrator = fit_calibrator(method, y, p)
    y_new, p_new = _overconfident_multiclass(6000, seed=4)
    after = calibrator.apply(p_new)
    assert np.allclose(after.sum(axis=1), 1)
    assert confidence_ece(y_new, after, 15) < confidence_ece(y_new, p_new, 15) / 2


def test_isotonic_binary_cuts_ece():
    y, p = _overconfident_binary(10000, seed=5)
    y_new, p_new = _overconfident_binary(10000, seed=6)
    assert confidence_ece(y_new, fit_calibrator("isotonic", y, p).apply(p_new), 10) < 0.02


def test_calibrator_file_round_trips(tmp_path):
    y, p = _overconfident_multiclass(2000, seed=7)
    calibrator = fit_calibrator("isotonic", y, p)
    calibrator.save(tmp_path / "calibrator.json")
    assert np.allclose(Calibrator.load(tmp_path / "calibrator.json").apply(p), calibrator.apply(p))
    with pytest.raises(D2MError, match="run the calibrate stage"):
        Calibrator.load(tmp_path / "missing.json")


def test_conformal_sets_cover_at_least_the_target_on_exchangeable_rows():
    y, p = _overconfident_binary(20000, seed=8)
    y_test, p_test = _overconfident_binary(20000, seed=9)
    knobs = Calibration(method="temperature", conformal_alpha=0.1, bins=[5, 10])
    _, report, plots = calibrate("binary", y, p, y_test, p_test, knobs)
    assert report["conformal_coverage"] >= 0.9 - 0.01
    assert report["ece_after_10"] < report["ece_before_10"]
    assert set(plots) == {"reliability_before"}


def test_regression_skips_calibration_and_gives_conformal_intervals():
    rng = np.random.default_rng(10)
    y, y_test = rng.normal(0, 1, 3000), rng.normal(0, 1, 10000)
    knobs = Calibration(method="isotonic", conformal_alpha=0.2)
    calibrator, report, plots = calibrate("regression", y, np.zeros(3000), y_test, np.zeros(10000), knobs)
    assert calibrator.method == "none" and report["method"] == "none" and "regression" in report["skipped"]
    assert report["conformal_coverage"] == pytest.approx(0.8, abs=0.02)
    assert report["conformal_interval_width"] == pytest.approx(2 * 1.2816, rel=0.1)  # z(0.9) of N(0, 1)
    assert plots["reliability_before"].num_rows == 0 and not any(k.startswith("ece") for k in report)


def test_too_few_rows_for_alpha_is_a_clear_error():
    with pytest.raises(D2MError, match="needs at least 99 calibration rows"):
        conformal_quantile(np.zeros(50), 0.01)


def test_bad_config_is_named():
    from data2model.errors import ParamsError
    from data2model.params import parse_params

    with pytest.raises(ParamsError, match="calibration.method"):
        parse_params({"calibration": {"method": "platt"}})
    with pytest.raises(ParamsError, match="calibration.bins"):
        parse_params({"calibration": {"bins": [0, 10]}})
