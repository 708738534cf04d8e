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

from data2model.errors import D2MError, ParamsError
from data2model.params import check_overrides, load_params, parse_override

PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "data2model",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    # The temporary server's first start creates its database; on a busy machine that exceeds
    # the default 20 s and `d2m run` would fail before any stage.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def _run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(text) for text in args.set)
    params = check_overrides(overrides) if overrides else None  # bad overrides fail here, before Prefect starts
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from flows.pipeline import pipeline, shutdown_ray
    from data2model.status import describe

    start = time.perf_counter()
    try:
        status = pipeline(params=params)
    finally:
        shutdown_ray()
    print(f"\npipeline finished in {time.perf_counter() - start:.1f} s\n{describe(status)}")
    if "experiment" in status:
        print(f"overrides saved as DVC experiment {status['experiment']}; params.yaml unchanged (`dvc exp apply {status['experiment']}` brings them back)")
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
    return mlflow.MlflowClient(), params.register.model_name


def _promote(args: argparse.Namespace) -> int:
    from data2model.promotion import move_champion

    client, name = _registry()
    event = move_champion(client, name, args.version, "promote", args.reason)
    print(f"{name}: champion is now version {event['version']} (was {event['previous_champion'] or '-'}); recorded in tag audit.* of version {event['version']}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from data2model.promotion import rollback

    client, name = _registry()
    event = rollback(client, name, args.reason)
    print(f"{name}: champion rolled back to version {event['version']} (was {event['previous_champion']})")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2m", description="data2model: raw data to a served model, reproducibly (run from the project root).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the pipeline (a Prefect flow over the dvc.yaml DAG)", description="Run every stage DVC finds out of date, as a Prefect flow, then print metrics and the registered version.")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params.yaml key for this run (dotted, YAML value), e.g. --set train.xgboost.max_depth=6; the run is saved as a DVC experiment and params.yaml is left unchanged; repeatable")
    run.set_defaults(func=_run)
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
        description="Point models:/<name>@champion at VERSION in one registry call. The version gets an audit tag (when, what, why, previous champion) and remembers the previous champion for `d2m rollback`.",
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


if __name__ == "__main__":
    sys.exit(main())
