"""The canary before a promotion (TFX's InfraValidator, for our server): the candidate version
runs in a real `d2m serve` process on a free loopback port and must answer its input example
and a sample of holdout rows with the predictions in-process predict gives, within
`register.canary.tolerance`, at a median single-row latency within `max_p50_ms`. A version that
cannot load, crashes the server, refuses its own rows or drifts from in-process predict never
becomes champion."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from data2model.errors import CanaryFailed
from data2model.params import Params
from data2model.request_checks import json_records, request_frame

JSON = "application/json"
LATENCY_REQUESTS = 21


def compare(expected: pd.DataFrame, served: list[dict[str, Any]], tolerance: float) -> float:
    """The largest numeric difference; raises CanaryFailed on any other mismatch."""
    if len(served) != len(expected):
        raise CanaryFailed(f"the server answered {len(served)} predictions for {len(expected)} rows")
    got = pd.DataFrame(served)
    if list(got.columns) != list(expected.columns):
        raise CanaryFailed(f"the server answered columns {list(got.columns)}, in-process predict {list(expected.columns)}")
    worst = 0.0
    for name in expected.columns:
        a, b = expected[name].to_numpy(), got[name].to_numpy()
        if np.issubdtype(a.dtype, np.number):
            diff = float(np.nanmax(np.abs(a.astype(float) - b.astype(float)), initial=0.0))
            if diff > tolerance or not np.array_equal(np.isnan(a.astype(float)), np.isnan(b.astype(float))):
                raise CanaryFailed(f"served {name} differs from in-process predict by {diff:.3g} (tolerance {tolerance:g})")
            worst = max(worst, diff)
        elif not (a.astype(str) == b.astype(str)).all():
            raise CanaryFailed(f"served {name} differs from in-process predict, e.g. {b[:3].tolist()} vs {a[:3].tolist()}")
    return worst


def _post(port: int, body: bytes) -> tuple[int, dict[str, Any], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": JSON})
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    try:
        return response.status, json.loads(payload), elapsed
    except json.JSONDecodeError:
        return response.status, {"message": payload.decode(errors="replace")[:500]}, elapsed


@dataclass
class Server:
    proc: subprocess.Popen
    ready: Callable[[], int]

    def serve(self, version: str) -> None:
        """Name the version a server started without one serves."""
        with contextlib.suppress(OSError):  # it has exited: ready() says how
            self.proc.stdin.write(f"{version}\n")
            self.proc.stdin.close()


@contextlib.contextmanager
def served(version: str | None, start_timeout_s: float, background: bool = False) -> Iterator[Server]:
    """`d2m serve --version` started in a subprocess on a loopback socket bound here and passed
    down (`--fd`), stopped on exit. Yields the `Server`, whose `ready()` waits for its /ping and
    returns its port: the caller works while the server starts. With `version` None the server
    starts before the version exists (`--version -`): it imports what it needs (about half its
    boot) until `Server.serve(version)` names it. A port found free and released before the
    server binds it can be taken meanwhile, by Ray's processes for one. A `background` server
    runs at the lowest CPU priority (nice 19): started ahead of its use, it takes only the CPU
    that other work leaves idle."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(128)
        port = listening.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "data2model.cli", "serve", "--version", version or "-", "--no-log", "--fd", str(listening.fileno())],
                                stdin=subprocess.PIPE if version is None else subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, pass_fds=(listening.fileno(),))
    if background and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):  # it has exited already: ready() says how
            os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
    deadline: list[float] = []  # counted from the first wait: a caller busy meanwhile gives the server more time, not less

    def ready() -> int:
        deadline.append(deadline[0] if deadline else time.monotonic() + start_timeout_s)
        while True:
            if proc.poll() is not None:
                raise CanaryFailed(f"the server exited {proc.returncode} before answering: {proc.stderr.read().strip()[-800:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return port
            except OSError:
                pass
            if time.monotonic() > deadline[0]:
                raise CanaryFailed(f"the server did not answer /ping within {start_timeout_s:g} s")
            time.sleep(0.25)

    try:
        yield Server(proc, ready)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _in_process(params: Params, name: str, version: str) -> tuple[list[dict[str, Any]], dict[str, bytes], dict[str, pd.DataFrame]]:
    """Load `version` here and predict the canary's requests with it: (holdout rows, request
    bodies, expected predictions per request)."""
    from data2model.serving import load_version
    from data2model.tables import read_table

    cfg = params.register.canary
    try:
        loaded = load_version(name, version)
    except Exception as err:  # a version that cannot load is exactly what the canary is for
        raise CanaryFailed(f"version {version} does not load: {err}") from None
    names = [f.name for f in loaded.fields]
    holdout = read_table(params.paths.raw_holdout())
    step = max(holdout.num_rows // cfg.rows, 1)
    rows = json_records(holdout.take(list(range(0, holdout.num_rows, step))[: cfg.rows]), names)
    example = loaded.model.input_example
    requests = {"holdout rows": rows}
    if isinstance(example, pd.DataFrame):
        requests["input example"] = json_records(pa.Table.from_pandas(example, preserve_index=False), names)
    bodies = {what: json.dumps({"dataframe_records": r}).encode() for what, r in requests.items()}
    expected = {}
    for what, body in bodies.items():
        try:
            expected[what] = loaded.model.predict(request_frame(body, JSON, loaded.fields, len(requests[what])))
        except Exception as err:  # a candidate that cannot predict its own rows in-process
            raise CanaryFailed(f"version {version} fails in-process predict on its {what}: {type(err).__name__}: {err}") from None
    return rows, bodies, expected


def run_canary(params: Params, name: str, version: str) -> dict[str, Any]:
    """Serve `version`, check its answers and latency; the result goes into the audit event."""
    with served(version, params.register.canary.start_timeout_s) as server:
        return _check(params, name, version, server.ready)


def _check(params: Params, name: str, version: str, ready: Callable[[], int]) -> dict[str, Any]:
    """The canary against a server that `ready()` waits for. The server starts (a new process:
    imports, model load) while this process loads the same version and predicts in-process: on
    two cores the two overlap."""
    cfg = params.register.canary
    started = time.perf_counter()
    rows, bodies, expected = _in_process(params, name, version)
    port = ready()
    worst = 0.0
    for what, body in bodies.items():
        status, doc, _ = _post(port, body)
        if status != 200:
            raise CanaryFailed(f"the server answered {what} with HTTP {status}: {doc.get('message')}")
        worst = max(worst, compare(expected[what], doc["predictions"], cfg.tolerance))
    single = [json.dumps({"dataframe_records": [r]}).encode() for r in rows[:LATENCY_REQUESTS]]
    p50_ms = statistics.median(_post(port, body)[2] for body in single) * 1000
    if p50_ms > cfg.max_p50_ms:
        raise CanaryFailed(f"median single-row latency {p50_ms:.1f} ms is above register.canary.max_p50_ms={cfg.max_p50_ms:g}")
    return {"passed": True, "rows": len(rows), "max_abs_diff": worst, "p50_ms": round(p50_ms, 2), "seconds": round(time.perf_counter() - started, 1)}


def canary_check(params: Params) -> Callable[[str, str], dict[str, Any]] | None:
    """What promotion calls before it moves `champion`; None when the canary is off."""
    if not params.register.canary.enabled:
        return None
    return lambda name, version: run_canary(params, name, version)


class Canary:
    """The canary of one version that register has yet to create: see `canary_started`."""

    def __init__(self, params: Params, name: str, server: Server) -> None:
        self.params, self.name, self.server, self.version = params, name, server, None

    def serve(self, version: str) -> Callable[[str, str], dict[str, Any]]:
        """The version now exists: the server loads it. Returns the check promotion calls."""
        self.version = str(version)
        self.server.serve(self.version)
        return self.check

    def check(self, asked_name: str, asked_version: str) -> dict[str, Any]:
        if (asked_name, str(asked_version)) != (self.name, self.version):
            raise ValueError(f"this canary serves {self.name} version {self.version}, not {asked_name} version {asked_version}")
        return _check(self.params, self.name, self.version, self.server.ready)


_SPARE: list[tuple[contextlib.ExitStack, Server]] = []  # a server started by `prestart`, for the next canary


def _start(params: Params, background: bool = False) -> tuple[contextlib.ExitStack, Server]:
    """A server for a version not yet named (`served(None, ...)`), and what stops it."""
    stack = contextlib.ExitStack()
    return stack, stack.enter_context(served(None, params.register.canary.start_timeout_s, background))


def prestart(params: Params) -> None:
    """Start the next canary's server now, before register begins: `d2m run` calls it as train
    begins (flows.pipeline.warm_up), so that the server's imports run on the core that training
    leaves idle instead of beside register's work; at the lowest CPU priority, they do not slow
    Ray Train's start, which wants both cores first. The tracking store must exist (the server
    opens it as it starts). A server no canary took is stopped by `discard_spare`."""
    if params.register.canary.enabled and not _SPARE:
        _SPARE.append(_start(params, background=True))


def discard_spare() -> None:
    """Stop a prestarted server that no canary took (the run ended before register)."""
    while _SPARE:
        _SPARE.pop()[0].close()


@contextlib.contextmanager
def canary_started(params: Params, name: str) -> Iterator[Canary | None]:
    """A canary whose server starts now (or was started by `prestart`), before register has
    logged and registered the version, so that its imports run meanwhile and its model loads
    while the gate scores (`Canary.serve(version)`, then `check`); stopped on exit, used or not.
    None when the canary is off."""
    if not params.register.canary.enabled:
        yield None
        return
    stack, server = _SPARE.pop() if _SPARE else _start(params)
    with stack:
        yield Canary(params, name, server)
