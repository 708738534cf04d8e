"""Real engines on loopback for tests/test_real_engines.py: a two-node Ray cluster made with
`ray start`, PostgreSQL from its own binaries, moto's S3 server and an MLflow tracking server on
them. Each runs as a child process group of the test, so teardown stops exactly what it started
(never `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import BIN, free_port

HOST = "127.0.0.1"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def wait_until(what: str, ready: Callable[[], bool], procs: list[subprocess.Popen], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what} exited {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(OSError):  # not listening yet
            if ready():
                return
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


@contextmanager
def processes(log: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start commands in their own process groups, logging to `log`; stop them all on exit."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        with log.open("a") as out:
            proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        stop(started)


def stop(procs: list[subprocess.Popen], grace: float = 10) -> None:
    """SIGTERM every group at once, then SIGKILL what is left after `grace` seconds: a Ray
    node would drain for up to 30 s, for work that is over when a test ends."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL comes next
                proc.wait(max(0.1, deadline - time.monotonic()))
        if all(proc.poll() is not None for proc in procs):
            return


@contextmanager
def ray_cluster(workdir: Path, worker_cpus: int) -> Iterator[dict[str, str]]:
    """A head that schedules nothing (0 CPUs, as on a real cluster) and one worker node with
    `worker_cpus`, so any training task that ran had to run on the joined node; yields the
    settings a client needs: RAY_ADDRESS and the cluster's own auth token (`ray start` turns
    token auth on; a token of its own keeps it apart from ~/.ray/auth_token). `--block` keeps
    each node in the foreground, so stopping its process group stops that node only."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="d2m-ray-"))  # Ray's socket paths must stay short
    log = workdir / "ray.log"
    common = ["--block", "--disable-usage-stats", "--node-ip-address", HOST]
    env = {"RAY_ADDRESS": f"{HOST}:{port}", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    try:
        with processes(log) as start:
            head = start([str(BIN / "ray"), "start", "--head", *common, "--port", str(port), "--num-cpus", "0", "--temp-dir", str(temp),
                          "--include-dashboard", "false"], env={**env, "RAY_ADDRESS": ""})
            wait_until("ray head", lambda: listening(port), [head], log)
            worker = start([str(BIN / "ray"), "start", *common, "--address", env["RAY_ADDRESS"], "--num-cpus", str(worker_cpus)], env=env)
            wait_until("ray worker node", lambda: len(ray_state(env)["nodes"]) == 2, [head, worker], log)
            yield env
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# A driver that joins RAY_ADDRESS (and the token) from its environment.
RAY_STATE = """
import json, ray, ray._private.state as state
ray.init(logging_level="ERROR", log_to_driver=False)
nodes = [{"id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0)} for n in ray.nodes() if n["Alive"]]
jobs = [{"entrypoint": j.get("Entrypoint", ""), "dead": j["IsDead"]} for j in state.jobs()]
print("D2M-STATE", json.dumps({"nodes": nodes, "jobs": jobs}))
"""


def ray_state(cluster: dict[str, str]) -> dict:
    """The cluster's live nodes and its job table (every driver that connected), read by a
    separate driver so this process never joins the cluster. Ray's job table has no public
    API without the dashboard, which `ray[train,data]` does not install."""
    out = subprocess.run([str(BIN / "python"), "-c", RAY_STATE], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **cluster})
    if out.returncode:
        raise OSError(f"reading the Ray cluster's state failed:\n{out.stderr[-3000:]}")
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("D2M-STATE ")]  # Ray logs to stdout too
    return json.loads(line.removeprefix("D2M-STATE "))


def postgres_binaries() -> Path | None:
    """Debian keeps initdb and pg_ctl in /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _unprivileged() -> tuple[list[str], str | None]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user Debian's package
    creates (or `nobody`); as anyone else, as that user."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"], user
        except KeyError:
            continue
    raise AssertionError("running as root with neither a `postgres` nor a `nobody` user to run PostgreSQL as")


@contextmanager
def postgres(bindir: Path, user: str, password: str, database: str) -> Iterator[str]:
    """A PostgreSQL server on a free loopback port in a fresh data folder, password auth only;
    yields its SQLAlchemy URI (psycopg2 named: SQLAlchemy 2 would otherwise pick psycopg 3)."""
    prefix, owner = _unprivileged()
    folder = Path(tempfile.mkdtemp(prefix="d2m-pg-"))  # not under pytest's root-only tmp folder
    (folder / "pw").write_text(password)
    if owner:
        shutil.chown(folder, owner)
        shutil.chown(folder / "pw", owner)
    port = free_port()
    data, log = folder / "data", folder / "server.log"
    try:
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={folder / 'pw'}",
                        "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=folder)
        options = f"-p {port} -k {folder} -c listen_addresses={HOST} -c fsync=off"
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
                       check=True, capture_output=True, cwd=folder)
        uri = f"postgresql://{user}:{password}@{HOST}:{port}"
        import psycopg2

        connection = psycopg2.connect(f"{uri}/postgres")
        connection.autocommit = True
        connection.cursor().execute(f"CREATE DATABASE {database}")
        connection.close()
        yield f"{uri.replace('postgresql:', 'postgresql+psycopg2:')}/{database}"  # the driver installed
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def s3_server(workdir: Path, buckets: list[str]) -> Iterator[str]:
    """moto's S3 API on a free loopback port with `buckets` created; yields the endpoint URL."""
    import boto3

    port = free_port()
    with processes(workdir / "moto.log") as start:
        proc = start([str(BIN / "moto_server"), "-H", HOST, "-p", str(port)], env=S3_KEYS)
        endpoint = f"http://{HOST}:{port}"
        wait_until("moto server", lambda: listening(port), [proc], workdir / "moto.log")
        s3 = boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_KEYS.items() if k != "AWS_DEFAULT_REGION"},
                          region_name=S3_KEYS["AWS_DEFAULT_REGION"])
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        yield endpoint


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def mlflow_server(workdir: Path, backend_uri: str, artifacts: str, s3_endpoint: str) -> Iterator[str]:
    """`mlflow server` on PostgreSQL, proxying artifacts to the S3 bucket: clients need only
    the tracking URI, never the object store's credentials."""
    port = free_port()
    log = workdir / "mlflow.log"
    with processes(log) as start:
        proc = start([str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
                      "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts],
                     env={**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint})
        url = f"http://{HOST}:{port}"
        wait_until("mlflow server", lambda: http_ok(f"{url}/health"), [proc], log, timeout=180)
        yield url
