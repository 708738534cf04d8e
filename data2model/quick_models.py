"""Small single-process XGBoost fits for the data-centric stages (label audit folds, learning
curve points): many cheap models run as parallel Ray tasks of one CPU each, where Ray Train's
worker groups and checkpoints would cost more than the fits themselves."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from data2model.preprocess import LABEL, Preprocessor

OBJECTIVES = {"binary": "binary:logistic", "multiclass": "multi:softprob", "regression": "reg:squarederror"}


def matrix(table: pa.Table, pre: Preprocessor) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Encoded features as float32, the label, and XGBoost's feature types."""
    names = pre.feature_names
    x = np.column_stack([table[n].to_numpy().astype(np.float32) for n in names])
    y = table[LABEL].to_numpy()
    return x, (y if pre.task == "regression" else y.astype(np.int64)), ["c" if n in pre.categorical else "q" for n in names]


def booster(task: str, classes: int, eta: float, max_depth: int, seed: int) -> dict[str, Any]:
    return {
        "objective": OBJECTIVES[task], "tree_method": "hist", "eta": eta, "max_depth": max_depth, "seed": seed,
        "nthread": 1, "max_cat_to_onehot": 32, **({"num_class": classes} if task == "multiclass" else {}),
    }


def fit_predict(x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, x_out: np.ndarray, types: list[str], params: dict[str, Any], rounds: int, early_stop: tuple[np.ndarray, np.ndarray, int] | None = None) -> np.ndarray:
    """Train on `fit_rows` (early stopping on (x_valid, y_valid, patience) when given), predict `x_out`."""
    import xgboost

    def dm(data: np.ndarray, label: np.ndarray | None = None):
        return xgboost.DMatrix(data, label=label, feature_types=types, enable_categorical=True)

    evals, patience = ([(dm(early_stop[0], early_stop[1]), "valid")], early_stop[2]) if early_stop else ([], None)
    model = xgboost.train(params, dm(x[fit_rows], y[fit_rows]), num_boost_round=rounds, evals=evals, early_stopping_rounds=patience, verbose_eval=False)
    best = (0, model.best_iteration + 1) if early_stop else (0, 0)
    return model.predict(dm(x_out), iteration_range=best)
