"""XGBoost through Ray Train (V2): each worker trains on its shard of the splits (device `cuda` when
train.use_gpu), checkpoints every train.checkpoint_every rounds and resumes from the latest
checkpoint; rank 0 sends the validation metrics of every round, and the training split's every
25 rounds, to the MLflow run (through the driver, trainers.telemetry.MetricPump); the driver
keeps the booster cut at the best round.

The training split is not in XGBoost's per-round `evals`: its AUC sorts every training row each
round, which nearly doubled the boosting time (17.6 s against 10.0 s for 200 rounds at the
default data, one thread)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

from data2model.trainers import Schedule, TrainJob, TrainOutcome, read_shard, run_ray_training, write_meta

MODEL_FILE = "xgboost.ubj"
TRAINER = "ray.train.xgboost"  # what fit imports first (trainers.prepare imports it ahead)
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


class Rounds:
    """Early stopping, checkpoints and telemetry for one worker, as an XGBoost callback.

    XGBoost's own early stopping forgets the best round when training continues from a saved
    booster, so this one keeps it in the booster's attributes, which the checkpoint carries.
    Every worker sees the same all-reduced validation metric, so every worker stops, and
    reports, at the same round.
    """

    def __init__(self, config: dict[str, Any], rank: int, start: "Any | None", dtrain: Any) -> None:
        from data2model.trainers.telemetry import StepClock

        self.config, self.rank, self.dtrain, self.rows = config, rank, dtrain, dtrain.num_row()
        self.metric = config["booster_params"]["eval_metric"][-1]
        self.maximize = self.metric in _MAXIMIZE
        self.done = start.num_boosted_rounds() if start is not None else 0
        self.best = (float(start.attr("best_score")), int(start.attr("best_iteration"))) if start is not None else None
        self.last_score = self.best[0] if self.best else float("nan")
        self.clock = StepClock(config["telemetry"], rank, self.done)
        self.pending: list[tuple[str, float, int, int]] = []

    def callback(self):
        import xgboost

        rounds = self

        class Callback(xgboost.callback.TrainingCallback):
            def before_training(self, model):
                rounds.clock.restart()
                return model

            def after_iteration(self, model, epoch, evals_log) -> bool:
                return rounds.after_round(model, rounds.done + epoch, evals_log)

        return Callback()

    def after_round(self, model, round_: int, evals_log: dict[str, Any]) -> bool:
        self.clock.lap(round_, 1, self.rows)
        score = self.last_score = float(evals_log["valid"][self.metric][-1])
        if self.best is None or (score > self.best[0] if self.maximize else score < self.best[0]):
            self.best = (score, round_)
            model.set_attr(best_score=str(score), best_iteration=str(round_))
        if round_ % _LOG_EVERY == 0:  # every worker: the metric is all-reduced across them
            evals_log = {**evals_log, "train": self.train_metrics(model, round_)}
        if self.rank == 0:
            self.log_round(round_, evals_log)
        if (round_ + 1) % self.config["checkpoint_every"] == 0:
            self.report(model, round_, score, finished=False)
        return round_ - self.best[1] >= self.config["early_stopping_rounds"]

    def train_metrics(self, model, round_: int) -> dict[str, list[float]]:
        """The training split's metrics after `round_`, shaped like XGBoost's evals_log."""
        text = model.eval_set([(self.dtrain, "train")], round_)  # "[r]\ttrain-logloss:0.43\ttrain-auc:0.67"
        pairs = (item.split(":") for item in text.split("\t")[1:])
        return {name.removeprefix("train-"): [float(value)] for name, value in pairs}

    def log_round(self, round_: int, evals_log: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        for data_name, metrics in evals_log.items():
            for metric, values in metrics.items():
                self.pending.append((f"{data_name}_{metric}", float(values[-1]), now, round_))
        if len(self.pending) >= _LOG_EVERY * 4:
            self.flush_metrics()
        if round_ % _LOG_EVERY == 0:  # progress on the driver's console (Ray forwards worker output)
            shown = ", ".join(f"valid_{m}={v[-1]:.4f}" for m, v in evals_log.get("valid", {}).items())
            # To the process's own stdout: Ray Train's patched print also logs what goes to
            # sys.stdout, and the driver would show each line twice.
            print(f"round {round_}: {shown}", file=sys.__stdout__, flush=True)

    def flush_metrics(self) -> None:
        self.clock.log_metrics(self.pending)
        self.pending = []

    def report(self, model, round_: int, score: float, finished: bool) -> None:
        """Every worker reports (Ray Train needs the same count from each); rank 0 attaches
        the booster as the checkpoint."""
        import ray.train
        from ray.train.xgboost import RayTrainReportCallback

        self.flush_metrics()
        metrics = {"round": round_, f"valid_{self.metric}": score, "best_iteration": self.best[1], "best_score": self.best[0]}
        if self.rank != 0:
            ray.train.report(metrics)
            self.clock.flush()
        else:
            started = time.perf_counter()
            model.set_attr(finished="1" if finished else "0")
            with tempfile.TemporaryDirectory() as folder:
                model.save_model(os.path.join(folder, RayTrainReportCallback.CHECKPOINT_NAME))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            self.clock.checkpoint_saved(round_, time.perf_counter() - started)
        self.clock.restart()

    def finish(self, model) -> None:
        """The final checkpoint, with the booster marked finished so a rerun does not retrain."""
        self.report(model, model.num_boosted_rounds() - 1, self.last_score, finished=True)


_MAXIMIZE = {"auc", "aucpr", "map", "ndcg"}


def import_without_sklearn() -> None:
    """Import xgboost without scikit-learn, in a process that has imported neither.

    xgboost.compat imports scikit-learn only to base its scikit-learn estimators on it, and
    treats an ImportError as "not installed". A training worker never uses those estimators,
    and the import took 0.6 s of the worker's 0.86 s `import ray.train.xgboost`, on `fit`'s
    path. scikit-learn stays importable: it is hidden during xgboost's import only."""
    if "xgboost" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError
    try:
        import xgboost  # noqa: F401
    finally:
        del sys.modules["sklearn"]


def preload() -> None:
    """What the Scorer imports when it loads a model, ahead of it (`scoring.preload`)."""
    import_without_sklearn()


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; continues from Ray Train's latest checkpoint if any."""
    import_without_sklearn()
    import ray.train
    import xgboost
    from ray.train.xgboost import RayTrainReportCallback

    rank = ray.train.get_context().get_world_rank()
    names, types = config["feature_names"], config["feature_types"]

    world = ray.train.get_context().get_world_size()

    def shard(name: str):
        table = read_shard(config["splits"][name], rank, world)
        return dmatrix({n: table[n].to_numpy() for n in names}, table["label"].to_numpy(), types)

    dtrain, dvalid = shard("train"), shard("valid")
    checkpoint = ray.train.get_checkpoint()
    start = RayTrainReportCallback.get_model(checkpoint) if checkpoint else None
    rounds = Rounds(config, rank, start, dtrain)
    if start is not None and start.attr("finished") == "1":
        booster = start
    else:
        booster = xgboost.train(
            config["booster_params"],
            dtrain,
            num_boost_round=config["num_boost_round"] - rounds.done,
            evals=[(dvalid, "valid")],
            callbacks=[rounds.callback()],
            xgb_model=start,
            verbose_eval=False,
        )
    rounds.finish(booster)


def trainer_class(num_workers: int) -> Any:
    """Ray Train's XGBoostTrainer; for one worker, without its collective backend. Several
    workers all-reduce through XGBoost's Rabit tracker, which XGBoostConfig starts in Ray Train's
    controller: its import of xgboost there took 0.8 s of each `fit`'s start at 1x, before the
    workers were asked for. One worker has no peer to talk to, so the plain backend (Ray Train's
    BackendConfig) leaves xgboost out of the controller; the worker imports it to train."""
    import functools

    from ray.train import BackendConfig
    from ray.train.xgboost import XGBoostTrainer

    return XGBoostTrainer if num_workers > 1 else functools.partial(XGBoostTrainer, xgboost_config=BackendConfig())


def fit(job: TrainJob) -> TrainOutcome:
    from ray.train.xgboost import RayTrainReportCallback

    pre = job.preprocessor
    names = pre.feature_names
    metric = _OBJECTIVES[pre.task][1][-1]
    config = {
        "booster_params": booster_params(job),
        "num_boost_round": job.params.xgboost.num_boost_round,
        "early_stopping_rounds": job.params.xgboost.early_stopping_rounds,
        "feature_names": names,
        "feature_types": feature_types(set(pre.categorical), names),
    }
    schedule = Schedule(metric=f"valid_{metric}", mode="max" if metric in _MAXIMIZE else "min", step_name="boosting round")
    result, rows, seconds, totals = run_ray_training(trainer_class(job.params.num_workers), _train_loop, config, job, schedule, "XGBoost")
    booster = RayTrainReportCallback.get_model(result.checkpoint)
    best = int(booster.attr("best_iteration"))
    score = float(booster.attr("best_score"))
    booster = booster[: best + 1]
    write_meta(job.model_dir, {"framework": "xgboost", "task": pre.task, "feature_names": names, "feature_types": config["feature_types"], "classes": pre.classes})
    booster.save_model(job.model_dir / MODEL_FILE)
    return TrainOutcome(best_iteration=best, best_score=score, metric=f"valid_{metric}", rows=rows, seconds=seconds, extra=totals)


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
