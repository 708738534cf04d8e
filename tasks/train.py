"""train: distributed training on Ray Train (XGBoost or a PyTorch MLP), tracked in MLflow.

The MLflow run opened here is the one evaluate and register add to; its id is in
`paths.train_report`. The Ray Train run is named from the data, params and trainer code, so a
rerun after an interruption continues from the latest checkpoint under `train.storage_path`
(which DVC does not delete), and a rerun of a finished configuration reuses its final checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data2model import tracking
from data2model.lineage import lineage_tags
from data2model.params import Params
from data2model.preprocess import Preprocessor
from data2model.stage import main
from data2model.tables import atomic_dir, write_json
from data2model.trainers import TrainJob, fit, run_name

log = logging.getLogger("data2model.train")


def run(params: Params) -> dict[str, Any]:
    import mlflow

    pre = Preprocessor.load(params.paths.preprocessor)
    experiment_id = tracking.configure(params)
    train_path, valid_path = Path(params.paths.split("train")), Path(params.paths.split("valid"))
    with mlflow.start_run(experiment_id=experiment_id) as active, atomic_dir(params.paths.model_dir) as model_dir:
        mlflow.log_params(tracking.run_params(params))
        name = run_name(train_path, valid_path, params.train, Path(params.paths.preprocessor))
        mlflow.set_tags({**lineage_tags(".", params.paths.raw), "framework": params.train.framework, "task": pre.task, "ray_run": name})
        job = TrainJob(
            train_path=train_path,
            valid_path=valid_path,
            preprocessor=pre,
            params=params.train,
            model_dir=model_dir,
            storage_path=params.train.storage_path,
            tracking_uri=mlflow.get_tracking_uri(),
            run_id=active.info.run_id,
            name=name,
        )
        outcome = fit(job)
        mlflow.log_metrics({
            f"best_{outcome.metric}": outcome.best_score,
            "best_iteration": outcome.best_iteration,
            "train_seconds": outcome.seconds,
            "train_rows": outcome.rows,
            **{k: v for k, v in outcome.extra.items() if isinstance(v, (int, float))},
        })
    report = {
        "run_id": active.info.run_id,
        "framework": params.train.framework,
        "ray_run": name,
        "best_iteration": outcome.best_iteration,
        f"best_{outcome.metric}": round(outcome.best_score, 6),
        "train_rows": outcome.rows,
        "train_seconds": round(outcome.seconds, 2),
    }
    write_json(report, params.paths.train_report)
    return report


if __name__ == "__main__":
    main(run)
