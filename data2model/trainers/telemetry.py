"""Training telemetry: workers send one record per step (a boosting round or an epoch) to a
collector actor the driver owns, so the records outlive a worker that dies and reach the driver
whatever the framework. The driver turns them into MLflow metrics and a plot.

Rank 0's training metrics (loss, AUC, ... per step) take the same way to MLflow: the driver
logs them as they arrive (`MetricPump`), so the workers never import MLflow nor need to reach
its tracking store (a SQLite file on the driver's host is out of a remote worker's reach).

Step time is each worker's wall time per step. In synchronous data parallelism the fast
workers wait for the slow one inside the collective, so that time spreads over everyone; the
straggler flag (a worker above `STRAGGLER_RATIO` x the median) catches what is not synchronised
(reading the shard, evaluation, an oversubscribed or slower node).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRAGGLER_RATIO = 1.5
# Dense bf16 peak FLOP/s by GPU model, for the MFU estimate; an unknown GPU gets no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


class Collector:
    """A Ray actor (see `start_collector`): appends what workers send, hands it all back."""

    def __init__(self) -> None:
        self.attempts: dict[int, list[int]] = {}
        self.steps: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.metrics: list[tuple[str, float, int, int]] = []

    def start(self, rank: int, resumed_from: int) -> int:
        """A worker (re)starts at step `resumed_from`; returns its attempt number (0 first)."""
        self.attempts.setdefault(rank, []).append(resumed_from)
        return len(self.attempts[rank]) - 1

    def step(self, record: dict[str, Any]) -> None:
        self.steps.append(record)

    def checkpoint(self, record: dict[str, Any]) -> None:
        self.checkpoints.append(record)

    def log(self, metrics: list[tuple[str, float, int, int]]) -> None:
        """(name, value, timestamp in ms, step) records for the MLflow run."""
        self.metrics.extend(metrics)

    def take_metrics(self) -> list[tuple[str, float, int, int]]:
        taken, self.metrics = self.metrics, []
        return taken

    def ping(self) -> None:
        """Returns once every call sent before it has run (an actor runs one caller's calls in order)."""

    def dump(self) -> dict[str, Any]:
        return {"attempts": self.attempts, "steps": self.steps, "checkpoints": self.checkpoints}


def start_collector():
    import ray

    return ray.remote(num_cpus=0)(Collector).remote()


class StepClock:
    """Worker side: times steps and sends a record per step without waiting for the reply."""

    def __init__(self, collector, rank: int, resumed_from: int) -> None:
        import ray

        self.collector, self.rank = collector, rank
        self.attempt = ray.get(collector.start.remote(rank, resumed_from))
        self.started = time.perf_counter()

    def restart(self) -> None:
        self.started = time.perf_counter()

    def lap(self, step: int, steps: int, rows: int, flops: float | None = None, peak: float | None = None) -> float:
        """Record `steps` optimizer steps over `rows` rows since the last lap; return the seconds.
        `flops` done against a `peak` FLOP/s gives the MFU estimate."""
        now = time.perf_counter()
        seconds, self.started = now - self.started, now
        self.collector.step.remote({
            "attempt": self.attempt, "rank": self.rank, "step": step,
            "step_seconds": seconds / max(steps, 1), "rows_per_second": rows / seconds if seconds > 0 else 0.0,
            "mfu": flops / seconds / peak if flops and peak and seconds > 0 else None,
        })
        return seconds

    def log_metrics(self, records: list[tuple[str, float, int, int]]) -> None:
        """(name, value, timestamp in ms, step) for the MLflow run, sent without waiting
        (`MetricPump` logs them)."""
        if records:
            self.collector.log.remote(records)

    def checkpoint_saved(self, step: int, seconds: float) -> None:
        import ray

        # Waited for: the run may end right after the last checkpoint.
        ray.get(self.collector.checkpoint.remote({"attempt": self.attempt, "step": step, "seconds": seconds}))

    def flush(self) -> None:
        """Wait until every record sent so far has arrived."""
        import ray

        ray.get(self.collector.ping.remote())


class MetricPump:
    """Driver side, around `fit`: logs the metrics workers send (`StepClock.log_metrics`) to the
    MLflow run every `every` seconds from a thread, and what is left when the block ends."""

    def __init__(self, collector, tracking_uri: str, run_id: str, every: float = 2.0) -> None:
        import mlflow

        self.collector, self.run_id, self.every = collector, run_id, every
        self.client = mlflow.MlflowClient(tracking_uri)
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)

    def __enter__(self) -> "MetricPump":
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.stopped.set()
        self.thread.join()
        if self.error is None:
            self.pump()  # the last metrics: a worker's last report waited for the collector
        elif exc_type is None:
            raise self.error

    def _run(self) -> None:
        try:
            while not self.stopped.wait(self.every):
                self.pump()
        except Exception as err:  # raised in the driver's thread once training ends
            self.error = err

    def pump(self) -> None:
        import ray
        from mlflow.entities import Metric

        records = ray.get(self.collector.take_metrics.remote())
        for start in range(0, len(records), 1000):  # MLflow takes at most 1000 per call
            self.client.log_batch(self.run_id, metrics=[Metric(*record) for record in records[start : start + 1000]])


def peak_flops(device_name: str) -> float | None:
    for model, flops in PEAK_BF16_FLOPS.items():
        if model in device_name:
            return flops
    return None


@dataclass
class Summary:
    metrics: list[tuple[str, float, int]]  # (name, value, step)
    totals: dict[str, float]
    per_step: dict[int, dict[int, float]]  # step -> rank -> step seconds
    stragglers: list[tuple[int, int]]  # (step, rank)


def repeated_steps(attempts: dict[int, list[int]], steps: list[dict[str, Any]]) -> int:
    """Steps run again after restarts: for each restart, the steps the previous attempt reached
    beyond the checkpoint the next one resumed from (a worker killed mid-step may not have
    sent its last record, so this can undercount by one)."""
    repeated = 0
    for rank, starts in attempts.items():
        for attempt, resumed_from in enumerate(starts[1:], start=1):
            reached = [r["step"] for r in steps if r["rank"] == rank and r["attempt"] == attempt - 1]
            if reached:
                repeated = max(repeated, max(reached) + 1 - resumed_from)
    return repeated


def summarise(dump: dict[str, Any]) -> Summary:
    """Per-worker and overall metrics per step, a straggler flag per step, checkpoint save
    times, and run totals. A step run twice (after a restart) counts its last run."""
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    for record in sorted(dump["steps"], key=lambda r: r["attempt"]):
        latest[(record["step"], record["rank"])] = record
    per_step: dict[int, dict[int, dict[str, Any]]] = {}
    for (step, rank), record in latest.items():
        per_step.setdefault(step, {})[rank] = record
    metrics: list[tuple[str, float, int]] = []
    stragglers: list[tuple[int, int]] = []
    overall: list[float] = []
    for step in sorted(per_step):
        workers = per_step[step]
        median = statistics.median(r["step_seconds"] for r in workers.values())
        slow = [rank for rank, r in workers.items() if median > 0 and r["step_seconds"] > STRAGGLER_RATIO * median]
        stragglers += [(step, rank) for rank in slow]
        for rank, r in sorted(workers.items()):
            metrics += [(f"worker{rank}_step_seconds", r["step_seconds"], step), (f"worker{rank}_rows_per_second", r["rows_per_second"], step)]
        rows_per_second = sum(r["rows_per_second"] for r in workers.values())
        overall.append(rows_per_second)
        metrics += [("rows_per_second", rows_per_second, step), ("straggler", float(bool(slow)), step)]
        mfu = [r["mfu"] for r in workers.values() if r.get("mfu")]
        if mfu:
            metrics.append(("mfu", statistics.mean(mfu), step))
    saves = {r["step"]: r["seconds"] for r in sorted(dump["checkpoints"], key=lambda r: r["attempt"])}
    metrics += [("checkpoint_save_seconds", seconds, step) for step, seconds in sorted(saves.items())]
    totals = {
        "median_rows_per_second": statistics.median(overall) if overall else 0.0,
        "straggler_steps": float(len({step for step, _ in stragglers})),
        "restarts": float(max((len(s) - 1 for s in dump["attempts"].values()), default=0)),
        "repeated_steps": float(repeated_steps(dump["attempts"], dump["steps"])),
        # Where this run started: above 0 when it continued an interrupted run's checkpoint.
        "resumed_from_step": float(min((s[0] for s in dump["attempts"].values()), default=0)),
        "median_checkpoint_save_seconds": statistics.median(saves.values()) if saves else 0.0,
    }
    seconds = {step: {rank: r["step_seconds"] for rank, r in workers.items()} for step, workers in per_step.items()}
    return Summary(metrics=metrics, totals=totals, per_step=seconds, stragglers=stragglers)


def plot(summary: Summary, path: Path, step_name: str) -> Path:
    """Step time per worker over the run, stragglers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    steps = sorted(summary.per_step)
    for rank in sorted({rank for workers in summary.per_step.values() for rank in workers}):
        xs = [s for s in steps if rank in summary.per_step[s]]
        ax.plot(xs, [summary.per_step[s][rank] for s in xs], label=f"worker {rank}", linewidth=1)
    if summary.stragglers:
        ax.scatter([s for s, _ in summary.stragglers], [summary.per_step[s][r] for s, r in summary.stragglers],
                   color="red", marker="x", label=f"straggler (> {STRAGGLER_RATIO}x median)", zorder=3)
    ax.set_xlabel(step_name)
    ax.set_ylabel("seconds per step")
    ax.set_title("Ray Train step time per worker")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_to_mlflow(summary: Summary, tracking_uri: str, run_id: str, folder: Path, step_name: str) -> None:
    """Per-step metrics in batches (MLflow takes at most 1000 per call) and the plot as an
    artifact; the totals reach MLflow with the trainer's outcome."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    rows = [Metric(name, float(value), now, step) for name, value, step in summary.metrics]
    for start in range(0, len(rows), 1000):
        client.log_batch(run_id, metrics=rows[start : start + 1000])
    if summary.per_step:
        client.log_artifact(run_id, str(plot(summary, folder / "step_time.png", step_name)), "telemetry")
