"""Ray Train trainers, one module per framework, all with the same shape:

`fit(job: TrainJob) -> TrainOutcome` runs distributed training with the Prefect task / stage
process as the Ray driver, and `save`s the model under the model folder, where
data2model.scoring loads it back for evaluation and serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data2model.errors import D2MError
from data2model.params import Train
from data2model.preprocess import Preprocessor

log = logging.getLogger("data2model.train")
META = "model.json"
HEALTH_CHECK = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@dataclass
class TrainJob:
    train_path: Path
    valid_path: Path
    preprocessor: Preprocessor
    params: Train
    model_dir: Path
    storage_path: str | Path  # a folder, or a URI (s3://...) that must not pass through Path
    tracking_uri: str
    run_id: str
    name: str


@dataclass
class Schedule:
    """What a framework's train loop checkpoints and how the driver reads its telemetry."""

    metric: str  # reported validation metric that ranks checkpoints
    mode: str  # "min" or "max"
    step_name: str  # "round" or "epoch"


@dataclass
class TrainOutcome:
    best_iteration: int
    best_score: float
    metric: str
    rows: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


_RAY_INIT = threading.Lock()
_STARTED: set[str] = set()  # the GCS address of each local Ray that _init_ray started


def init_ray(params: Train) -> None:
    """Join RAY_ADDRESS if set, else start (once per process) a local Ray.

    The cluster needs the CPUs the training workers ask for, and no more: the splits are read
    by this process into the object store before the workers start (`put_split`). A local Ray
    is given that many logical CPUs (oversubscribing a small machine is slower, never stuck); a
    cluster must have them.
    One call at a time: a stage's call waits for the warm-up thread's (flows.pipeline.warm_up).
    """
    with _RAY_INIT:
        _init_ray(params)


def _init_ray(params: Train) -> None:
    import ray

    needed = params.num_workers * params.cpus_per_worker
    address = os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            check_reachable(address)
        env = ray_env(local=not address)
        os.environ.update(env)  # a local Ray's processes inherit the driver's environment
        try:
            ray.init(
                address=address,
                num_cpus=None if address else max(os.cpu_count() or 1, needed),
                configure_logging=True,
                logging_level=logging.WARNING,
                # Ray's actors log routine INFO/WARNING chatter (state-API polling, progress); errors
                # still reach the driver, and training metrics go to MLflow.
                logging_config=ray.LoggingConfig(log_level="ERROR"),
                log_to_driver=True,
                runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd().resolve()), **env}} if address else None,
            )
        except ConnectionError as err:
            if not address:
                raise
            raise D2MError(join_failed(address, err)) from None
        if not address:
            _STARTED.add(ray.get_runtime_context().gcs_address)
    resources = ray.cluster_resources()
    available = resources.get("CPU", 0)
    if available < needed:
        raise D2MError(
            f"Ray has {available:g} CPUs; train.num_workers={params.num_workers} x train.cpus_per_worker="
            f"{params.cpus_per_worker} needs {needed}: lower them or add nodes"
        )
    # Ray Train would wait for GPUs that never come, without a word.
    gpus = resources.get("GPU", 0)
    if params.use_gpu and gpus < params.num_workers:
        raise D2MError(
            f"train.use_gpu is true and train.num_workers={params.num_workers} needs a GPU each, but Ray sees {gpus:g} GPU(s): "
            "set train.use_gpu: false, or join a cluster with GPUs (RAY_ADDRESS)"
        )


def join_failed(address: str, err: BaseException) -> str:
    """What to fix when `ray.init` could not join RAY_ADDRESS. Ray's own error is a chained
    traceback; a missing or wrong token (`ray start` turns token auth on) only shows as
    InvalidAuthToken in the text of an exception inside it."""
    chain = []
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    if any("InvalidAuthToken" in text for text in chain):
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        return (f"RAY_ADDRESS={address}: the Ray cluster refused this driver's auth token (RAY_AUTH_MODE={mode}); "
                "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token (infra/README.md)")
    return f"RAY_ADDRESS={address}: could not join the Ray cluster: {chain[0]}"


def ray_env(local: bool = True) -> dict[str, str]:
    """Settings for Ray's processes; an environment variable of the same name overrides each.

    Ray Train's controller registers a reported checkpoint, and sees a worker finish or die,
    only at its health check (every 2 s by default): a worker dying within that window after a
    report loses the checkpoint, and every run ends up to 2 s late. Every 0.1 s shrinks both:
    from the worker's last report to `fit`'s return took 0.44 s at 1x, against 1.84 s at 0.5 s.
    A poll that a busy worker answers late is not a failure: Ray Train waits 10 minutes for it.

    On a `local` Ray, Ray Train's preemption watcher is off: it is an actor per `fit` (a Python
    process importing Ray Train, 1.5 s of CPU at 1x, started as the workers start) that polls
    the cluster for nodes being drained, and this machine's one node is never drained. A
    cluster keeps it."""
    env = {HEALTH_CHECK: os.environ.get(HEALTH_CHECK, "0.1")}
    if local:
        env[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
    return env


def started_here() -> bool:
    """Whether the Ray this process is connected to is a local one that `init_ray` started (not
    a cluster joined through RAY_ADDRESS, nor a Ray that the caller started)."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().gcs_address in _STARTED


def local_trainer(trainer_cls: Any) -> Any:
    """`trainer_cls` (a Ray Train trainer, or a functools.partial of one) without Ray Train's
    placement-group cleaner, for a Ray that `init_ray` started in this process.

    The cleaner is a detached actor per `fit` that polls the cluster every second and removes
    the workers' placement group if the controller dies without doing it: on a cluster, that
    reservation would otherwise outlive the run. A local Ray ends with this process, and its
    placement groups with it. On a warm local Ray at 1x, `fit` took 17.27-17.63 s with the
    cleaner (4 fits) and 15.29-16.10 s without (3 fits): a process started beside the
    controller's, the controller's wait to register the group with it, and its stop, which waits
    up to a poll. Ray Train has no setting for it, so this subclass drops it from the callbacks
    its controller is given."""
    import functools

    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    if isinstance(trainer_cls, functools.partial):
        return functools.partial(local_trainer(trainer_cls.func), *trainer_cls.args, **trainer_cls.keywords)

    class Local(trainer_cls):
        def _create_default_callbacks(self) -> list[Any]:
            return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, PlacementGroupCleanerCallback)]

    Local.__name__ = Local.__qualname__ = trainer_cls.__name__
    return Local


def check_reachable(address: str, timeout: float = 5) -> None:
    """Fail in seconds, naming RAY_ADDRESS, when nothing listens there: `ray.init` would retry
    for minutes and then raise a long traceback. `auto` (find a local head) is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise D2MError(f"RAY_ADDRESS={address}: no Ray head answers there ({err}); start the cluster or unset RAY_ADDRESS for a local Ray") from None


_NOT_IN_RUN_NAME = {"storage_path", "keep_checkpoints", "max_failures"}


def run_name(train_path: Path, valid_path: Path, params: Train, preprocessor: Path) -> str:
    """A Ray Train run name that only the same data, params and trainer code produce.

    Ray Train resumes a run whose name it finds under the storage path, so a rerun of an
    interrupted train stage continues from its latest checkpoint, while a change to anything
    that shapes the model (data, params, preprocessing, this package's trainer code) starts
    afresh instead of resuming a stale checkpoint. Where checkpoints go and how many failures
    to tolerate do not shape the model and are left out.
    """
    digest = hashlib.sha256()
    code = sorted(Path(__file__).parent.glob("*.py"))
    for path in (train_path, valid_path, preprocessor, *code):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(params.model_dump(exclude=_NOT_IN_RUN_NAME), sort_keys=True).encode())
    return f"train-{digest.hexdigest()[:16]}"


def run_ray_training(trainer_cls: Any, train_loop: Any, config: dict[str, Any], job: TrainJob, schedule: Schedule, what: str) -> tuple[Any, int, float, dict[str, float]]:
    """Run a Ray Train data-parallel trainer over the train/valid Parquet, put in Ray's object
    store (`put_split`; each worker takes its rows with `read_shard`), checkpointing as
    `job.params` says and restarting from the latest checkpoint after a worker dies. Rank 0's
    per-step metrics reach the MLflow run through the driver (`telemetry.MetricPump`), then the
    workers' telemetry is logged there.

    Returns the Ray `Result`, the training row count, the wall time of `fit` and the telemetry
    totals (restarts, repeated steps, throughput).
    """
    import ray
    import ray.train

    from data2model.trainers import telemetry

    splits = {part: put_split(path) for part, path in (("train", job.train_path), ("valid", job.valid_path))}
    rows = sum(n for _, n in splits["train"])
    collector = telemetry.start_collector()
    p = job.params
    if started_here():
        trainer_cls = local_trainer(trainer_cls)
    trainer = trainer_cls(
        train_loop,
        train_loop_config={**config, "splits": splits, "telemetry": collector, "checkpoint_every": p.checkpoint_every},
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.params.num_workers,
            use_gpu=job.params.use_gpu,
            resources_per_worker={"CPU": job.params.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=job.name,
            storage_path=storage_uri(str(job.storage_path)),
            failure_config=ray.train.FailureConfig(max_failures=p.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=p.keep_checkpoints, checkpoint_score_attribute=schedule.metric, checkpoint_score_order=schedule.mode,
            ),
        ),
    )
    log.info("training %s on %d rows with %d Ray worker(s), run %s", what, rows, p.num_workers, job.name)
    start = time.perf_counter()
    with telemetry.MetricPump(collector, job.tracking_uri, job.run_id):
        result = trainer.fit()
    seconds = time.perf_counter() - start
    summary = telemetry.summarise(ray.get(collector.dump.remote()))
    ray.kill(collector)
    with tempfile.TemporaryDirectory() as folder:
        telemetry.log_to_mlflow(summary, job.tracking_uri, job.run_id, Path(folder), schedule.step_name)
    if result.checkpoint is None:
        raise D2MError(f"Ray Train run {job.name} ended without a checkpoint: see the worker errors above")
    return result, rows, seconds, summary.totals


Blocks = list[tuple[Any, int]]  # (ObjectRef of a pyarrow Table, its row count), in row order


def put_split(path: Path, rows_per_block: int = 65_536) -> Blocks:
    """A split's Parquet in Ray's object store, one block of `rows_per_block` rows at a time,
    so this process holds one block, and the workers (on any node) fetch what they need: the
    workspace need not be shared between hosts.

    Not through Ray Data: its executor started inside each worker before training (1.7 s of a
    1x train stage; `put_split` in BENCHMARKS.md), and read by its tasks the default split took
    3.5 s against 0.6 s, because each read starts Ray worker processes. Both trainers load their
    whole shard into memory, so nothing is held that they would not hold anyway."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    with pq.ParquetFile(path) as parquet:
        blocks = [(ray.put(pa.Table.from_batches([batch])), batch.num_rows) for batch in parquet.iter_batches(batch_size=rows_per_block)]
        return blocks or [(ray.put(parquet.schema_arrow.empty_table()), 0)]


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, stop) of worker `rank` of `world`: contiguous, in order, sizes differing by
    at most one row (DDP needs every worker to take the same number of steps)."""
    return total * rank // world, total * (rank + 1) // world


def read_shard(blocks: Blocks, rank: int, world: int) -> Any:
    """Worker side: this worker's rows of a split put by `put_split`, fetching only the blocks
    they lie in."""
    import pyarrow as pa
    import ray

    start, stop = shard_bounds(sum(n for _, n in blocks), rank, world)
    wanted, offsets, at = [], [], 0
    for ref, n in blocks:
        if at < stop and at + n > start:
            wanted.append(ref)
            offsets.append(at)
        at += n
    if not wanted:
        return ray.get(blocks[0][0]).slice(0, 0)
    table = pa.concat_tables(ray.get(wanted))
    return table.slice(start - offsets[0], stop - start)


def storage_uri(storage_path: str) -> str:
    """A URI (s3://, gs://, ...) as given; a local folder made absolute, as Ray Train needs."""
    return storage_path if "://" in storage_path else str(Path(storage_path).resolve())


def write_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    """model.json: what data2model.scoring needs to load the model folder back."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / META).write_text(json.dumps(meta, indent=2) + "\n")


def framework(params: Train) -> Any:
    """The trainer module of `params.framework`."""
    if params.framework == "torch":
        from data2model.trainers import torch_mlp as module
    else:
        from data2model.trainers import xgboost_ray as module
    return module


def prepare(params: Train) -> None:
    """What a `fit` would otherwise wait for first: Ray (`init_ray`), the import of the
    framework's Ray Train trainer (`TRAINER`; ray.train.xgboost took 0.9 s of the train stage at
    1x) and Ray Train's autoscaling coordinator (`start_coordinator`). flows.pipeline.warm_up
    calls it from a thread while the data stages run."""
    import importlib

    init_ray(params)
    importlib.import_module(framework(params).TRAINER)
    start_coordinator()


def start_coordinator() -> None:
    """Start the actor that each `fit`'s controller asks for resources before it starts the
    worker group: Ray Train gets it by name, or creates it (a detached actor, kept between runs
    on a cluster) and waits for it, about 1 s of each 1x `fit` on 2 CPUs. Created here, from the
    driver, it takes one of the worker processes Ray started idle, where the controller's own
    would start a new one. The function is Ray's own (ray.data internals, Ray 2.60): if a Ray
    upgrade moves it, nothing is started here and `fit` starts the actor as before."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import get_or_create_autoscaling_coordinator
    except ImportError:
        log.debug("Ray Train's autoscaling coordinator is not where Ray 2.60 keeps it: fit starts it")
        return
    get_or_create_autoscaling_coordinator()


def fit(job: TrainJob) -> TrainOutcome:
    module = framework(job.params)
    init_ray(job.params)
    return module.fit(job)
