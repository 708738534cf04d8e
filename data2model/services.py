"""`d2m up` / `d2m down`: a Prefect server, the MLflow UI on the pipeline's own store, and the
served deployments, as background processes of this project on 127.0.0.1.

Each process leads its own process group and is recorded by PID in .d2m/services.json, so
`d2m down` stops exactly what `d2m up` started (and the children they spawned). Logs go to
.d2m/logs/.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data2model.errors import D2MError
from data2model.params import Params

STATE_DIR = Path(".d2m")
STATE_FILE = STATE_DIR / "services.json"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def prefect_env(port: int) -> dict[str, str]:
    """Settings for the server and the serve process; the UI calls the API on this port."""
    from data2model.cli import PREFECT_DEFAULTS

    return {
        **PREFECT_DEFAULTS,
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        # A run held by the deployment's concurrency limit retries after this long (default 30 s).
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    }


def mlflow_command(params: Params, port: int, root: Path) -> list[str]:
    uri = params.tracking.resolved_uri(root)
    command = [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1", "--backend-store-uri", uri]
    if uri.startswith("sqlite:"):
        command += ["--default-artifact-root", (root / params.tracking.artifact_dir).resolve().as_uri()]
    return command


def deployment_names() -> list[str]:
    from flows.serve import DEPLOYMENTS

    return [name for _, name in DEPLOYMENTS]


def check_port_free(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex((HOST, port)) == 0:
            raise D2MError(f"port {port} on {HOST} is already in use: pick another with --prefect-port / --mlflow-port")


def _get(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


# What a server that is not (yet) answering HTTP raises at a request.
_NO_ANSWER = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, json.JSONDecodeError)


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen, log: Path | None, timeout: float, every: float = 0.5) -> None:
    """Poll `ready` until it holds; a process that exits or a timeout is an error showing its
    log (None: its output went to this process's console)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise D2MError(f"{what} exited with code {proc.returncode}; {_tail(log)}")
        try:
            if ready():
                return
        except _NO_ANSWER:
            pass
        time.sleep(every)
    raise D2MError(f"{what} not ready after {timeout:.0f} s; {_tail(log)}")


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None:
        return "its output is above"
    return f"last lines of {log}:\n" + (log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)")


def _drain_prefect_workers(timeout: float = 10) -> None:
    """Send the run's last logs and events while the server still answers: Prefect's workers
    flush them at exit, and against a stopped server they retry for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def up_server() -> str | None:
    """The URL of the Prefect server `d2m up` started in this project, if it answers."""
    server = running_services().get("prefect-server")
    if server is None:
        return None
    try:
        return server["url"] if _get(f"{server['url']}/api/health") is True else None
    except _NO_ANSWER:
        return None


@contextlib.contextmanager
def prefect_api() -> Iterator[Callable[[], None]]:
    """The Prefect API this process's flow runs report to: PREFECT_API_URL (environment or
    profile) when set; else the server `d2m up` started in this project, when it answers, so
    that the run shows in its UI; else a temporary API server for this run, stopped when the
    block ends. Yields a function that returns once the API answers.

    The temporary server is the one Prefect's client would start for itself (the same command:
    `prefect.server.api.server:create_app` under uvicorn, no UI), on a loopback socket bound
    here. It is spawned on entering the block, before this process imports Prefect (0.7 s) and
    asks DVC what is due, so that its boot (2.6-3 s of one core alone) runs beside them; Prefect's
    client would import Prefect's server into this process first (1.5 s). It reads its settings
    from the same environment, profile and project files as this process. Leaving the block
    before the function was called (nothing was due) stops it unused."""
    if os.environ.get("PREFECT_API_URL"):
        yield lambda: None
        return
    served = up_server()
    if served:
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():  # set in the active profile: that API comes first
            yield lambda: None
            return
        print(f"Prefect: the server `d2m up` started, {served} (the run shows in its UI)", flush=True)
        with _reporting_to(f"{served}/api", served):
            yield lambda: None
        return
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    # The server gets a socket already bound and listening (uvicorn --fd): a port found free
    # and then released can be taken before the server binds it (Ray, starting meanwhile, took
    # one in CI and answered the health check in gRPC).
    with socket.socket() as listening:
        listening.bind((HOST, 0))
        listening.listen(128)
        address = f"http://{HOST}:{listening.getsockname()[1]}"
        command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--fd", str(listening.fileno()), "--log-level", "error", "--lifespan", "on"]
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, pass_fds=(listening.fileno(),))

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    with contextlib.ExitStack() as reporting:

        def ready() -> None:
            from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

            if PREFECT_API_URL.value():  # set in the active profile: the runs report there
                stop()
                return
            print(f"Prefect: temporary API server for this run on {address} (`d2m up` keeps a server running, with the UI)", flush=True)
            # /ready, not /health: it opens the database, and the server's first request to do so
            # took 0.2 s alone and 1.4 s once Ray and great-expectations' process were starting
            # beside it (warm_up's after_boot), on the flow's path; done here, it is off that path.
            wait_for("Prefect's temporary API server", lambda: _get(f"{address}/api/ready") == {"message": "OK"}, proc, None, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), every=0.1)
            reporting.enter_context(_reporting_to(f"{address}/api", ""))  # no UI on this server, so no "View at" link to one
            # No flow-run heartbeats: they tell a server that a run is alive, and nothing but this
            # run uses this server; the engine's heartbeat thread sleeps a second at a time, and
            # the flow's end waited for it (0.94 s of a 1.34 s empty flow). Entered after the line
            # above, so this settings context has the server's address.
            reporting.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))

        try:
            yield ready
        finally:
            reporting.close()  # the last logs and events go out while the server still answers
            stop()


@contextlib.contextmanager
def _reporting_to(api_url: str, ui_url: str) -> Iterator[None]:
    """Point this process's Prefect at a server, in the environment and the process-wide
    settings, not a settings context, so that every thread of Prefect's (heartbeats, log and
    event workers) reports to it; send the last logs and events before leaving."""
    from prefect.context import refresh_global_settings_context

    saved = {key: os.environ.get(key) for key in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    os.environ.update({"PREFECT_API_URL": api_url, "PREFECT_UI_URL": ui_url})
    refresh_global_settings_context()
    try:
        yield
        _drain_prefect_workers()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        refresh_global_settings_context()


def _start(name: str, command: list[str], env: dict[str, str], root: Path) -> tuple[subprocess.Popen, Path]:
    log = STATE_DIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=root, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, log


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (an exited process whose parent has not reaped it,
    as happens to services orphaned by `d2m up` under a parent that never reaps)."""
    import psutil

    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # a child of this process that exited: reaped
            return False
    except ChildProcessError:
        pass
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running_services() -> dict[str, dict[str, Any]]:
    """What the state file records, keeping only processes still alive."""
    if not STATE_FILE.exists():
        return {}
    services = json.loads(STATE_FILE.read_text())["services"]
    return {name: s for name, s in services.items() if alive(s["pid"])}


def up(params: Params, prefect_port: int, mlflow_port: int, root: Path, timeout: float = 120) -> dict[str, Any]:
    """Start the server, MLflow (when the store is local) and the deployments; wait until each
    answers; return what was started. Anything started is stopped again if a later step fails."""
    if running_services():
        raise D2MError(f"services are already up (see {STATE_FILE}): run `d2m down` first")
    uri = params.tracking.resolved_uri(root)
    local_store = not uri.startswith(("http://", "https://"))
    for port in (prefect_port, mlflow_port) if local_store else (prefect_port,):
        check_port_free(port)
    prefect_url, mlflow_url = f"http://{HOST}:{prefect_port}", (f"http://{HOST}:{mlflow_port}" if local_store else uri)
    env = prefect_env(prefect_port)
    started: dict[str, dict[str, Any]] = {}

    def record(name: str, proc: subprocess.Popen, log: Path, url: str) -> None:
        started[name] = {"pid": proc.pid, "url": url, "log": str(log)}
        STATE_FILE.write_text(json.dumps({"services": started}, indent=2))

    try:
        server, server_log = _start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)], env, root)
        record("prefect-server", server, server_log, prefect_url)
        if local_store:
            from data2model import tracking

            tracking.configure(params, root)  # the store and experiment exist before the server opens them
            mlflow, mlflow_log = _start("mlflow", mlflow_command(params, mlflow_port, root), {}, root)
            record("mlflow", mlflow, mlflow_log, mlflow_url)
        wait_for("prefect server", lambda: _get(f"{prefect_url}/api/health") is True, server, server_log, timeout)
        serve, serve_log = _start("deployments", [sys.executable, "-m", "flows.serve"], {**env, "D2M_MLFLOW_URL": mlflow_url}, root)
        record("deployments", serve, serve_log, f"{prefect_url}/deployments")
        names = deployment_names()
        query = {"deployments": {"name": {"any_": names}}}
        wait_for("deployments", lambda: {d["name"] for d in _get(f"{prefect_url}/api/deployments/filter", query)} >= set(names), serve, serve_log, timeout)
        if local_store:
            wait_for("mlflow server", lambda: urllib.request.urlopen(f"{mlflow_url}/health", timeout=5).status == 200, mlflow, mlflow_log, timeout)
    except BaseException:
        down()
        raise
    return started


def down(grace: float = 20) -> dict[str, int]:
    """Stop each recorded process group (SIGTERM, then SIGKILL after `grace` s); forget them."""
    if not STATE_FILE.exists():
        return {}
    services = json.loads(STATE_FILE.read_text())["services"]
    for service in services.values():
        try:
            os.killpg(service["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while any(alive(s["pid"]) for s in services.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for service in services.values():
        try:
            os.killpg(service["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    STATE_FILE.unlink()
    return {name: s["pid"] for name, s in services.items()}
