"""Serving cost: `d2m serve` over HTTP against in-process pyfunc predict on the same rows.

Single-row latency (p50/p99 over sequential requests on one keep-alive connection) and 1,000-row
batch throughput, with the inference log off and on, each against `model.predict` on the same
rows already in a DataFrame. Run after `make run`, from the project root:

    .venv/bin/python bench/serving.py --requests 500 --batches 20 --repeats 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data2model import tracking  # noqa: E402
from data2model.params import load_params  # noqa: E402
from data2model.request_checks import fields_of, json_records, request_frame  # noqa: E402

BATCH = 1000


def quantiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def start_server(port: int, log_requests: bool) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "d2m"), "serve", "--port", str(port), *([] if log_requests else ["--no-log"])]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"d2m serve did not start: {proc.stderr.read()}")


def http_timings(port: int, bodies: list[bytes]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for body in bodies:
        start = time.perf_counter()
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        out.append(time.perf_counter() - start)
        if response.status != 200:
            raise SystemExit(f"server answered {response.status}")
    return out


def predict_timings(model, frames) -> list[float]:
    out = []
    for frame in frames:
        start = time.perf_counter()
        model.predict(frame)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    import mlflow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500, help="single-row requests (after 20 warm-up)")
    ap.add_argument("--batches", type=int, default=20, help="1,000-row requests")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every variant; figures are medians over rounds")
    ap.add_argument("--out", default=str(ROOT / "bench/results/serving.json"))
    args = ap.parse_args()

    params = load_params(ROOT)
    tracking.configure(params, ROOT)
    model = mlflow.pyfunc.load_model(f"models:/{params.register.model_name}@champion")
    fields = fields_of(model.metadata.get_input_schema())
    holdout = pq.read_table(ROOT / params.paths.raw_holdout())
    rows = json_records(holdout.slice(0, max(args.requests + 20, BATCH)), [f.name for f in fields])
    singles = [json.dumps({"dataframe_records": [r]}).encode() for r in rows[: args.requests + 20]]
    batch = json.dumps({"dataframe_records": rows[:BATCH]}).encode()
    single_frames = [request_frame(b, "application/json", fields, BATCH) for b in singles]
    batch_frame = request_frame(batch, "application/json", fields, BATCH)

    def served(log_requests: bool) -> tuple[list[float], list[float]]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = start_server(port, log_requests)
        try:
            return http_timings(port, singles)[20:], http_timings(port, [batch] * (args.batches + 2))[2:]
        finally:
            server.terminate()
            server.wait(timeout=30)

    rounds = {"in_process": [], "served": [], "served_logging": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every variant alike
        rounds["served"].append(served(log_requests=False))
        rounds["served_logging"].append(served(log_requests=True))
        rounds["in_process"].append((predict_timings(model, single_frames)[20:], predict_timings(model, [batch_frame] * (args.batches + 2))[2:]))

    def summary(runs):
        per_run = [{**quantiles(single), "batch_rows_per_s": BATCH / statistics.median(batches)} for single, batches in runs]
        return {key: statistics.median(r[key] for r in per_run) for key in per_run[0]} | {"runs": per_run}

    result = {"requests": args.requests, "batches": args.batches, "batch_rows": BATCH, "repeats": args.repeats, **{k: summary(v) for k, v in rounds.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ref = result["in_process"]
    print("| variant | single row p50 / p99 | p50 vs in-process | 1,000-row batches | throughput vs in-process |")
    print("|---|---|---|---|---|")
    for key in rounds:
        r = result[key]
        print(f"| {key} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms | {r['p50_ms'] / ref['p50_ms']:.2f}x | {r['batch_rows_per_s']:,.0f} rows/s | {r['batch_rows_per_s'] / ref['batch_rows_per_s']:.2f}x |")
    print(f"logging on vs off: p99 {result['served_logging']['p99_ms'] / result['served']['p99_ms']:.2f}x, p50 {result['served_logging']['p50_ms'] / result['served']['p50_ms']:.2f}x")


if __name__ == "__main__":
    main()
