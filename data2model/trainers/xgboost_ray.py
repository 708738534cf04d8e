"""XGBoost through Ray Train (V2): each worker trains on its Ray Data shard; rank 0 logs
per-round metrics to MLflow; the driver keeps the booster cut at the best round."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np

from data2model.trainers import TrainJob, TrainOutcome, run_ray_training, write_meta

MODEL_FILE = "xgboost.ubj"
_OBJECTIVES = {
    "binary": ("binary:logistic", ["logloss", "auc"]),
    "multiclass": ("multi:softprob", ["merror", "mlogloss"]),
    "regression": ("reg:squarederror", ["mae", "rmse"]),
}
_LOG_EVERY = 25


def booster_params(job: TrainJob) -> dict[str, Any]:
    objective, metrics = _OBJECTIVES[job.preprocessor.task]
    p = job.params.xgboost
    params = {
        "objective": objective,
        "eval_metric": metrics,
        "tree_method": "hist",
        "device": "cuda" if job.params.use_gpu else "cpu",
        "eta": p.eta,
        "max_depth": p.max_depth,
        "min_child_weight": p.min_child_weight,
        "subsample": p.subsample,
        "colsample_bytree": p.colsample_bytree,
        "max_cat_to_onehot": p.max_cat_to_onehot,
        "seed": job.params.seed,
        "nthread": job.params.cpus_per_worker,
    }
    if job.preprocessor.task == "multiclass":
        params["num_class"] = len(job.preprocessor.classes)
    return params


def dmatrix(columns: dict[str, np.ndarray], label: np.ndarray | None, feature_types: list[str]):
    import xgboost

    names = list(columns)
    data = np.column_stack([np.asarray(columns[n], dtype=np.float32) for n in names])
    return xgboost.DMatrix(data, label=label, feature_names=names, feature_types=feature_types, enable_categorical=True)


def feature_types(categorical: set[str], names: list[str]) -> list[str]:
    return ["c" if n in categorical else "q" for n in names]


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import mlflow
    import ray.train
    import xgboost
    from mlflow.entities import Metric
    from ray.train.xgboost import RayTrainReportCallback

    rank = ray.train.get_context().get_world_rank()
    names, types = config["feature_names"], config["feature_types"]

    def shard(name: str):
        df = ray.train.get_dataset_shard(name).materialize().to_pandas()
        return dmatrix({n: df[n].to_numpy() for n in names}, df["label"].to_numpy(), types)

    dtrain, dvalid = shard("train"), shard("valid")

    class MlflowRounds(xgboost.callback.TrainingCallback):
        """Rank 0 sends per-round metrics to MLflow in batches (one SQLite write per batch)."""

        def __init__(self) -> None:
            self.client = mlflow.MlflowClient(config["tracking_uri"])
            self.pending: list[Metric] = []

        def after_iteration(self, model, epoch, evals_log) -> bool:
            now = int(time.time() * 1000)
            for data_name, metrics in evals_log.items():
                for metric, values in metrics.items():
                    self.pending.append(Metric(f"{data_name}_{metric}", float(values[-1]), now, epoch))
            if len(self.pending) >= _LOG_EVERY * 4:
                self.flush()
            if epoch % _LOG_EVERY == 0:  # progress on the driver's console (Ray forwards worker output)
                shown = ", ".join(f"valid_{m}={v[-1]:.4f}" for m, v in evals_log.get("valid", {}).items())
                print(f"round {epoch}: {shown}", flush=True)
            return False

        def after_training(self, model):
            self.flush()
            return model

        def flush(self) -> None:
            if self.pending:
                self.client.log_batch(config["run_id"], metrics=self.pending)
                self.pending = []

    callbacks = [MlflowRounds()] if rank == 0 else []
    booster = xgboost.train(
        config["booster_params"],
        dtrain,
        num_boost_round=config["num_boost_round"],
        evals=[(dtrain, "train"), (dvalid, "valid")],
        early_stopping_rounds=config["early_stopping_rounds"],
        callbacks=callbacks,
        verbose_eval=False,
    )
    # One report per worker, at the end: a report per round costs more than the round itself.
    metrics = {"best_iteration": booster.best_iteration, "best_score": float(booster.best_score)}
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            booster.save_model(os.path.join(folder, RayTrainReportCallback.CHECKPOINT_NAME))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(metrics)


def fit(job: TrainJob) -> TrainOutcome:
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    pre = job.preprocessor
    names = pre.feature_names
    config = {
        "booster_params": booster_params(job),
        "num_boost_round": job.params.xgboost.num_boost_round,
        "early_stopping_rounds": job.params.xgboost.early_stopping_rounds,
        "feature_names": names,
        "feature_types": feature_types(set(pre.categorical), names),
        "tracking_uri": job.tracking_uri,
        "run_id": job.run_id,
    }
    result, rows, seconds = run_ray_training(XGBoostTrainer, _train_loop, config, job, "XGBoost")
    booster = RayTrainReportCallback.get_model(result.checkpoint)
    best = booster.best_iteration
    metric = config["booster_params"]["eval_metric"][-1]
    score = float(booster.attr("best_score"))
    booster = booster[: best + 1]
    write_meta(job.model_dir, {"framework": "xgboost", "task": pre.task, "feature_names": names, "feature_types": config["feature_types"], "classes": pre.classes})
    booster.save_model(job.model_dir / MODEL_FILE)
    return TrainOutcome(best_iteration=best, best_score=score, metric=f"valid_{metric}", rows=rows, seconds=seconds)


class Scorer:
    """Predictions from a saved booster on an encoded feature table (see data2model.scoring)."""

    def __init__(self, model_dir, meta: dict[str, Any]) -> None:
        import xgboost

        self.meta = meta
        self.booster = xgboost.Booster(model_file=str(model_dir / MODEL_FILE))

    def predict(self, features) -> np.ndarray:
        names = self.meta["feature_names"]
        matrix = dmatrix({n: features[n].to_numpy() for n in names}, None, self.meta["feature_types"])
        return self.booster.predict(matrix)
