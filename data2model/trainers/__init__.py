"""Ray Train trainers, one module per framework, all with the same shape:

`fit(job: TrainJob) -> TrainOutcome` runs distributed training with the Prefect task / stage
process as the Ray driver, and `save`s the model under the model folder, where
data2model.scoring loads it back for evaluation and serving.
"""

from __future__ import annotations

import json
import logging
import os
import time
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


def run_ray_training(trainer_cls: Any, train_loop: Any, config: dict[str, Any], job: TrainJob, what: str) -> tuple[Any, int, float]:
    """Run a Ray Train data-parallel trainer over the train/valid Parquet as Ray Data shards.

    Returns the Ray `Result`, the training row count and the wall time of `fit`.
    """
    import pyarrow.parquet as pq
    import ray.data
    import ray.train

    ray.data.DataContext.get_current().enable_progress_bars = False
    datasets = {part: ray.data.read_parquet(str(path)) for part, path in (("train", job.train_path), ("valid", job.valid_path))}
    rows = pq.ParquetFile(job.train_path).metadata.num_rows
    trainer = trainer_cls(
        train_loop,
        train_loop_config=config,
        datasets=datasets,
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.params.num_workers,
            use_gpu=job.params.use_gpu,
            resources_per_worker={"CPU": job.params.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(name=job.name, storage_path=str(job.storage_path.resolve())),
    )
    log.info("training %s on %d rows with %d Ray worker(s)", what, rows, job.params.num_workers)
    start = time.perf_counter()
    result = trainer.fit()
    return result, rows, time.perf_counter() - start


def write_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    """model.json: what data2model.scoring needs to load the model folder back."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / META).write_text(json.dumps(meta, indent=2) + "\n")


def fit(job: TrainJob) -> TrainOutcome:
    if job.params.framework == "torch":
        from data2model.trainers import torch_mlp as framework
    else:
        from data2model.trainers import xgboost_ray as framework
    init_ray(job.params)
    return framework.fit(job)
