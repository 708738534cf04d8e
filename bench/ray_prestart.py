"""Does prestarting Ray's worker processes shorten Ray Train's per-`fit` start? An empty
DataParallelTrainer (1 worker, 1 CPU, one report) on a local 2-CPU Ray, fit after:

    .venv/bin/python bench/ray_prestart.py base        # ray.init only
    .venv/bin/python bench/ray_prestart.py job 6       # the job's runtime env = Ray Train's controller's, 6 idle workers started
    .venv/bin/python bench/ray_prestart.py task 6      # 6 idle workers started by tasks given that env

Prints the fit's seconds and whether the training worker was one of the prestarted processes.
Run each mode several times, alternating: one fit is noisy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from data2model.trainers import ray_env

os.environ.update(ray_env())  # Ray Train's health check as the pipeline sets it, before ray is imported

import ray  # noqa: E402
import ray.train  # noqa: E402
from ray.train.v2._internal.constants import (  # noqa: E402
    DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
    RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR,
    get_env_vars_to_propagate,
)
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer  # noqa: E402


def controller_env() -> dict[str, str]:
    """The env_vars Ray Train gives its controller actor (DataParallelTrainer._initialize_and_run_controller)."""
    env = get_env_vars_to_propagate()
    env.setdefault(RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    return env


def loop(config: dict) -> None:
    with open(config["pid_file"], "w") as out:  # a report without a checkpoint leaves Result.metrics empty
        out.write(str(os.getpid()))
    ray.train.report({"done": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["base", "job", "task"])
    parser.add_argument("workers", type=int, nargs="?", default=6, help="idle workers to start first (job, task)")
    args = parser.parse_args()
    env = controller_env()
    kwargs = {}
    if args.mode != "base":
        kwargs["_system_config"] = {"num_workers_soft_limit": args.workers + 2, "idle_worker_killing_time_threshold_ms": 600_000}
    if args.mode == "job":
        kwargs["runtime_env"] = {"env_vars": env}
    ray.init(num_cpus=2, logging_level="WARNING", **kwargs)
    prestarted: set[int] = set()
    if args.mode != "base":
        @ray.remote(num_cpus=0)
        def nap() -> int:
            time.sleep(1.5)  # held long enough that each task gets its own process
            return os.getpid()

        task = nap.options(runtime_env={"env_vars": env}) if args.mode == "task" else nap
        prestarted = set(ray.get([task.remote() for _ in range(args.workers)]))
        time.sleep(3)  # the data stages' time in a run
    pid_file = os.path.join(tempfile.mkdtemp(prefix="d2m-prestart-"), "worker.pid")
    trainer = DataParallelTrainer(loop, train_loop_config={"pid_file": pid_file}, scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                                  run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="d2m-prestart-")))
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    with open(pid_file) as found:
        worker = int(found.read())
    os.unlink(pid_file)
    print(f"{args.mode}: empty fit {seconds:.2f} s; training worker pid {worker} {'was' if worker in prestarted else 'was not'} prestarted")
    ray.shutdown()


if __name__ == "__main__":
    main()
