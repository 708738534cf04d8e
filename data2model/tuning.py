"""`d2m tune`: a Ray Tune search with ASHA early termination over the `train.xgboost` keys that
`tune.search_space` declares, on the current train/valid split. Each trial is a single-process
XGBoost fit reporting its validation metric every round, so ASHA stops weak trials early. The
driver logs every trial to MLflow (nested runs under one parent run) and returns the best
configuration as `train.xgboost.*` overrides; the CLI then runs the pipeline with them, which
records a DVC experiment (`dvc exp apply <name>` makes it the workspace's params.yaml).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from data2model import quick_models, tracking
from data2model.errors import D2MError
from data2model.params import Params, Tune, XGBoostParams
from data2model.preprocess import Preprocessor
from data2model.tables import read_table

log = logging.getLogger("data2model.tune")
# The search metric per task: what the validation split reports, lower is better.
METRIC = {"binary": "logloss", "multiclass": "mlogloss", "regression": "rmse"}


def domains(space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """`{eta: {loguniform: [0.01, 0.3]}}` -> Ray Tune sampling domains; unknown keys are named."""
    from ray import tune

    kinds = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint, "choice": lambda *v: tune.choice(list(v))}
    out = {}
    for key, spec in space.items():
        if key not in XGBoostParams.model_fields or key in ("num_boost_round", "early_stopping_rounds"):
            raise D2MError(f"tune.search_space.{key}: not a tunable train.xgboost key ({', '.join(k for k in XGBoostParams.model_fields if k not in ('num_boost_round', 'early_stopping_rounds'))})")
        ((kind, values),) = spec.items() if len(spec) == 1 else ((None, None),)
        if kind not in kinds:
            raise D2MError(f"tune.search_space.{key}: expected one of {', '.join(kinds)} with a list of values, got {spec!r}")
        out[key] = kinds[kind](*values)
    return out


def _trial(config: dict[str, Any], data: dict[str, Any]) -> None:
    """One Tune trial: XGBoost on the train split, the validation metric reported every round."""
    import xgboost
    from ray import tune

    class Report(xgboost.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log) -> bool:
            tune.report({data["metric"]: float(evals_log["valid"][data["metric"]][-1]), "rounds": epoch + 1})
            return False

    params = {**data["booster"], **config, "eval_metric": data["metric"]}
    fit = xgboost.DMatrix(data["x"], label=data["y"], feature_types=data["types"], enable_categorical=True)
    valid = xgboost.DMatrix(data["xv"], label=data["yv"], feature_types=data["types"], enable_categorical=True)
    xgboost.train(params, fit, num_boost_round=data["rounds"], evals=[(valid, "valid")], callbacks=[Report()], verbose_eval=False)


def search(params: Params) -> dict[str, Any]:
    """Run the ASHA search; log the trials to MLflow; the best config and its metric."""
    import mlflow
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from data2model.trainers import init_ray, storage_uri

    knobs: Tune = params.tune
    if params.train.framework != "xgboost":
        raise D2MError(f"d2m tune searches train.xgboost keys, but train.framework is {params.train.framework}: set it to xgboost")
    pre = Preprocessor.load(params.paths.preprocessor)
    x, y, types = quick_models.matrix(read_table(params.paths.split("train")), pre)
    xv, yv, _ = quick_models.matrix(read_table(params.paths.split("valid")), pre)
    metric = METRIC[pre.task]
    base = params.train.xgboost
    booster = {**quick_models.booster(pre.task, len(pre.classes), base.eta, base.max_depth, knobs.seed), "min_child_weight": base.min_child_weight,
               "subsample": base.subsample, "colsample_bytree": base.colsample_bytree, "max_cat_to_onehot": base.max_cat_to_onehot}
    init_ray(params.train)
    data = {"x": x, "y": y, "xv": xv, "yv": yv, "types": types, "booster": booster, "metric": metric, "rounds": knobs.max_rounds}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, data=data), {"cpu": 1}),
        param_space=domains(knobs.search_space),
        tune_config=tune.TuneConfig(
            metric=metric, mode="min", num_samples=knobs.num_samples, search_alg=BasicVariantGenerator(random_state=knobs.seed),
            scheduler=ASHAScheduler(time_attr="rounds", max_t=knobs.max_rounds, grace_period=knobs.grace_rounds, reduction_factor=knobs.reduction_factor),
        ),
        run_config=tune.RunConfig(name="tune", storage_path=storage_uri(str(Path(params.train.storage_path) / "tune")), verbose=0),
    )
    grid = tuner.fit()
    trials = [(r.config, r.metrics_dataframe[metric].min(), int(r.metrics.get("rounds", 0))) for r in grid if r.error is None and r.metrics]
    if not trials:
        raise D2MError(f"every tuning trial failed: {[str(r.error) for r in grid if r.error][:3]}")
    experiment_id = tracking.configure(params)
    with mlflow.start_run(experiment_id=experiment_id, run_name="d2m tune") as parent:
        mlflow.log_params({"tune.num_samples": knobs.num_samples, "tune.max_rounds": knobs.max_rounds, "tune.metric": metric})
        for config, best_metric, rounds in trials:
            with mlflow.start_run(experiment_id=experiment_id, nested=True):
                mlflow.log_params({f"train.xgboost.{k}": v for k, v in config.items()})
                mlflow.log_metrics({f"valid_{metric}": float(best_metric), "rounds": rounds})
        config, best_metric, rounds = min(trials, key=lambda t: t[1])
        mlflow.log_metrics({f"best_valid_{metric}": float(best_metric), "trials": len(trials), "stopped_early": sum(r < knobs.max_rounds for _, _, r in trials)})
    ray.shutdown()
    plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in config.items()}
    best = {f"train.xgboost.{k}": round(v, 6) if isinstance(v, float) else v for k, v in plain.items()}
    log.info("best of %d trials: %s (valid %s %.5f after %d rounds)", len(trials), best, metric, best_metric, rounds)
    return {"metric": metric, "best_metric": float(best_metric), "overrides": best, "trials": len(trials),
            "stopped_early": sum(r < knobs.max_rounds for _, _, r in trials), "mlflow_run_id": parent.info.run_id}
