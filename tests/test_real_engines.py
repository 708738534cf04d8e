"""The same pipeline on real engines, switched by configuration only: one `dvc repro` of a small
real-data project with RAY_ADDRESS on a two-node cluster made with `ray start`, and
MLFLOW_TRACKING_URI on an `mlflow server` backed by PostgreSQL with artifacts in an S3 API
(moto's server). Then the registry is used by alias and served, and the pipeline's data goes
to an S3 and a folder DVC remote, from which fresh clones restore it with nothing to rerun."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.csv as pacsv
import pytest

from tests import engines
from tests.conftest import ROOT, commit_params, free_port, isolated_env, make_project_copy, sh, small_flights

PG_BIN = engines.postgres_binaries()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MODEL = "engines-test"
SMALL = {
    "data.source": "data/inputs/flights_small.csv", "paths.contract": "contracts/flights_small.json",
    "split.method": "random", "train.xgboost.num_boost_round": 30, "register.model_name": MODEL,
}


@dataclass
class Stack:
    """The engines and the project that ran on them."""

    project: Path
    ray: dict[str, str]  # RAY_ADDRESS and the cluster's auth settings
    mlflow_url: str
    postgres_uri: str
    s3: str  # the S3 API's endpoint URL

    def env(self, cwd: Path) -> dict[str, str]:
        """What a team sets to leave the embedded defaults: the only difference from a local run."""
        return {**isolated_env(cwd), **self.ray, **engines.S3_KEYS, "AWS_ENDPOINT_URL_S3": self.s3, "MLFLOW_TRACKING_URI": self.mlflow_url}

    def run(self, cmd: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        cwd = cwd or self.project
        proc = subprocess.run(cmd, cwd=cwd, env=self.env(cwd), capture_output=True, text=True, timeout=timeout)
        if proc.returncode:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
        return proc


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if PG_BIN is None:
        pytest.skip("PostgreSQL binaries not installed (CI installs Debian's `postgresql` in .ci/run)")
    work = tmp_path_factory.mktemp("engines")
    project = make_project_copy(work / "project")
    pacsv.write_csv(small_flights(3000), project / "data/inputs/flights_small.csv")
    commit_params(project, SMALL)
    with ExitStack() as started:
        s3 = started.enter_context(engines.s3_server(work, ["dvc", "mlflow"]))
        postgres_uri = started.enter_context(engines.postgres(PG_BIN, "mlflow", "not-a-secret", "mlflow"))
        mlflow_url = started.enter_context(engines.mlflow_server(work, postgres_uri, "s3://mlflow/artifacts", s3))
        ray = started.enter_context(engines.ray_cluster(work, worker_cpus=2))  # exactly the 2 training workers' CPUs
        stack = Stack(project, ray, mlflow_url, postgres_uri, s3)
        start = time.perf_counter()
        stack.run(["dvc", "repro"])
        print(f"dvc repro on the real engines: {time.perf_counter() - start:.1f} s")
        sh(["git", "add", "-A"], project)
        sh(["git", "commit", "-qm", "a run on the real engines"], project)
        yield stack


@pytest.mark.engines
def test_training_joined_the_external_ray_cluster(stack):
    state = engines.ray_state(stack.ray)
    head, worker = sorted(state["nodes"], key=lambda n: n["cpus"])
    assert (head["cpus"], worker["cpus"]) == (0, 2)  # the head schedules nothing: training ran on the joined node
    train_drivers = [j for j in state["jobs"] if "tasks.train" in j["entrypoint"]]
    assert train_drivers and all(j["dead"] for j in train_drivers), state["jobs"]  # the train stage was a driver of this cluster
    meta = json.loads((stack.project / "models/model/model.json").read_text())
    assert meta["framework"] == "xgboost" and meta["feature_names"]  # a model came back to the driver's workspace
    assert json.loads((stack.project / "reports/metrics.json").read_text())["auc"] > 0.55


@pytest.mark.engines
def test_registry_on_postgres_alias_load_and_serve(stack):
    import mlflow
    import psycopg2

    client = mlflow.MlflowClient(stack.mlflow_url)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    client.set_registered_model_alias(MODEL, "reviewed", champion.version)
    with psycopg2.connect(stack.postgres_uri.replace("+psycopg2", "")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL,))
        aliases = dict(cursor.fetchall())
    assert aliases["champion"] == aliases["reviewed"] == int(champion.version)  # the registry lives in PostgreSQL
    assert any(key.endswith("MLmodel") for key in engines.s3_keys(stack.s3, "mlflow"))  # artifacts went to the object store

    request = json.loads((ROOT / "docs/example_request.json").read_text())
    rows = pd.DataFrame(request["dataframe_split"]["data"], columns=request["dataframe_split"]["columns"])
    rows["time_hour"] = pd.to_datetime(rows["time_hour"])  # JSON carries it as text; the signature wants a datetime
    mlflow.set_tracking_uri(stack.mlflow_url)
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}@reviewed")  # downloads through the server's artifact proxy
    finally:
        mlflow.set_tracking_uri(None)
    assert loaded.metadata.run_id == champion.run_id
    assert len(loaded.predict(rows)) == len(rows)

    port = free_port()
    server = subprocess.Popen(["d2m", "serve", "--port", str(port)], cwd=stack.project, env=stack.env(stack.project),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        engines.wait_until("d2m serve", lambda: engines.http_ok(f"http://127.0.0.1:{port}/ping"), [server], Path(os.devnull), timeout=180)
        call = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(request).encode(),
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(call, timeout=30) as response:
            assert response.status == 200
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == len(rows)
    finally:
        server.terminate()
        server.wait(30)


def nothing_to_rerun(stack: Stack, clone: Path, remote: str) -> None:
    stack.run(["dvc", "pull", "-r", remote], cwd=clone)
    assert "Data and pipelines are up to date" in stack.run(["dvc", "status"], cwd=clone).stdout
    repro = stack.run(["dvc", "repro"], cwd=clone)
    assert "Running stage" not in repro.stdout + repro.stderr, repro.stdout
    for path in ("data/raw.parquet", "models/model/model.json", "reports/registration.json"):
        assert (clone / path).read_bytes() == (stack.project / path).read_bytes()


@pytest.mark.engines
def test_dvc_s3_remote_push_then_fresh_clone_pulls_with_nothing_to_rerun(stack, tmp_path):
    stack.run(["dvc", "remote", "add", "s3", "s3://dvc/data2model"])  # the URL is committed; the endpoint and keys come from the environment
    sh(["git", "commit", "-qam", "an S3 remote"], stack.project)
    stack.run(["dvc", "push", "-r", "s3"])
    cached = sum(1 for path in (stack.project / ".dvc/cache/files/md5").rglob("*") if path.is_file())
    assert len(engines.s3_keys(stack.s3, "dvc")) == cached

    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(stack.project), str(clone)], tmp_path)
    nothing_to_rerun(stack, clone, "s3")


@pytest.mark.engines
def test_dvc_folder_remote_push_then_fresh_clone_pulls_with_nothing_to_rerun(stack, tmp_path):
    store = tmp_path / "shared-store"
    stack.run(["dvc", "remote", "modify", "--local", "local", "url", str(store)])
    stack.run(["dvc", "push", "-r", "local"])
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(stack.project), str(clone)], tmp_path)
    stack.run(["dvc", "remote", "modify", "--local", "local", "url", str(store)], cwd=clone)
    nothing_to_rerun(stack, clone, "local")


def test_unreachable_ray_address_is_one_clear_line(monkeypatch):
    from data2model.errors import D2MError
    from data2model.params import Train
    from data2model.trainers import init_ray

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(D2MError, match=r"RAY_ADDRESS=127\.0\.0\.1:\d+: no Ray head answers there") as err:
        init_ray(Train())
    assert time.monotonic() - start < 10 and "\n" not in str(err.value)


@pytest.mark.engines
def test_a_driver_with_the_wrong_ray_token_is_told_what_to_set(stack):
    """`ray start` turns token auth on. A driver whose token the cluster refuses gets one line
    naming RAY_AUTH_TOKEN, not Ray's chained traceback (Ray retries once a second, as long as
    RAY_gcs_server_port_wait_time_s says: 20 tries by default)."""
    join = "from data2model.params import Train; from data2model.trainers import init_ray; init_ray(Train())"
    env = {**stack.env(stack.project), "RAY_AUTH_TOKEN": "0" * 64, "RAY_gcs_server_port_wait_time_s": "2"}
    proc = subprocess.run([str(engines.BIN / "python"), "-c", join], cwd=stack.project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("data2model.errors.D2MError: RAY_ADDRESS=") and "refused this driver's auth token (RAY_AUTH_MODE=token)" in last, proc.stderr[-3000:]
    assert "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token" in last


def test_unreachable_tracking_server_is_one_clear_line():
    from data2model import tracking
    from data2model.errors import D2MError
    from data2model.params import load_params

    params = load_params(ROOT)
    params = params.model_copy(update={"tracking": params.tracking.model_copy(update={"uri": f"http://127.0.0.1:{free_port()}"})})
    start = time.monotonic()
    with pytest.raises(D2MError, match=r"MLflow tracking URI http://127\.0\.0\.1:\d+ .*no MLflow server answers there") as err:
        tracking.configure(params, ROOT)
    assert time.monotonic() - start < 15 and "\n" not in str(err.value)


def test_an_unreachable_tracking_server_fails_the_run_at_train_not_in_the_warm_up(tmp_path):
    """`d2m run` opens MLflow and starts Ray before the flow when train is due (warm_up); a
    problem there is left to the stage, so the run fails inside the flow, at train, with the
    one-line message, after the data stages ran."""
    project = make_project_copy(tmp_path / "project")
    uri = f"http://127.0.0.1:{free_port()}"
    env = isolated_env(project) | {"MLFLOW_TRACKING_URI": uri}
    proc = subprocess.run(["d2m", "run"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Beginning flow run" in out and "Task run 'validate' - validate: ran" in out, out[-4000:]
    assert f"train: MLflow tracking URI {uri}" in out and "no MLflow server answers there" in out, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
