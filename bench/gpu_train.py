"""The train stage on a GPU against the same stage on the CPU cores of the same host, in one run.

Each case is `tasks.train.run` (the stage `dvc repro` and the flow run: an MLflow run, Ray
Train, checkpoints, telemetry) with `train.use_gpu` true or false and nothing else changed but
`train.cpus_per_worker`. One Ray worker: one GPU, or `--cpu-threads` cores. The train split is
the pipeline's own (`data/split`, from `dvc repro split`); at scale N its rows are repeated N
times (valid and test stay as they are), so the work grows and the data stays real.

    python bench/gpu_train.py --out gpu.json --scales 1 10 --frameworks torch xgboost

Run it in the repository root of a host with a GPU and the project's dependencies; each case
writes into a work folder of its own (`--work`), so no case resumes another's checkpoint. The
JSON holds, per case: the stage's wall time, `fit`'s, the best validation metric and epoch or
round, median rows/s and, on GPU, the median MFU estimate the torch trainer reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gpu_info() -> dict[str, str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    name, driver, memory = (part.strip() for part in out.splitlines()[0].split(","))
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


def scaled_split(split_dir: Path, work: Path, scale: int) -> Path:
    """The split folder with the train rows repeated `scale` times (one row group per copy)."""
    if scale == 1:
        return split_dir
    out = work / f"split_x{scale}"
    out.mkdir(parents=True, exist_ok=True)
    for part in ("valid", "test", "test_raw"):
        if (split_dir / f"{part}.parquet").exists():
            shutil.copyfile(split_dir / f"{part}.parquet", out / f"{part}.parquet")
    table = pq.read_table(split_dir / "train.parquet")
    with pq.ParquetWriter(out / "train.parquet", table.schema) as writer:
        for _ in range(scale):
            writer.write_table(table)
    return out


def mlflow_figures(run_id: str) -> dict[str, float]:
    import mlflow

    client = mlflow.MlflowClient()
    figures = {k: v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith(("median_", "best_"))}
    mfu = [m.value for m in client.get_metric_history(run_id, "mfu")]
    if mfu:
        figures["median_mfu"] = statistics.median(mfu)
    return figures


def run_case(framework: str, gpu: bool, scale: int, split_dir: Path, work: Path, cpu_threads: int, extra: dict[str, Any]) -> dict[str, Any]:
    from data2model.params import check_overrides
    from tasks import train

    name = f"{framework}_{'gpu' if gpu else 'cpu'}_x{scale}" + "".join(f"_{k.rsplit('.', 1)[-1]}{v}" for k, v in extra.items())
    case = work / name
    shutil.rmtree(case, ignore_errors=True)
    overrides = {
        "paths.split_dir": str(split_dir),
        "paths.model_dir": str(case / "model"),
        "paths.train_report": str(case / "train.json"),
        "train.storage_path": str(case / "ray"),
        "train.framework": framework,
        "train.use_gpu": gpu,
        "train.num_workers": 1,
        # A GPU worker needs a core to feed it; the CPU worker gets the threads it trains with.
        "train.cpus_per_worker": 1 if gpu else cpu_threads,
        "tracking.uri": f"sqlite:///{(work / 'mlflow.db').resolve()}",
        **extra,
    }
    params = check_overrides(overrides, ROOT)
    print(f"== {name}: {pq.ParquetFile(split_dir / 'train.parquet').metadata.num_rows} train rows", flush=True)
    start = time.perf_counter()
    report = train.run(params)
    wall = time.perf_counter() - start
    return {"case": name, "framework": framework, "device": "gpu" if gpu else "cpu", "scale": scale,
            "cpus_per_worker": overrides["train.cpus_per_worker"], "overrides": extra,
            "stage_seconds": round(wall, 2), **report, **mlflow_figures(report["run_id"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file the results go to (rewritten after every case)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--frameworks", nargs="+", default=["torch", "xgboost"], choices=["torch", "xgboost"])
    parser.add_argument("--cpu-threads", type=int, default=8, help="cores of the CPU reference's worker (default 8)")
    parser.add_argument("--torch-batch", type=int, nargs="*", default=[], help="extra GPU torch cases at these batch sizes")
    parser.add_argument("--work", type=Path, default=Path(".gpu_bench"), help="scratch folder (default .gpu_bench)")
    args = parser.parse_args(argv)

    os.chdir(ROOT)
    split_dir = Path("data/split")
    if not (split_dir / "train.parquet").exists() or not Path("models/preprocessor.json").exists():
        print("error: data/split/train.parquet and models/preprocessor.json are needed: run `dvc repro split` first", file=sys.stderr)
        return 2
    from data2model.stage import configure_logging

    configure_logging()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"host": {**gpu_info(), "cpus": os.cpu_count(), "python": platform.python_version()}, "cases": []}
    for module in ("torch", "ray", "xgboost", "mlflow"):
        try:
            results["host"][module] = __import__(module).__version__
        except ImportError:
            results["host"][module] = None
    frameworks = [f for f in args.frameworks if results["host"][f] is not None]
    for missing in sorted(set(args.frameworks) - set(frameworks)):
        print(f"skipping {missing}: not installed", file=sys.stderr)
    for scale in args.scales:
        split = scaled_split(split_dir, args.work, scale)
        for framework in frameworks:
            variants = [({}, True), ({}, False)]
            if framework == "torch":
                variants[1:1] = [({"train.torch.batch_size": b}, True) for b in args.torch_batch]
            for extra, gpu in variants:
                try:
                    results["cases"].append(run_case(framework, gpu, scale, split, args.work, args.cpu_threads, extra))
                except Exception as err:  # one failed case is a finding, not the end of the run
                    results["cases"].append({"framework": framework, "device": "gpu" if gpu else "cpu", "scale": scale,
                                             "overrides": extra, "error": f"{type(err).__name__}: {err}"})
                print(json.dumps(results["cases"][-1]), flush=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all("error" not in case for case in results["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
