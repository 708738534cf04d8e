"""Ray Train trainers, one module per framework, all with the same shape:

`fit(job: TrainJob) -> TrainOutcome` runs distributed training with the Prefect task / stage
process as the Ray driver, and `save`s the model under the model folder, where
data2model.scoring loads it back for evaluation and serving.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data2model.errors import D2MError
from data2model.params import Train
from data2model.preprocess import Preprocessor

log = logging.getLogger("data2model.train")
META = "model.json"


@dataclass
class TrainJob:
    train_path: Path
    valid_path: Path
    preprocessor: Preprocessor
    params: Train
    model_dir: Path
    storage_path: Path
    tracking_uri: str
    run_id: str
    name: str


@dataclass
class TrainOutcome:
    best_iteration: int
    best_score: float
    metric: str
    rows: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def init_ray(params: Train) -> None:
    """Join RAY_ADDRESS if set, else start (once per process) a local Ray.

    Ray Data cannot read with CPUs the training workers hold, so the cluster needs at least
    one CPU beyond theirs or training waits forever. A local Ray is given that many logical
    CPUs (oversubscribing a small machine is slower, never stuck); a cluster must have them.
    """
    import ray

    needed = params.num_workers * params.cpus_per_worker + 1
    address = os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=None if address else max(os.cpu_count() or 1, needed),
            configure_logging=True,
            logging_level=logging.WARNING,
            # Ray's actors log routine INFO/WARNING chatter (state-API polling, progress); errors
            # still reach the driver, and training metrics go to MLflow.
            logging_config=ray.LoggingConfig(log_level="ERROR"),
            log_to_driver=True,
            runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd().resolve())}} if address else None,
        )
    available = ray.cluster_resources().get("CPU", 0)
    if available < needed:
        raise D2MError(
            f"Ray has {available:g} CPUs; train.num_workers={params.num_workers} x train.cpus_per_worker="
            f"{params.cpus_per_worker} needs {needed} (one left for reading data): lower them or add nodes"
        )


def fit(job: TrainJob) -> TrainOutcome:
    if job.params.framework == "torch":
        from data2model.trainers import torch_mlp as framework
    else:
        from data2model.trainers import xgboost_ray as framework
    init_ray(job.params)
    return framework.fit(job)
