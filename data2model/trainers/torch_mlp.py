"""A PyTorch MLP with categorical embeddings through Ray Train (V2): each worker trains DDP on
its shard of the splits; validation metrics are all-reduced so every worker takes the same
early-stopping decision; NCCL and bf16 autocast on GPU, gloo on CPU. Every
train.checkpoint_every epochs rank 0 checkpoints the weights, optimizer and best epoch so far,
from which a restarted worker group (or a rerun) continues; rank 0 sends per-epoch metrics to
the MLflow run (through the driver, trainers.telemetry.MetricPump), and the driver saves the best epoch's weights with the architecture to rebuild them."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from data2model.errors import D2MError
from data2model.preprocess import LABEL
from data2model.trainers import Blocks, Schedule, TrainJob, TrainOutcome, read_shard, run_ray_training, write_meta

MODEL_FILE = "torch.pt"
TRAINER = "ray.train.torch"  # what fit imports first (trainers.prepare imports it ahead)
_EVAL_BATCH = 65536


class TabularMLP(nn.Module):
    """Standardized numeric columns and one embedding per categorical column, then an MLP.

    The scaling statistics are buffers, so the saved state carries them and a scorer needs
    only the encoded feature table. `forward` gives logits (or the standardized target);
    `predict` gives what data2model.scoring promises: P(class 1), class probabilities or values.
    """

    def __init__(self, task: str, n_numeric: int, cardinalities: list[int], embedding_dim: int, hidden: list[int], dropout: float, outputs: int) -> None:
        super().__init__()
        self.task = task
        self.register_buffer("numeric_mean", torch.zeros(n_numeric))
        self.register_buffer("numeric_std", torch.ones(n_numeric))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.embeddings = nn.ModuleList(nn.Embedding(card, min(embedding_dim, (card + 1) // 2 + 1)) for card in cardinalities)
        layers: list[nn.Module] = []
        width = n_numeric + sum(e.embedding_dim for e in self.embeddings)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, outputs))
        self.mlp = nn.Sequential(*layers)

    def set_scaling(self, numeric_mean: list[float], numeric_std: list[float], target_mean: float = 0.0, target_std: float = 1.0) -> None:
        self.numeric_mean.copy_(torch.tensor(numeric_mean))
        self.numeric_std.copy_(torch.tensor(numeric_std))
        self.target_mean.fill_(target_mean)
        self.target_std.fill_(target_std)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        parts = [(numeric - self.numeric_mean) / self.numeric_std]
        parts += [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        out = self.mlp(torch.cat(parts, dim=1))
        return out if self.task == "multiclass" else out.squeeze(1)

    def predict(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        out = self(numeric, categorical).float()
        if self.task == "binary":
            return torch.sigmoid(out)
        if self.task == "multiclass":
            return torch.softmax(out, dim=1)
        return out * self.target_std + self.target_mean


def architecture(job: TrainJob) -> dict[str, Any]:
    """Constructor kwargs of TabularMLP: saved next to the weights to rebuild it."""
    pre, p = job.preprocessor, job.params.torch
    return {
        "task": pre.task,
        "n_numeric": len(pre.numeric),
        "cardinalities": list(pre.cardinalities.values()),
        "embedding_dim": p.embedding_dim,
        "hidden": list(p.hidden),
        "dropout": p.dropout,
        "outputs": len(pre.classes) if pre.task == "multiclass" else 1,
    }


def feature_tensors(table: pa.Table, numeric: list[str], categorical: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, numeric) float32 and (rows, categorical) int64 tensors from encoded columns."""

    def matrix(names: list[str], dtype) -> np.ndarray:
        out = np.empty((table.num_rows, len(names)), dtype=dtype)
        for i, name in enumerate(names):
            out[:, i] = table[name].to_numpy()
        return out

    return torch.from_numpy(matrix(numeric, np.float32)), torch.from_numpy(matrix(categorical, np.int64))


def _load_shard(blocks: Blocks, rank: int, world: int, numeric: list[str], categorical: list[str], task: str) -> tuple[torch.Tensor, ...]:
    """The worker's whole shard as tensors, read once: a shard of tabular rows fits in memory,
    and per-epoch streaming would cost more than the epoch itself on a few cores."""
    table = read_shard(blocks, rank, world)
    x_num, x_cat = feature_tensors(table, numeric, categorical)
    label = torch.from_numpy(table[LABEL].to_numpy().astype(np.int64 if task == "multiclass" else np.float32))
    return x_num, x_cat, label


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return tensor.tolist()


def _all_gather(array: np.ndarray) -> np.ndarray:
    import torch.distributed as dist

    if not dist.is_initialized():
        return array
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)


def _evaluate(model: TabularMLP, valid: tuple[torch.Tensor, ...], loss_fn: nn.Module, device: torch.device, autocast) -> dict[str, float]:
    """Validation metrics over all workers' shards, identical on every worker."""
    from sklearn.metrics import roc_auc_score

    x_num, x_cat, label = valid
    model.eval()
    with torch.no_grad(), autocast():
        out = torch.cat([model(x_num[i : i + _EVAL_BATCH], x_cat[i : i + _EVAL_BATCH]) for i in range(0, len(label), _EVAL_BATCH)]).float()
    target = (label - model.target_mean) / model.target_std if model.task == "regression" else label
    loss_sum, rows = _all_reduce([float(loss_fn(out, target)) * len(label), float(len(label))], device)
    metrics = {"valid_loss": loss_sum / rows}
    if model.task == "binary":
        y = _all_gather(label.cpu().numpy())
        metrics["valid_auc"] = float(roc_auc_score(y, _all_gather(out.cpu().numpy()))) if np.unique(y).size == 2 else 0.5
    elif model.task == "multiclass":
        metrics["valid_accuracy"] = _all_reduce([float((out.argmax(dim=1) == label).sum())], device)[0] / rows
    else:
        values = out * model.target_std + model.target_mean
        metrics["valid_rmse"] = (_all_reduce([float(((values - label) ** 2).sum())], device)[0] / rows) ** 0.5
    return metrics


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    task, p = config["task"], config["torch"]
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config["cpus_per_worker"])
    # DDP broadcasts rank 0's initial weights; per-rank seeds keep dropout and shuffles independent.
    torch.manual_seed(config["seed"] + rank)

    world = ray.train.get_context().get_world_size()
    train, valid = (_load_shard(config["splits"][name], rank, world, config["numeric"], config["categorical"], task) for name in ("train", "valid"))
    # A shard of tabular rows is small next to accelerator memory: move it once, not per batch.
    train, valid = (tuple(t.to(device) for t in shard) for shard in (train, valid))
    # Equal shards (trainers.shard_bounds) give every worker the same number of steps, which DDP
    # needs; the minimum guards against shards one row apart.
    rows = int(_all_reduce([float(len(train[2]))], device, op="min")[0])
    model = TabularMLP(**config["architecture"])
    scaling = config["scaling"]
    if task == "regression":
        total, square, count = _all_reduce([float(train[2].sum()), float((train[2].double() ** 2).sum()), float(len(train[2]))], device)
        mean = total / count
        scaling = {**scaling, "target_mean": mean, "target_std": max((square / count - mean**2) ** 0.5, 1e-12)}
    model.set_scaling(**scaling)
    model = ray.train.torch.prepare_model(model)
    core: TabularMLP = getattr(model, "module", model)
    loss_fn = {"binary": nn.BCEWithLogitsLoss, "multiclass": nn.CrossEntropyLoss, "regression": nn.MSELoss}[task]()
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    from data2model.trainers.telemetry import StepClock, peak_flops

    state = _resume_state(ray.train.get_checkpoint())
    if state is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    best = state["best"] if state else {"epoch": -1, "valid_loss": float("inf")}
    best_state: dict[str, torch.Tensor] = state["best_state"] if state else {}
    first = state["epoch"] + 1 if state else 0
    clock = StepClock(config["telemetry"], rank, first)
    # FLOPs per row: multiply-adds of the linear layers, x3 for forward and backward.
    flops_per_row = 6 * sum(m.weight.numel() for m in core.mlp if isinstance(m, nn.Linear))
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if state and state["finished"]:
        # A rerun of a configuration that already finished: hand back its checkpoint.
        _report(rank, {**best, "epoch": state["epoch"]}, state, clock)
        return
    epoch, finished = first - 1, False
    while not finished:
        epoch += 1
        # Seeded per epoch, so a run resumed from a checkpoint shuffles and drops out as an
        # unbroken one would.
        torch.manual_seed(config["seed"] + 1000 * epoch + rank)
        clock.restart()
        model.train()
        order = torch.randperm(len(train[2]), device=device)[:rows]
        loss_sum = torch.zeros((), device=device)
        for start in range(0, rows, p["batch_size"]):
            index = order[start : start + p["batch_size"]]
            x_num, x_cat, y = (t[index] for t in train)
            if task == "regression":
                y = (y - core.target_mean) / core.target_std
            with autocast():
                out = model(x_num, x_cat)
            loss = loss_fn(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        clock.lap(epoch, -(-rows // p["batch_size"]), rows, flops=flops_per_row * rows, peak=peak)
        metrics = _evaluate(core, valid, loss_fn, device, autocast)
        total, count = _all_reduce([float(loss_sum), float(rows)], device)
        metrics = {"epoch": epoch, "train_loss": total / count, **metrics}
        if rank == 0:
            now = int(time.time() * 1000)
            clock.log_metrics([(k, float(v), now, epoch) for k, v in metrics.items() if k != "epoch"])
        if metrics["valid_loss"] < best["valid_loss"]:
            best = metrics
            best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        # Every worker sees the same all-reduced loss, so every worker stops at the same epoch.
        finished = epoch + 1 >= p["epochs"] or epoch - best["epoch"] >= p["early_stopping_epochs"]
        if finished or (epoch + 1) % config["checkpoint_every"] == 0:
            state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "best": best, "best_state": best_state, "finished": finished}
            _report(rank, metrics, state, clock)


def _resume_state(checkpoint) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / MODEL_FILE, weights_only=True, map_location="cpu")


def _report(rank: int, metrics: dict[str, float], state: dict[str, Any], clock) -> None:
    """Every worker reports (Ray Train needs the same count from each); rank 0 attaches the
    checkpoint: current weights and optimizer to resume from, best weights to keep."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        clock.flush()
        return
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, os.path.join(folder, MODEL_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    clock.checkpoint_saved(metrics["epoch"], time.perf_counter() - started)


def fit(job: TrainJob) -> TrainOutcome:
    from ray.train.torch import TorchTrainer

    pre = job.preprocessor
    arch = architecture(job)
    config = {
        "task": pre.task,
        "torch": job.params.torch.model_dump(),
        "architecture": arch,
        "numeric": list(pre.numeric),
        "categorical": list(pre.categorical),
        "scaling": {
            "numeric_mean": [s["mean"] for s in pre.numeric.values()],
            "numeric_std": [s["std"] for s in pre.numeric.values()],
        },
        "seed": job.params.seed,
        "cpus_per_worker": job.params.cpus_per_worker,
    }
    schedule = Schedule(metric="valid_loss", mode="min", step_name="epoch")
    result, rows, seconds, totals = run_ray_training(TorchTrainer, _train_loop, config, job, schedule, "a PyTorch MLP")
    saved = _resume_state(result.checkpoint)
    best = saved["best"]
    if best["epoch"] < 0:
        raise D2MError(f"the PyTorch model's validation loss was never finite in {job.params.torch.early_stopping_epochs} epoch(s): lower train.torch.lr")
    write_meta(job.model_dir, {
        "framework": "torch", "task": pre.task, "feature_names": pre.feature_names,
        "numeric": config["numeric"], "categorical": config["categorical"], "classes": pre.classes,
        "best_epoch": best["epoch"],
    })
    torch.save({"architecture": arch, "state_dict": saved["best_state"]}, job.model_dir / MODEL_FILE)
    extra = {**totals, **{f"best_{k}": v for k, v in best.items() if k not in ("epoch", "valid_loss")}}
    return TrainOutcome(best_iteration=best["epoch"], best_score=best["valid_loss"], metric="valid_loss", rows=rows, seconds=seconds, extra=extra)


class Scorer:
    """Predictions from saved weights on an encoded feature table (see data2model.scoring), on
    CPU in slices so a large table never becomes one big tensor."""

    def __init__(self, model_dir, meta: dict[str, Any]) -> None:
        self.meta = meta
        saved = torch.load(Path(model_dir) / MODEL_FILE, weights_only=True)
        self.model = TabularMLP(**saved["architecture"])
        self.model.load_state_dict(saved["state_dict"])
        self.model.eval()

    def predict(self, features: pa.Table) -> np.ndarray:
        parts = []
        with torch.inference_mode():
            for start in range(0, features.num_rows, _EVAL_BATCH):
                part = features.slice(start, _EVAL_BATCH)
                parts.append(self.model.predict(*feature_tensors(part, self.meta["numeric"], self.meta["categorical"])).numpy())
        if parts:
            return np.concatenate(parts)
        return np.empty((0, len(self.meta["classes"])) if self.meta["task"] == "multiclass" else 0, dtype=np.float32)
