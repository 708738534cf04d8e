"""Ray Train behaviour both trainers share: 2 CPU workers for every task, checkpoints, a real
SIGKILL of a training worker mid-run, a rerun that resumes an interrupted run, and the
telemetry that reaches MLflow. Tables come from test_torch_mlp's learnable generator."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from data2model.params import TorchParams, Train, XGBoostParams
from data2model.preprocess import LABEL
from data2model.scoring import load_scorer
from data2model.trainers import TrainJob, run_name, telemetry, torch_mlp, xgboost_ray
from test_torch_mlp import DATA, encode, raw_table

TRAIN_ROWS, VALID_ROWS, TEST_ROWS = 3000, 800, 1500


def make_job(task: str, root: Path, tracking_uri: str, params: Train, name: str, rows: int = TRAIN_ROWS) -> tuple[TrainJob, object]:
    data = DATA[task]
    train_table, pre = encode(raw_table(rows, seed=1), data)
    valid_table, _ = encode(raw_table(VALID_ROWS, seed=2), data, pre)
    test_table, _ = encode(raw_table(TEST_ROWS, seed=3), data, pre)
    pq.write_table(train_table, root / "train.parquet")
    pq.write_table(valid_table, root / "valid.parquet")
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("ray") or client.get_experiment(
        client.create_experiment("ray", artifact_location=(root.parent / "artifacts").as_uri()))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    job = TrainJob(
        train_path=root / "train.parquet", valid_path=root / "valid.parquet", preprocessor=pre, params=params,
        model_dir=root / "model", storage_path=root.parent / "ray", tracking_uri=tracking_uri, run_id=run_id, name=name,
    )
    return job, test_table


def xgb_params(**overrides) -> Train:
    xgboost = overrides.pop("xgboost", {})
    return Train(
        **{"framework": "xgboost", "num_workers": 2, "seed": 7, "checkpoint_every": 10, "keep_checkpoints": 2, **overrides},
        xgboost=XGBoostParams(**{"num_boost_round": 80, "early_stopping_rounds": 10, "eta": 0.2, "max_depth": 4, **xgboost}),
    )


def torch_params(**overrides) -> Train:
    torch = overrides.pop("torch", {})
    return Train(
        **{"framework": "torch", "num_workers": 2, "seed": 7, "checkpoint_every": 2, "keep_checkpoints": 2, **overrides},
        torch=TorchParams(**{"epochs": 8, "batch_size": 128, "lr": 1e-2, "hidden": [32, 16], "embedding_dim": 4,
                             "dropout": 0.0, "early_stopping_epochs": 3, **torch}),
    )


def checkpoints(job: TrainJob) -> list[Path]:
    return sorted((Path(job.storage_path) / job.name).glob("checkpoint_2*"))


def metric_history(job: TrainJob, name: str) -> list[tuple[int, float]]:
    history = mlflow.MlflowClient(job.tracking_uri).get_metric_history(job.run_id, name)
    return sorted((m.step, m.value) for m in history)


def quality(task: str, job: TrainJob, test_table) -> float:
    """AUC, accuracy or RMSE/std on the test table, through the scoring path serving uses."""
    predictions = load_scorer(job.model_dir).predict(test_table.drop_columns([LABEL]))
    labels = test_table[LABEL].to_numpy()
    if task == "binary":
        return roc_auc_score(labels, predictions)
    if task == "multiclass":
        return float((predictions.argmax(axis=1) == labels).mean())
    return float(np.sqrt(np.mean((predictions - labels) ** 2)) / labels.std())


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_xgboost_two_workers_checkpoints_and_telemetry(ray_cluster, tracking_uri, tmp_path, task):
    (tmp_path / "run").mkdir()
    job, test_table = make_job(task, tmp_path / "run", tracking_uri, xgb_params(), f"xgb-{task}")
    started = time.perf_counter()
    outcome = xgboost_ray.fit(job)
    print(f"fit {time.perf_counter() - started:.1f}s, ray fit {outcome.seconds:.1f}s")
    score = quality(task, job, test_table)
    assert score > 0.85 if task == "binary" else score > 0.6 if task == "multiclass" else score < 0.5
    rounds = [step for step, _ in metric_history(job, "valid_" + outcome.metric.removeprefix("valid_"))]
    assert rounds == list(range(len(rounds)))
    assert len(rounds) == min(80, outcome.best_iteration + 10 + 1)
    # Best K by the metric, plus the latest (Ray keeps it to resume from).
    assert 1 <= len(checkpoints(job)) <= 3
    for rank in (0, 1):
        assert [s for s, _ in metric_history(job, f"worker{rank}_step_seconds")] == rounds
    assert all(v > 0 for _, v in metric_history(job, "rows_per_second"))
    assert metric_history(job, "checkpoint_save_seconds")
    assert outcome.extra["restarts"] == 0 and outcome.extra["repeated_steps"] == 0
    artifacts = mlflow.MlflowClient(tracking_uri).list_artifacts(job.run_id, "telemetry")
    assert [a.path for a in artifacts] == ["telemetry/step_time.png"]


def train_worker_pids() -> list[int]:
    """PIDs of this test's Ray Train workers: descendants of this process (its local Ray) whose
    process title Ray sets to the actor class, so no other Ray on the machine is touched."""
    import psutil

    pids = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def kill_a_worker_after_first_checkpoint(job: TrainJob, killed: list[int]) -> threading.Thread:
    """SIGKILL one live Ray Train worker process once Ray Train has registered a checkpoint
    (written its snapshot): a checkpoint still being reported when a worker dies is not one."""
    snapshot = Path(job.storage_path) / job.name / "checkpoint_manager_snapshot.json"

    def watch() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not snapshot.exists():
            time.sleep(0.05)
        pids = train_worker_pids()
        if pids:
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_xgboost_survives_a_killed_worker(ray_cluster, tracking_uri, tmp_path):
    """Ray Train registers a reported checkpoint at its controller's next health check (every
    0.1 s as init_ray sets it; 2 s by Ray's default), so an interval of 100 rounds of ~18 ms
    (1.8 s, longer under load) is what keeps the kill, made the moment the first checkpoint is
    registered, inside the interval after it. With Ray's 2 s, 101 rounds were repeated: the next
    checkpoint was reported, not yet registered, when the worker died. No early stopping: both
    runs train every round."""
    params = xgb_params(max_failures=1, checkpoint_every=100, xgboost={"num_boost_round": 300, "early_stopping_rounds": 300, "eta": 0.05, "max_depth": 8})
    for folder in ("clean", "failed"):
        (tmp_path / folder).mkdir()
    clean_job, test_table = make_job("binary", tmp_path / "clean", tracking_uri, params, "xgb-clean", rows=120000)
    clean = xgboost_ray.fit(clean_job)
    job, _ = make_job("binary", tmp_path / "failed", tracking_uri, params, "xgb-failed", rows=120000)
    killed: list[int] = []
    watcher = kill_a_worker_after_first_checkpoint(job, killed)
    outcome = xgboost_ray.fit(job)
    watcher.join()
    assert killed, "no worker was killed"
    assert outcome.extra["restarts"] == 1
    assert 0 <= outcome.extra["repeated_steps"] <= params.checkpoint_every
    assert outcome.best_iteration == pytest.approx(clean.best_iteration, abs=60)
    assert outcome.best_score == pytest.approx(clean.best_score, abs=0.01)
    assert quality("binary", job, test_table) == pytest.approx(quality("binary", clean_job, test_table), abs=0.01)
    print(f"\nxgboost fault: killed pid {killed[0]}, repeated {outcome.extra['repeated_steps']:.0f} rounds, "
          f"best valid AUC {outcome.best_score:.5f} vs unfailed {clean.best_score:.5f}")


def test_torch_rerun_resumes_an_interrupted_run(ray_cluster, tracking_uri, tmp_path):
    """A run that fails outright (no restarts allowed) is continued by the next run of the
    same configuration, from its latest checkpoint rather than from epoch 0."""
    import ray.train

    params = torch_params(max_failures=0, checkpoint_every=2, torch={"epochs": 40, "early_stopping_epochs": 40})
    (tmp_path / "first").mkdir()
    job, test_table = make_job("binary", tmp_path / "first", tracking_uri, params, "torch-resume")
    killed: list[int] = []
    watcher = kill_a_worker_after_first_checkpoint(job, killed)
    with pytest.raises(ray.train.TrainingFailedError):
        torch_mlp.fit(job)
    watcher.join()
    assert killed and checkpoints(job)
    (tmp_path / "second").mkdir()
    rerun, _ = make_job("binary", tmp_path / "second", tracking_uri, params, "torch-resume")
    outcome = torch_mlp.fit(rerun)
    epochs = [step for step, _ in metric_history(rerun, "valid_loss")]
    assert epochs[0] == outcome.extra["resumed_from_step"] > 0
    assert epochs == list(range(epochs[0], 40))
    assert quality("binary", rerun, test_table) > 0.85
    print(f"\ntorch rerun: resumed at epoch {epochs[0]} of 40")


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_torch_two_workers_telemetry(ray_cluster, tracking_uri, tmp_path, task):
    (tmp_path / "run").mkdir()
    job, test_table = make_job(task, tmp_path / "run", tracking_uri, torch_params(), f"torch-{task}")
    outcome = torch_mlp.fit(job)
    epochs = [step for step, _ in metric_history(job, "valid_loss")]
    for rank in (0, 1):
        assert [s for s, _ in metric_history(job, f"worker{rank}_step_seconds")] == epochs
    assert [s for s, _ in metric_history(job, "checkpoint_save_seconds")] == sorted({e for e in epochs if (e + 1) % 2 == 0} | {epochs[-1]})
    assert not metric_history(job, "mfu")  # CPU: no MFU estimate
    assert outcome.extra["restarts"] == 0
    score = quality(task, job, test_table)
    assert score > 0.6 if task == "multiclass" else score < 0.5


@pytest.mark.parametrize("framework", ["xgboost", "torch"])
def test_same_seed_and_data_give_the_same_model(ray_cluster, tracking_uri, tmp_path, framework):
    """Two unfailed 2-worker CPU runs of one configuration (under different run names, so the
    second does not reuse the first's checkpoint) give the same model to 1e-6."""
    trainer, params = (xgboost_ray, xgb_params()) if framework == "xgboost" else (torch_mlp, torch_params())
    scores = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        job, test_table = make_job("binary", tmp_path / name, tracking_uri, params, f"repro-{framework}-{name}")
        outcome = trainer.fit(job)
        scores.append((outcome.best_iteration, outcome.best_score, quality("binary", job, test_table)))
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


def test_use_gpu_without_a_gpu_is_a_clear_error_not_a_wait(ray_cluster):
    """Ray Train would queue a GPU worker on a cluster with no GPU forever; the driver says so."""
    import ray

    from data2model.errors import D2MError
    from data2model.trainers import init_ray

    assert ray.cluster_resources().get("GPU", 0) == 0
    init_ray(Train(num_workers=2))  # the same cluster is fine without GPUs
    with pytest.raises(D2MError, match=r"train.use_gpu is true .*num_workers=2 needs a GPU each, but Ray sees 0 GPU"):
        init_ray(Train(num_workers=2, use_gpu=True))


def test_prepare_starts_the_autoscaling_coordinator_that_fit_asks_for(ray_cluster):
    """trainers.prepare (the run's warm-up) starts Ray Train's autoscaling coordinator, through
    the function Ray Train's controller calls at each fit to get it by name: the controller
    then finds it running instead of starting it and waiting."""
    import ray
    from ray.data._internal.cluster_autoscaler import default_autoscaling_coordinator
    from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client

    from data2model.trainers import prepare

    assert autoscaling_coordinator_client.get_or_create_autoscaling_coordinator is default_autoscaling_coordinator.get_or_create_autoscaling_coordinator
    name = {"name": "AutoscalingCoordinator", "namespace": "AutoscalingCoordinator"}
    with contextlib.suppress(ValueError):  # none yet; else an earlier fit of this module's Ray started it (detached, so it stays)
        ray.kill(ray.get_actor(**name))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(**name)
        except ValueError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the earlier coordinator did not stop")
    prepare(xgb_params())
    coordinator = ray.get_actor(**name)
    assert ray.get(coordinator.__ray_ready__.remote(), timeout=60)


def test_run_name_follows_what_shapes_the_model(tmp_path):
    for part, content in (("train", b"t"), ("valid", b"v"), ("pre", b"p")):
        (tmp_path / part).write_bytes(content)
    paths = (tmp_path / "train", tmp_path / "valid")
    name = run_name(*paths, Train(), tmp_path / "pre")
    assert name == run_name(*paths, Train(max_failures=0, storage_path="s3://b/x", keep_checkpoints=5), tmp_path / "pre")
    assert name != run_name(*paths, Train(num_workers=2), tmp_path / "pre")
    assert name != run_name(*paths, Train(xgboost=XGBoostParams(eta=0.1)), tmp_path / "pre")
    (tmp_path / "valid").write_bytes(b"v2")
    assert name != run_name(*paths, Train(), tmp_path / "pre")


def step(rank: int, step_: int, seconds: float, attempt: int = 0) -> dict:
    return {"attempt": attempt, "rank": rank, "step": step_, "step_seconds": seconds, "rows_per_second": 100 / seconds, "mfu": None}


def test_telemetry_flags_stragglers_and_counts_repeated_steps():
    dump = {
        "attempts": {0: [0, 10], 1: [0, 10], 2: [0, 10]},
        "steps": [step(r, s, 1.0) for s in range(14) for r in range(3)]
        + [step(2, 5, 1.6), step(2, 6, 1.4)]  # 1.6x and 1.4x the median of their steps
        + [step(r, s, 0.5, attempt=1) for s in range(10, 20) for r in range(3)],
        "checkpoints": [{"attempt": 0, "step": 9, "seconds": 0.2}, {"attempt": 1, "step": 19, "seconds": 0.4}],
    }
    dump["steps"] = [r for r in dump["steps"] if not (r["rank"] == 2 and r["step"] in (5, 6) and r["step_seconds"] == 1.0)]
    summary = telemetry.summarise(dump)
    assert summary.stragglers == [(5, 2)]
    assert summary.totals["repeated_steps"] == 4  # attempt 0 reached step 13, attempt 1 resumed at 10
    assert summary.totals["restarts"] == 1 and summary.totals["resumed_from_step"] == 0
    values = {(name, s): v for name, v, s in summary.metrics}
    assert values[("straggler", 5)] == 1.0 and values[("straggler", 6)] == 0.0
    assert values[("worker0_step_seconds", 12)] == 0.5  # the rerun of a step wins
    assert values[("rows_per_second", 12)] == pytest.approx(600)
    assert [values[("checkpoint_save_seconds", s)] for s in (9, 19)] == [0.2, 0.4]


def test_ray_env_turns_the_preemption_watcher_off_on_a_local_ray_only(monkeypatch):
    """Ray Train reads this variable in its controller; a local Ray's one node is never drained."""
    from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR

    from data2model.trainers import PREEMPTION_WATCHER, ray_env

    assert PREEMPTION_WATCHER == ENABLE_PREEMPTION_WATCHER_ENV_VAR  # the name Ray Train reads (Ray 2.60)
    monkeypatch.delenv(PREEMPTION_WATCHER, raising=False)
    assert ray_env(local=True)[PREEMPTION_WATCHER] == "0"
    assert PREEMPTION_WATCHER not in ray_env(local=False)
    monkeypatch.setenv(PREEMPTION_WATCHER, "1")  # the user's setting wins
    assert ray_env(local=True)[PREEMPTION_WATCHER] == "1"


@pytest.mark.parametrize(("workers", "imports_xgboost"), [(1, False), (2, True)])
def test_only_several_xgboost_workers_make_the_controller_import_xgboost(workers, imports_xgboost):
    """fit's controller unpickles the trainer's backend config: XGBoost's (for its Rabit tracker)
    imports xgboost there, 0.8 s of each fit's start; one worker has no peer and gets the plain
    one. Unpickled here in a fresh interpreter, as the controller's process does."""
    import pickle
    import subprocess
    import sys

    config = xgboost_ray.trainer_class(workers)(lambda: None).backend_config
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()); print('xgboost' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(config), capture_output=True, check=True).stdout
    assert out.decode().strip() == str(imports_xgboost)


def test_the_training_workers_xgboost_import_leaves_out_sklearn_and_only_it():
    """The train loop's first import: xgboost without scikit-learn (0.6 s of each fit's start),
    in a fresh interpreter as a worker's process is; scikit-learn still imports afterwards, and
    the booster trains. A process that already has scikit-learn keeps xgboost's wrappers."""
    import subprocess
    import sys

    code = (
        "import sys; from data2model.trainers.xgboost_ray import import_without_sklearn; import_without_sklearn(); "
        "import xgboost, numpy as np; print(xgboost.compat.SKLEARN_INSTALLED, 'sklearn' in sys.modules); "
        "import sklearn; print(sys.modules['sklearn'] is not None); "
        "d = xgboost.DMatrix(np.arange(20.0).reshape(10, 2), label=np.arange(10) % 2); print(xgboost.train({}, d, 2).num_boosted_rounds())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True", "2"]
    code = "import sklearn; from data2model.trainers.xgboost_ray import import_without_sklearn; import_without_sklearn(); import xgboost; print(xgboost.compat.SKLEARN_INSTALLED)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_the_canarys_preload_imports_xgboost_and_its_scorer_without_sklearn():
    """What the canary's server imports while it waits for the version's number: the model's
    framework and its Scorer, not scikit-learn, which serving never uses."""
    import subprocess
    import sys

    code = "import sys; from data2model.scoring import preload; preload('xgboost'); print(sorted(m for m in ('xgboost', 'sklearn', 'data2model.trainers.xgboost_ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['data2model.trainers.xgboost_ray', 'xgboost']"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_local_rays_trainer_drops_only_the_placement_group_cleaner(workers):
    """On a Ray that init_ray started, fit's controller runs without Ray Train's placement-group
    cleaner (a process per fit, and a wait at its start and stop) and with every other callback;
    the one-worker backend (a functools.partial) is kept."""
    from ray.train import BackendConfig
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.xgboost import XGBoostConfig, XGBoostTrainer

    from data2model.trainers import local_trainer

    stock = xgboost_ray.trainer_class(workers)(lambda: None)
    local = local_trainer(xgboost_ray.trainer_class(workers))(lambda: None)
    names = [type(cb).__name__ for cb in stock._create_default_callbacks()]
    assert PlacementGroupCleanerCallback.__name__ in names  # where Ray Train 2.60 adds it
    assert [type(cb).__name__ for cb in local._create_default_callbacks()] == [n for n in names if n != PlacementGroupCleanerCallback.__name__]
    assert type(local.backend_config) is (XGBoostConfig if workers > 1 else BackendConfig)
    assert isinstance(local, XGBoostTrainer) and type(local).__name__ == "XGBoostTrainer"


def test_only_a_ray_that_init_ray_started_counts_as_local(ray_cluster):
    """The Ray a caller started (here the fixture's) keeps Ray Train's defaults; one init_ray
    starts (a fresh interpreter, no RAY_ADDRESS) is local. Started for real: about 5 s."""
    import subprocess
    import sys

    from data2model.trainers import started_here

    assert not started_here()
    code = ("from data2model.trainers import init_ray, started_here; from data2model.params import Train; "
            "print(started_here()); init_ray(Train()); print(started_here())")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "True"]
