"""A/B of a cold `d2m run`: the code at a git revision against the working tree, interleaved in
one session on one machine, each repeat beside the bare script of the same repeat.

    .venv/bin/python bench/ab_cold.py 4cb555c --repeats 3
    .venv/bin/python bench/ab_cold.py 7dbeb59 --repeats 3 --scale 10   # on `d2m synth --scale 10`

Per repeat and side, in a fresh copy of that side's code (`git archive REV` or the working tree,
committed in a new git repo, as tests.conftest.make_project_copy does): Prefect's database is
created first (as bench/suite.py does; above 1x after `d2m synth --scale N` made its data.source,
as the suite does too), then `python -m data2model.cli run` runs from cold, so
each side runs its own data2model, tasks and flows. Every output line is timestamped as it
arrives, which gives where the time went: until the flow begins, each stage (to the flow's
"Finished" line), after the flow, and after the summary until the process ended.
Results: bench/results/ab_cold_<REV>.json, ab_cold_<REV>_<N>x.json above 1x (or --out).
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
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from suite import scaled_source  # noqa: E402 - bench/suite.py, beside this script
from tests.conftest import commit_as_clone, isolated_env, make_project_copy  # noqa: E402

STAGE_DONE = re.compile(r"Task run '(\w+)' - Finished in state")


def copy_of_revision(rev: str, dest: Path) -> Path:
    """The project as committed at `rev`, in a fresh git repo at `dest`."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return commit_as_clone(dest, f"copy of {rev}")


def timed_lines(cmd: list[str], cwd: Path) -> tuple[float, list[tuple[float, str]]]:
    """Run `cmd`; (wall seconds, [(seconds since start, line)]). Fails loudly on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=isolated_env(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout]
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n" + "\n".join(text for _, text in lines[-60:]))
    return time.perf_counter() - start, lines


def phases(wall: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """Where a run's seconds went, from the arrival times of its log lines."""
    begin = next(t for t, text in lines if "Beginning flow run" in text)
    out, last = {"until_flow_begins": begin}, begin
    for t, text in lines:
        if found := STAGE_DONE.search(text):
            out[found.group(1)] = t - last
            last = t
    summary = next(t for t, text in lines if text.startswith("pipeline finished in"))
    out["after_last_stage_until_summary"] = summary - last
    out["after_summary_until_exit"] = wall - summary
    return {k: round(v, 2) for k, v in out.items()}


def cold_run(project: Path) -> dict:
    subprocess.run(["prefect", "server", "database", "upgrade", "-y"], cwd=project, env=isolated_env(project), check=True, capture_output=True)
    wall, lines = timed_lines([sys.executable, "-m", "data2model.cli", "run"], project)
    return {"seconds": round(wall, 2), "phases": phases(wall, lines), "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the git revision to compare the working tree with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1, help="N times the default data (d2m synth --scale N); default 1")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {args.rev: [], "working tree": [], "bare script": []}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.repeats):
            for side in (args.rev, "working tree"):
                print(f"run {index + 1}/{args.repeats}: {side} ...", file=sys.stderr, flush=True)
                dest = Path(tmp) / f"{'rev' if side == args.rev else 'tree'}-{index}"
                project = copy_of_revision(args.rev, dest) if side == args.rev else make_project_copy(dest)
                source = [str(project / scaled_source(project, args.scale))] if args.scale > 1 else []
                runs[side].append(cold_run(project))
            wall, _ = timed_lines([sys.executable, str(ROOT / "bench/bare_pipeline.py"), str(Path(tmp) / f"bare-{index}"), *source], ROOT)
            runs["bare script"].append({"seconds": round(wall, 2), "load": round(os.getloadavg()[0], 2)})
    bare = [r["seconds"] for r in runs["bare script"]]
    summary = {}
    for side in (args.rev, "working tree"):
        cold = [r["seconds"] for r in runs[side]]
        summary[side] = {
            "cold_run_s": statistics.median(cold),
            "fixed_overhead_s": round(statistics.median(c - b for c, b in zip(cold, bare)), 1),
            "orchestration_tax": round(statistics.median(c / b for c, b in zip(cold, bare)), 2),
            "phases_median_s": {k: round(statistics.median(r["phases"].get(k, 0.0) for r in runs[side]), 2) for k in runs[side][0]["phases"]},
        }
    results = {
        "summary": summary,
        "bare_script_s": statistics.median(bare),
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "command": " ".join(["bench/ab_cold.py", *sys.argv[1:]]),
    }
    out = args.out or ROOT / f"bench/results/ab_cold_{args.rev}{f'_{args.scale}x' if args.scale > 1 else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
