"""Orchestration cost of the spine at 1x, against a bare script doing the same work, same run.

    .venv/bin/python bench/orchestration.py [--repeats 3]

Each pipeline figure runs in a fresh clone of the committed project (HEAD; own MLflow and
Prefect stores), so "cold" means nothing cached. Results go to bench/results/orchestration.json; the
table in BENCHMARKS.md is copied from it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import isolated_env  # noqa: E402


def clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=isolated_env(cwd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def median_of(samples: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(samples), 2), "runs": [round(s, 2) for s in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare, flow_cold, repro_cold, flow_noop, repro_noop = [], [], [], [], []
        for i in range(args.repeats):
            bare.append(timed([sys.executable, str(ROOT / "bench/bare_pipeline.py"), str(tmp / f"bare{i}")], ROOT))
            project = clone(tmp / f"flow{i}")
            flow_cold.append(timed(["d2m", "run"], project))
            flow_noop.append(timed(["d2m", "run"], project))
            repro_noop.append(timed(["dvc", "repro"], project))
            project = clone(tmp / f"repro{i}")
            repro_cold.append(timed(["dvc", "repro"], project))
        results = {
            "bare_script": median_of(bare),
            "d2m_run_cold": median_of(flow_cold),
            "dvc_repro_cold": median_of(repro_cold),
            "d2m_run_noop": median_of(flow_noop),
            "dvc_repro_noop": median_of(repro_noop),
        }
    base = results["bare_script"]["median_s"]
    results["ratios_vs_bare"] = {k: round(v["median_s"] / base, 2) for k, v in results.items() if k.endswith("_cold")}
    results["machine"] = {"cpus": __import__("os").cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    out = ROOT / "bench/results/orchestration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
