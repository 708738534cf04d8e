"""data2model/dag.py (the DAG as DVC reads it) and the `d2m` command line, run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data2model.dag import in_process_runner, stage_order

ROOT = Path(__file__).resolve().parents[1]
D2M = Path(sys.executable).parent / "d2m"


def test_stage_order_is_dvc_yaml_upstream_first(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert stage_order() == ["ingest", "validate", "dataset_card", "features", "split", "train", "calibrate", "evaluate", "label_audit", "learning_curve", "register"]


def test_in_process_runner_maps_a_stage_module_to_its_run():
    import tasks.split

    assert in_process_runner("python -m tasks.split") is tasks.split.run
    assert in_process_runner("  python -m tasks.split\n") is tasks.split.run


@pytest.mark.parametrize(
    "cmd",
    ["dvc repro", "python tasks/split.py", "python -m tasks.split --fast", "python -m flows.pipeline", "python3 -m tasks.split", "python -m tasks"],
)
def test_in_process_runner_leaves_other_commands_to_dvc(cmd):
    assert in_process_runner(cmd) is None


# --- the CLI --------------------------------------------------------------------------------


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "RAY_"))}
    return env | {"PREFECT_HOME": str(workdir / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def d2m(*args: str, cwd: Path, timeout: int = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(D2M), *args], cwd=cwd, env=_env(cwd, **env), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder holding only a copy of params.yaml."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_help_lists_the_commands(tmp_path):
    proc = d2m("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "run" in proc.stdout and "status" in proc.stdout and "contract" in proc.stdout


def test_run_help_documents_set(tmp_path):
    proc = d2m("run", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "--set KEY=VALUE" in proc.stdout


def test_no_command_is_a_usage_error(tmp_path):
    proc = d2m(cwd=tmp_path)
    assert proc.returncode == 2
    assert "COMMAND" in proc.stderr


def test_the_command_exits_with_mains_code_after_its_threads_atexit_handlers_and_output(tmp_path):
    """`d2m` ends without the interpreter's module teardown; what a normal exit does before it
    still happens: non-daemon threads finish, atexit handlers run, buffered output arrives."""
    script = f"""
import atexit, threading, time
from pathlib import Path
import data2model.cli as cli

def main():
    def late():
        time.sleep(0.5)
        Path({str(tmp_path / "thread")!r}).write_text("done")
    threading.Thread(target=late).start()
    atexit.register(lambda: Path({str(tmp_path / "atexit")!r}).write_text("ran"))
    for i in range(20000):
        print(f"line {{i}}")
    return 3

cli.main = main
cli.entry()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines()[-1] == "line 19999" and len(proc.stdout.splitlines()) == 20000
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"


@pytest.mark.parametrize("fails", [False, True])
def test_a_stage_process_exits_after_its_threads_atexit_handlers_and_log(tmp_path, fails):
    """A stage under `dvc repro` ends as `d2m` does (`stage.finish`): 0 after its summary, 1
    with the message on a user error, its threads, atexit handlers and output done first."""
    script = f"""
import atexit, threading, time
from pathlib import Path
from data2model.errors import DataError
from data2model.stage import main

def run(params):
    def late():
        time.sleep(0.5)
        Path({str(tmp_path / "thread")!r}).write_text("done")
    threading.Thread(target=late).start()
    atexit.register(lambda: Path({str(tmp_path / "atexit")!r}).write_text("ran"))
    if {fails}:
        raise DataError("the batch is bad")
    return {{"rows": 3}}

main(run)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == (1 if fails else 0), proc.stderr
    assert proc.stderr.rstrip().endswith("error: the batch is bad" if fails else "{'rows': 3}"), proc.stderr
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"


def test_malformed_override_is_a_usage_error(workdir):
    proc = d2m("run", "--set", "nonsense", cwd=workdir)
    assert proc.returncode == 2
    assert "error: override 'nonsense' must look like key.sub=value" in proc.stderr


def test_run_without_params_yaml_is_a_usage_error(tmp_path):
    proc = d2m("run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "params.yaml not found" in proc.stderr


@pytest.fixture(scope="module")
def unknown_key_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, bytes]:
    """`d2m run --set train.bogus=1` once; the params.yaml bytes after it."""
    workdir = tmp_path_factory.mktemp("bogus")
    shutil.copy(ROOT / "params.yaml", workdir / "params.yaml")
    proc = d2m("run", "--set", "train.bogus=1", cwd=workdir, timeout=180)
    return proc, (workdir / "params.yaml").read_bytes()


def test_unknown_override_key_is_refused_and_params_yaml_untouched(unknown_key_run):
    proc, after = unknown_key_run
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.bogus: unknown key" in proc.stderr
    assert after == (ROOT / "params.yaml").read_bytes()


def test_unknown_override_key_is_refused_before_prefect_starts(unknown_key_run):
    proc, _ = unknown_key_run
    output = proc.stdout + proc.stderr
    assert "temporary API server" not in output and "Starting temporary server" not in output
    assert "Traceback" not in output


def test_status_json_on_a_fresh_project(workdir):
    db = workdir / "m.db"
    proc = d2m("status", "--json", cwd=workdir, timeout=120, MLFLOW_TRACKING_URI=f"sqlite:///{db}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout)
    assert {"model_name", "tracking_uri", "champion_version", "metrics", "data_version"} <= set(status)
    assert status["model_name"] == "nycflights-delay"
    assert status["tracking_uri"] == f"sqlite:///{db}"
    assert status["champion_version"] is None
    assert status["metrics"] is None
    assert status["data_version"] is None
    assert db.exists()  # the store it reports is the one it opened


def test_status_text_shows_dashes_for_what_does_not_exist_yet():
    from data2model.status import describe

    text = describe(
        {
            "model_name": "m", "tracking_uri": "sqlite:///x.db", "champion_version": None, "registered": None,
            "metrics": {"auc": 0.75, "rows": 10}, "data_version": None, "data_docs": None, "mlflow_ui": "mlflow ui",
        }
    )
    assert "m (champion: version -)" in text
    assert "holdout metrics  auc=0.7500\n" in text  # integers such as row counts are not metrics
    assert "data version     - " in text
    assert "Data Docs" not in text


def test_contract_shows_the_diff_and_writes_only_with_refresh(workdir):
    import pyarrow as pa

    from data2model.contract import profile
    from data2model.tables import read_json, write_json, write_table

    old = pa.table({"origin": ["EWR", "JFK"], "distance": [100, 200]})
    new = pa.table({"origin": ["EWR", "JFK", "BOS"], "distance": [100, 200, 900], "carrier": ["AA", "B6", "UA"]})
    write_json(profile(old), workdir / "contracts/nycflights13.json")
    write_table(new, workdir / "data/raw.parquet")
    before = (workdir / "contracts/nycflights13.json").read_bytes()

    dry = d2m("contract", cwd=workdir)
    assert dry.returncode == 0, dry.stderr
    for line in ["rows: 2 -> 3", "column added: carrier (string)", "distance: range [100, 200] -> [100, 900]", "origin: categories +['BOS'] -[]", "dry run"]:
        assert line in dry.stdout
    assert (workdir / "contracts/nycflights13.json").read_bytes() == before

    refresh = d2m("contract", "--refresh", cwd=workdir)
    assert refresh.returncode == 0, refresh.stderr
    assert "wrote contracts/nycflights13.json" in refresh.stdout
    assert read_json(workdir / "contracts/nycflights13.json") == profile(new)
    assert "no change" in d2m("contract", cwd=workdir).stdout


def test_contract_without_a_raw_table_exits_1(workdir):
    proc = d2m("contract", "--refresh", cwd=workdir)
    assert proc.returncode == 1
    assert "data/raw.parquet does not exist" in proc.stderr
    assert not (workdir / "contracts").exists()


def test_up_and_down_document_themselves(tmp_path):
    up = d2m("up", "--help", cwd=tmp_path)
    assert up.returncode == 0 and "--prefect-port" in up.stdout and "--mlflow-port" in up.stdout
    assert "d2m down" in up.stdout
    assert d2m("down", "--help", cwd=tmp_path).returncode == 0


def test_down_with_nothing_up_says_so(tmp_path):
    proc = d2m("down", cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to stop" in proc.stdout


def test_up_on_a_busy_port_names_it_and_starts_nothing(workdir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = d2m("up", "--prefect-port", str(port), "--mlflow-port", str(port), cwd=workdir)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert not (workdir / ".d2m").exists()
