"""Deployment, end to end: a small real-data project is trained and registered twice, then the
real `d2m serve` runs in a subprocess on a free loopback port. Valid and malformed requests,
the alias swap under load with no failed request, batch scoring, and the model card."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import commit_params, free_port, prefect_api, isolated_env, make_project_copy, sh, small_flights

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
MODEL = "serve-test"
MAX_ROWS = 200


SMALL = {
    "data.source": "data/inputs/flights_small.csv", "paths.contract": "contracts/flights_small.json",
    "split.method": "random", "train.xgboost.num_boost_round": 40, "register.model_name": MODEL,
    "serve.max_rows": MAX_ROWS, "serve.log.flush_seconds": 0.5, "serve.log.hash": ["tailnum"], "monitor.min_rows": 200,
}


@pytest.fixture(scope="module")
def served_project(tmp_path_factory) -> Path:
    project = make_project_copy(tmp_path_factory.mktemp("serving") / "project")
    pacsv.write_csv(small_flights(3000), project / "data/inputs/flights_small.csv")  # the whole year: monitoring replays its end
    commit_params(project, SMALL)
    sh(["d2m", "run"], project)
    sh(["d2m", "run", "--set", "evaluate.threshold=0.3"], project)  # a second version: evaluate + register rerun
    return project


def call(port: int, path: str, body: bytes | None = None, content_type: str | None = "application/json") -> tuple[int, Any, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body is not None else "GET")
    if content_type and body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            doc = json.loads(payload)
        except json.JSONDecodeError:
            doc = {"raw": payload.decode(errors="replace")}
        return err.code, err.headers, doc


@contextlib.contextmanager
def running_server(project: Path) -> Iterator[int]:
    """The real `d2m serve` of `project` on a free loopback port, following champion every second."""
    port = free_port()
    proc = subprocess.Popen(["d2m", "serve", "--port", str(port), "--poll-seconds", "1"], cwd=project, env=isolated_env(project),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"d2m serve exited {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if call(port, "/ping")[0] == 200:
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise AssertionError("d2m serve did not answer /ping within 120 s")
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def server(served_project):
    with running_server(served_project) as port:
        yield port


def registry(project: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / '.mlflow/mlflow.db'}")
    return mlflow.MlflowClient()


def request_rows(project: Path, n: int) -> list[dict]:
    """Holdout rows as a client sends them: the signature's fields, JSON values."""
    import mlflow

    from data2model.request_checks import json_records

    registry(project)
    fields = mlflow.models.get_model_info(f"models:/{MODEL}@champion").signature.inputs.input_names()
    return json_records(pq.read_table(project / "data/split/test_raw.parquet").slice(0, n), fields)


def records(rows: list[dict]) -> bytes:
    return json.dumps({"dataframe_records": rows}).encode()


def test_serve_answers_valid_requests_like_in_process_predict(served_project, server):
    import mlflow

    from data2model.request_checks import fields_of, request_frame

    champion = registry(served_project).get_model_version_by_alias(MODEL, "champion").version
    status, headers, doc = call(server, "/version")
    assert status == 200 and doc["version"] == str(champion) and doc["model_name"] == MODEL
    rows = request_rows(served_project, 100)
    status, headers, single = call(server, "/invocations", records(rows[:1]))
    assert status == 200 and headers["X-Model-Version"] == str(champion) and len(single["predictions"]) == 1
    status, _, batch = call(server, "/invocations", records(rows))
    assert status == 200 and len(batch["predictions"]) == 100
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{champion}")
    expected = model.predict(request_frame(records(rows), "application/json", fields_of(model.metadata.get_input_schema()), 1000))
    served = [p["probability"] for p in batch["predictions"]]
    assert served == pytest.approx(expected["probability"].tolist(), abs=1e-9)
    deadline = time.time() + 30
    while call(server, "/version")[2]["inference_log"]["logged_rows"] < 101:
        assert time.time() < deadline, call(server, "/version")[2]
        time.sleep(0.3)
    logged = pq.read_table(served_project / "logs/inference")
    assert logged.num_rows >= 101 and set(logged["model_version"].to_pylist()) == {str(champion)}
    assert logged["pred_probability"].to_pylist()[-100:] == pytest.approx(served, abs=1e-9)
    assert pa.types.is_unsigned_integer(logged.schema.field("tailnum").type)  # hashed, as configured


def test_malformed_requests_get_4xx_naming_the_problem_and_the_server_stays_healthy(served_project, server):
    row = request_rows(served_project, 1)[0]
    int_field = next(k for k, v in row.items() if isinstance(v, int))
    str_field = next(k for k, v in row.items() if isinstance(v, str) and k != "time_hour")
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"", "application/json", 400, "empty"),
        (records([{k: v for k, v in row.items() if k != str_field}]), "application/json", 400, str_field),
        (records([{**row, int_field: 9.5}]), "application/json", 400, int_field),
        (records([{**row, str_field: 12}]), "application/json", 400, str_field),
        (records([{**row, "surprise": 1}]), "application/json", 400, "surprise"),
        (records([{**row, str_field: None}]), "application/json", 400, str_field),
        (records([row] * (MAX_ROWS + 1)), "application/json", 413, "max_rows"),
        (records([row]), "text/plain", 415, "text/plain"),
        (records([row]), None, 415, "Content-Type"),
        (json.dumps({"dataframe_records": [{**row, int_field: float("nan")}]}).encode(), "application/json", 400, int_field),
        (json.dumps({"inputs": "a string"}).encode(), "application/json", 400, "inputs"),
        ("\udcff".encode("utf-8", "surrogateescape"), "application/json", 400, "JSON"),
    ]
    for body, content_type, status, word in cases:
        got, _, doc = call(server, "/invocations", body, content_type)
        assert got == status, (body[:80], got, doc)
        assert word in doc["message"], (body[:80], doc)
    assert call(server, "/ping")[0] == 200
    assert call(server, "/invocations", records([row]))[0] == 200


def test_running_server_follows_promote_and_rollback_with_no_failed_request(served_project, server):
    client = registry(served_project)
    before = str(client.get_model_version_by_alias(MODEL, "champion").version)
    other = "1" if before == "2" else "2"
    row = records(request_rows(served_project, 1))
    seen, failures, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            status, headers, doc = call(server, "/invocations", row)
            (seen if status == 200 else failures).append(headers.get("X-Model-Version") if status == 200 else (status, doc))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for target, command in ((other, ["d2m", "promote", other, "--reason", "serving test"]), (before, ["d2m", "rollback", "--reason", "serving test"])):
            sh(command, served_project)
            moved = time.time()
            while call(server, "/version")[2]["version"] != target:
                assert time.time() - moved < 20, f"still serving the old version 20 s after moving champion to {target}"
                time.sleep(0.2)
            swap_seconds = time.time() - moved
            assert swap_seconds < 20
            time.sleep(1)
    finally:
        stop.set()
        worker.join()
    assert not failures, failures[:3]
    assert {before, other} <= set(seen) and len(seen) > 20


PER_PROCESS_MODEL = """
import os

import mlflow
import pandas as pd


class AnswersPerProcess(mlflow.pyfunc.PythonModel):
    # Predicts differently in every process: served and in-process answers disagree.
    def predict(self, context, model_input, params=None):
        n = len(model_input)
        return pd.DataFrame({"prediction": [0] * n, "probability": [os.getpid() % 997 / 997] * n})


mlflow.models.set_model(AnswersPerProcess())
"""


def test_the_canary_serves_on_a_socket_it_bound_itself(served_project, monkeypatch):
    """The canary binds a loopback socket and passes it to `d2m serve --fd`: no window between
    finding a port free and binding it in which another process could take it."""
    from data2model.canary import served

    champion = registry(served_project).get_model_version_by_alias(MODEL, "champion").version
    monkeypatch.chdir(served_project)
    with served(str(champion), 120) as server:
        port = server.ready()
        status, _, doc = call(port, "/version")
    assert status == 200 and doc["version"] == str(champion) and doc["alias"] is None  # pinned, as the canary runs it
    with pytest.raises(OSError):
        call(port, "/ping")  # stopped with the block


def test_the_registers_canary_boots_its_server_before_the_version_exists_and_stops_it_used_or_not(served_project, monkeypatch):
    """register starts the candidate's server before it logs and registers the version, so
    that it imports meanwhile; named the version, it loads it while the gate scores; the check
    then runs against it, and the block stops it either way."""
    import psutil

    from data2model.canary import canary_started
    from data2model.params import load_params

    champion = registry(served_project).get_model_version_by_alias(MODEL, "champion").version
    monkeypatch.chdir(served_project)
    params = load_params()

    def servers() -> list[psutil.Process]:
        return [p for p in psutil.Process().children() if p.cmdline()[-6:-3] == ["serve", "--version", "-"]]

    for used in (True, False):
        with canary_started(params, MODEL) as canary:
            running = servers()
            assert len(running) == 1  # started on entry, before any version is named
            if used:
                check = canary.serve(champion)
                outcome = check(MODEL, str(champion))
                assert outcome["passed"] and 0 < outcome["rows"] <= params.register.canary.rows, outcome
                assert call(canary.server.ready(), "/version")[2]["version"] == str(champion)
                with pytest.raises(ValueError, match=f"not {MODEL} version 999"):
                    check(MODEL, "999")
        assert not running[0].is_running()


def test_a_prestarted_canary_server_is_the_one_register_takes_and_an_unused_one_is_stopped(served_project, monkeypatch):
    """`d2m run` starts the canary's server as train begins (flows.pipeline.warm_up), at the
    lowest CPU priority: register's canary takes that server and checks the version against it;
    a run that ends before register stops it (`discard_spare`)."""
    from data2model import canary
    from data2model.params import load_params

    champion = registry(served_project).get_model_version_by_alias(MODEL, "champion").version
    monkeypatch.chdir(served_project)
    params = load_params()
    canary.prestart(params)
    canary.prestart(params)  # a second call keeps the one server
    assert len(canary._SPARE) == 1
    prestarted = canary._SPARE[0][1]
    assert os.getpriority(os.PRIO_PROCESS, prestarted.proc.pid) == 19
    with canary.canary_started(params, MODEL) as started:
        assert started.server is prestarted and not canary._SPARE
        assert started.serve(champion)(MODEL, str(champion))["passed"]
    assert prestarted.proc.poll() is not None  # stopped with the block
    canary.prestart(params)
    (_, unused), = canary._SPARE
    canary.discard_spare()
    assert unused.proc.poll() is not None and not canary._SPARE


@pytest.mark.parametrize(
    ("artifacts", "words"),
    [("kept", "probability differs from in-process predict"), ("lost", "does not load"), ("raising", "fails in-process predict on its holdout rows: ZeroDivisionError")],
)
def test_a_candidate_failing_the_canary_is_not_promoted_and_the_champion_keeps_serving(served_project, tmp_path, artifacts, words):
    from urllib.parse import urlparse

    client = registry(served_project)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    signature = mlflow.models.get_model_info(f"models:/{MODEL}/{champion.version}").signature
    code = tmp_path / "per_process_model.py"
    code.write_text(PER_PROCESS_MODEL.replace("n = len(model_input)", "n = len(model_input) // 0") if artifacts == "raising" else PER_PROCESS_MODEL)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("data2model").experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), signature=signature, pip_requirements=["mlflow"])
    candidate = mlflow.register_model(info.model_uri, MODEL).version
    if artifacts == "lost":
        (Path(urlparse(mlflow.get_logged_model(info.model_id).artifact_location).path) / "MLmodel").unlink()
    proc = sh(["d2m", "promote", str(candidate), "--reason", "canary test"], served_project, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "canary failed" in proc.stderr and words in proc.stderr, proc.stderr
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version
    audit = [json.loads(v) for k, v in sorted(client.get_model_version(MODEL, str(candidate)).tags.items()) if k.startswith("audit.")]
    assert audit[-1]["status"] == "blocked" and words in audit[-1]["canary"]["reason"]


def test_batch_score_writes_predictions_with_the_model_version(served_project, tmp_path):
    out = tmp_path / "scored.parquet"
    proc = sh(["d2m", "score", "data/inputs/flights_small.csv", str(out)], served_project)
    champion = registry(served_project).get_model_version_by_alias(MODEL, "champion").version
    scored = pq.read_table(out)
    source_rows = pacsv.read_csv(served_project / "data/inputs/flights_small.csv").num_rows
    assert scored.num_rows == source_rows and f"version {champion}" in proc.stdout
    assert set(scored["model_version"].to_pylist()) == {str(champion)}
    assert {"prediction", "probability", "carrier"} <= set(scored.column_names)
    probabilities = scored["probability"].to_pylist()
    assert all(0.0 <= p <= 1.0 for p in probabilities)


def test_batch_score_refuses_a_file_without_a_required_column_and_writes_nothing(served_project, tmp_path):
    bad = tmp_path / "no_carrier.csv"
    table = pacsv.read_csv(served_project / "data/inputs/flights_small.csv")
    pacsv.write_csv(table.drop_columns(["carrier"]).slice(0, 50), bad)
    out = tmp_path / "never.parquet"
    proc = sh(["d2m", "score", str(bad), str(out)], served_project, check=False)
    assert proc.returncode == 1 and "carrier" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_an_override_after_training_shows_in_the_version_not_the_reused_run(served_project):
    """Version 2 came from `--set evaluate.threshold=0.3`: train did not rerun, so the version
    shares version 1's MLflow run, whose params are the training values; the version's own
    `params` tag holds the exact values it was registered with."""
    client = registry(served_project)
    first, second = (client.get_model_version(MODEL, v) for v in ("1", "2"))
    assert first.run_id == second.run_id
    assert json.loads(second.tags["params"])["evaluate"]["threshold"] == 0.3
    assert json.loads(first.tags["params"])["evaluate"]["threshold"] == "max_f1"
    assert client.get_run(second.run_id).data.params["evaluate.threshold"] == "max_f1"


def test_model_card_is_the_version_description_with_lineage_and_row_counts(served_project):
    client = registry(served_project)
    registration = json.loads((served_project / "reports/registration.json").read_text())
    version = client.get_model_version(MODEL, str(registration["version"]))
    card = (served_project / "reports/model_card.md").read_text()
    assert version.description == card
    for words in (f"# Model card: {MODEL} version {registration['version']}", "## Slices", "## Calibration", "## Intended use", "## Limitations", version.tags["data_md5"]):
        assert words in card, words
    rows = {part: int(version.tags[f"rows.{part}"]) for part in ("raw", "train", "valid", "test")}
    assert rows["train"] + rows["valid"] + rows["test"] <= rows["raw"] and rows["test"] > 0
    assert f"{rows['test']:,}" in card
    artifacts = [a.path for a in client.list_artifacts(version.run_id)]
    assert "model_card.md" in artifacts


def replay(port: int, project: Path, table) -> None:
    """Send `table`'s rows through the server, 100 per request, as a client would."""
    from data2model.request_checks import json_records

    registry(project)
    fields = mlflow.models.get_model_info(f"models:/{MODEL}@champion").signature.inputs.input_names()
    rows = json_records(table, fields)
    for i in range(0, len(rows), 100):
        assert call(port, "/invocations", records(rows[i:i + 100]))[0] == 200
    deadline = time.time() + 30
    while call(port, "/version")[2]["inference_log"]["logged_rows"] < len(rows):
        assert time.time() < deadline, "the inference log did not catch up"
        time.sleep(0.3)


def monitoring_runs(prefect: str) -> list[dict]:
    return prefect_api(prefect, "POST", "/flow_runs/filter", {"flow_runs": {"tags": {"all_": ["monitoring"]}}})


def test_later_period_traffic_triggers_exactly_one_retraining_and_in_distribution_traffic_none(served_project, server, tmp_path):
    """Replays through the real server, `d2m monitor` against a real Prefect server and the
    MLflow server `d2m up` started: in-distribution traffic triggers nothing, a later period
    exactly one retraining, and a labels file gives live metrics on the default key. Every
    report is an MLflow run with its plots, and a Prefect artifact that shows them."""
    import pyarrow.compute as pc

    prefect_port, mlflow_port = free_port(), free_port()
    prefect, mlflow_ui = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    sh(["d2m", "up", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)], served_project, timeout=300)
    env = isolated_env(served_project) | {"PREFECT_API_URL": f"{prefect}/api", "D2M_MLFLOW_URL": mlflow_ui}

    def monitor(*args: str) -> str:
        proc = subprocess.run(["d2m", "monitor", *args], cwd=served_project, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    try:
        for old in (served_project / "logs/inference").glob("*.parquet"):  # earlier tests' traffic (one row, repeated) is not this test's
            old.unlink()
        raw = pq.read_table(served_project / "data/raw.parquet")
        replay(server, served_project, raw.take(list(range(0, raw.num_rows, 2))))
        quiet = monitor()
        assert ": ok (no threshold crossed)" in quiet and not monitoring_runs(prefect), quiet
        for old in (served_project / "logs/inference").glob("*.parquet"):
            old.unlink()
        late = raw.filter(pc.greater_equal(raw["month"], 11))
        replay(server, served_project, late)
        drifted = monitor()
        assert ": retrain" in drifted and "month" in drifted and "started the pipeline deployment" in drifted, drifted
        replay(server, served_project, late)  # the episode goes on: no second retraining
        again = monitor()
        assert ": breach (in cool-down" in again and "started the pipeline deployment" not in again, again
        labels = tmp_path / "labels.parquet"  # ground truth arrives for the replayed rows, keyed on carrier, flight, time_hour
        pq.write_table(late.select(["carrier", "flight", "time_hour", "arr_delay"]), labels)
        monitor("--labels", str(labels), "--no-trigger")
        deadline = time.time() + 600
        while (runs := monitoring_runs(prefect)) and runs[0]["state_type"] not in ("COMPLETED", "FAILED", "CRASHED"):
            assert time.time() < deadline, runs[0]["state_type"]
            time.sleep(2)
        assert len(runs) == 1 and runs[0]["state_type"] == "COMPLETED", runs
        reports = sorted((served_project / "logs/monitoring").glob("*/report.json"))
        assert len(reports) == 4 and all((r.parent / "feature_psi.png").stat().st_size > 10_000 for r in reports)
        live = json.loads(reports[-1].read_text())["live"]
        assert live["metric"] == "auc" and live["rows"] >= 0.9 * late.num_rows and 0.5 < live["value"] <= 1.0, live
        client = registry(served_project)
        experiment = client.get_experiment_by_name("data2model-monitoring")
        mlflow_runs = client.search_runs([experiment.experiment_id])
        assert len(mlflow_runs) == 4 and all("feature_psi.png" in [a.path for a in client.list_artifacts(r.info.run_id)] for r in mlflow_runs)
        artifacts = prefect_api(prefect, "POST", "/artifacts/filter", {"artifacts": {"key": {"any_": ["data2model-monitoring"]}}, "sort": "CREATED_DESC"})
        assert len(artifacts) == 4 and "Live auc" in artifacts[0]["data"], artifacts[0]["data"]
        image = re.search(r"!\[feature_psi\]\((\S+)\)", artifacts[0]["data"]).group(1)
        assert image.startswith(mlflow_ui)
        with urllib.request.urlopen(image, timeout=30) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        sh(["d2m", "down"], served_project, check=False)


def test_a_log_that_cannot_be_written_never_fails_a_request(served_project):
    from data2model.params import write_overrides

    params = served_project / "params.yaml"
    original = params.read_text()
    (served_project / "logs").mkdir(exist_ok=True)
    (served_project / "logs/blocked").write_text("a file where the inference log's folder should be")
    write_overrides({"serve.log.folder": "logs/blocked"}, served_project)
    try:
        with running_server(served_project) as port:
            rows = request_rows(served_project, 20)
            statuses = [call(port, "/invocations", records([row]))[0] for row in rows] + [call(port, "/invocations", records(rows))[0]]
            deadline = time.time() + 30
            while (logged := call(port, "/version")[2]["inference_log"])["failed_rows"] < 2 * len(rows):
                assert time.time() < deadline, logged
                time.sleep(0.3)
            assert statuses == [200] * (len(rows) + 1), statuses
            assert logged["logged_rows"] == 0 and logged["errors"], logged
            assert call(port, "/ping")[0] == 200
    finally:
        params.write_text(original)


def registered(project: Path) -> tuple[dict, dict[str, str]]:
    """The latest registration.json and its version's tags."""
    registration = json.loads((project / "reports/registration.json").read_text())
    return registration, registry(project).get_model_version(MODEL, str(registration["version"])).tags


def test_the_gate_keeps_the_champion_against_a_worse_challenger_and_a_failed_canary(served_project):
    """Through the register stage with real models: the decision, reason and side-by-side table
    land in the version's tags and registration.json; a worse challenger is not promoted, and an
    equal one whose canary misses the latency bound is not either."""
    client = registry(served_project)
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    sh(["d2m", "run", "--set", "train.xgboost.max_depth=1", "--set", "train.xgboost.num_boost_round=3"], served_project)
    worse, tags = registered(served_project)
    assert worse["aliases"] == ["challenger"] and worse["gate"]["promote"] is False, worse
    assert tags["gate.decision"] == "kept champion" and tags["gate.champion_version"] == str(champion)
    assert tags["gate.reason"] == worse["gate"]["reason"] and "auc" in tags["gate.reason"]
    table = json.loads(tags["gate.table"])
    assert table == worse["gate"]["table"] and table[0]["challenger"] < table[0]["champion"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion
    # Back to the champion's settings (train reruns, the same model), with a latency bound no server meets.
    sh(["d2m", "run", "--set", "register.canary.max_p50_ms=0.001"], served_project)
    equal, tags = registered(served_project)
    assert tags["gate.decision"] == "kept champion" and equal["gate"]["promote"] is False, equal
    assert "canary failed" in tags["gate.reason"] and "median single-row latency" in tags["gate.reason"], tags["gate.reason"]
    audit = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith("audit.")]
    assert audit[-1]["status"] == "blocked" and audit[-1]["action"] == "gate"
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion


def test_serve_without_a_champion_exits_1_with_a_clear_message(tmp_path):
    project = make_project_copy(tmp_path / "empty")
    proc = sh(["d2m", "serve", "--port", str(free_port())], project, timeout=120, check=False)
    assert proc.returncode == 1 and "no version" in proc.stderr and "champion" in proc.stderr
