"""Ray Train XGBoost (the pipeline's trainer, 1 and 2 workers) against plain `xgboost.train` on
the same data and booster params, in one run. Each side is timed from the Parquet files to a
trained booster, with a fixed number of rounds (no early stopping) so both do the same work;
Ray's side includes its start-up, the splits put in Ray's object store and read by the
workers, checkpoints and telemetry.

Needs the pipeline's split (`make run`, or the ingest..split stages). `--scale N` trains on the
train split repeated N times (same distribution, N times the rows).

    .venv/bin/python bench/ray_xgboost.py --scale 1 --rounds 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from data2model.params import load_params
from data2model.preprocess import LABEL, Preprocessor
from data2model.trainers import TrainJob, init_ray, xgboost_ray

RESULTS = Path(__file__).parent / "results"


def plain(job: TrainJob, rounds: int) -> float:
    """Read the Parquet, build the DMatrix, train: what the Ray side does, on one process."""
    import xgboost

    started = time.perf_counter()
    names = job.preprocessor.feature_names
    types = xgboost_ray.feature_types(set(job.preprocessor.categorical), names)
    train, valid = (pq.read_table(path) for path in (job.train_path, job.valid_path))
    dtrain, dvalid = (xgboost_ray.dmatrix({n: t[n].to_numpy() for n in names}, t[LABEL].to_numpy(), types) for t in (train, valid))
    # The validation split every round, as the trainer (which also scores the training split every
    # 25 rounds: a little more work on the Ray side, not less).
    xgboost.train(xgboost_ray.booster_params(job), dtrain, rounds, evals=[(dvalid, "valid")], verbose_eval=False)
    return time.perf_counter() - started


def ray_train(job: TrainJob, workers: int, tracking_uri: str, run: int) -> float:
    import mlflow

    params = job.params.model_copy(update={"num_workers": workers})
    client = mlflow.MlflowClient(tracking_uri)
    artifacts = Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    experiment = client.get_experiment_by_name("bench") or client.get_experiment(client.create_experiment("bench", artifact_location=artifacts.as_uri()))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    job = replace(job, params=params, run_id=run_id, name=f"bench-{workers}w-{run}-{time.time_ns()}")
    started = time.perf_counter()
    xgboost_ray.fit(job)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    params = load_params(".")
    train_params = params.train.model_copy(update={
        "num_workers": 2, "checkpoint_every": max(args.rounds // 4, 1),
        "xgboost": params.train.xgboost.model_copy(update={"num_boost_round": args.rounds, "early_stopping_rounds": args.rounds}),
    })
    init_ray(train_params)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        train = pq.read_table(params.paths.split("train"))
        pq.write_table(pa.concat_tables([train] * args.scale), root / "train.parquet")
        job = TrainJob(
            train_path=root / "train.parquet", valid_path=Path(params.paths.split("valid")),
            preprocessor=Preprocessor.load(params.paths.preprocessor), params=train_params, model_dir=root / "model",
            storage_path=root / "ray", tracking_uri=f"sqlite:///{root / 'mlflow.db'}", run_id="", name="",
        )
        times: dict[str, list[float]] = {"plain": [], "ray_1_worker": [], "ray_2_workers": []}
        loads: dict[str, list[float]] = {k: [] for k in times}  # 1-minute load average as each side ended
        sides = {"plain": lambda run: plain(job, args.rounds), "ray_1_worker": lambda run: ray_train(job, 1, job.tracking_uri, run),
                 "ray_2_workers": lambda run: ray_train(job, 2, job.tracking_uri, run)}
        for run in range(args.repeats):
            for side, timed in sides.items():  # interleaved, so a busy spell on the machine hits every side
                times[side].append(timed(run))
                loads[side].append(round(os.getloadavg()[0], 1))
            print(json.dumps({k: round(v[-1], 2) for k, v in times.items()}), flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "rows": train.num_rows * args.scale, "scale": args.scale, "rounds": args.rounds, "repeats": args.repeats,
        "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "load_average_at_end": loads, "cpus": os.cpu_count(),
        "median_seconds": {k: round(v, 2) for k, v in median.items()},
        "ray_1_worker_vs_plain": round(median["ray_1_worker"] / median["plain"], 2),
        "ray_2_workers_vs_1": round(median["ray_2_workers"] / median["ray_1_worker"], 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ray_xgboost_{args.scale}x_{args.rounds}r.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
