"""The sweep that chose params.yaml's XGBoost defaults: plain xgboost on the pipeline's own split
(data/split, models/preprocessor.json from `make run`), ranked by validation AUC; the holdout
AUC is printed for the record, never used to choose.

    .venv/bin/python bench/xgboost_sweep.py
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import xgboost as xgb
from sklearn.metrics import roc_auc_score

GRID = [  # eta, max_depth, min_child_weight, colsample_bytree, max_cat_to_onehot
    (0.1, 8, 1, 0.8, 4), (0.05, 8, 1, 0.8, 4), (0.05, 6, 1, 0.8, 4), (0.05, 10, 5, 0.8, 4),
    (0.03, 8, 5, 0.6, 4), (0.05, 8, 5, 0.6, 32), (0.05, 7, 10, 0.7, 4), (0.03, 8, 5, 0.6, 32),
    (0.05, 8, 5, 0.5, 32), (0.05, 8, 10, 0.6, 32), (0.05, 9, 5, 0.6, 32), (0.03, 8, 10, 0.5, 32),
]


def matrix(path: str, categorical: set[str]) -> xgb.DMatrix:
    table = pq.read_table(path)
    names = [n for n in table.column_names if n != "label"]
    data = np.column_stack([table[n].to_numpy().astype(np.float32) for n in names])
    types = ["c" if n in categorical else "q" for n in names]
    return xgb.DMatrix(data, table["label"].to_numpy(), feature_names=names, feature_types=types, enable_categorical=True)


def main() -> None:
    categorical = set(json.load(open("models/preprocessor.json"))["categorical"])
    train, valid, test = (matrix(f"data/split/{p}.parquet", categorical) for p in ("train", "valid", "test"))
    for eta, depth, mcw, colsample, onehot in GRID:
        params = {"objective": "binary:logistic", "eval_metric": ["logloss", "auc"], "tree_method": "hist", "eta": eta,
                  "max_depth": depth, "min_child_weight": mcw, "subsample": 0.9, "colsample_bytree": colsample,
                  "max_cat_to_onehot": onehot, "seed": 42, "nthread": 1}
        booster = xgb.train(params, train, 1000, evals=[(valid, "valid")], early_stopping_rounds=50, verbose_eval=False)
        holdout = roc_auc_score(test.get_label(), booster.predict(test, iteration_range=(0, booster.best_iteration + 1)))
        print(json.dumps({"eta": eta, "max_depth": depth, "min_child_weight": mcw, "colsample_bytree": colsample,
                          "max_cat_to_onehot": onehot, "best_round": booster.best_iteration,
                          "valid_auc": round(booster.best_score, 4), "holdout_auc": round(holdout, 4)}), flush=True)


if __name__ == "__main__":
    main()
