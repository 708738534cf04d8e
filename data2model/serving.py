"""`d2m serve`: MLflow's scoring protocol (/ping, /invocations, `{"predictions": [...]}`) on a
registry alias, with request checks in front and the alias followed while running.

MLflow's server resolves `models:/<name>@champion` once, at start-up. Here a background thread
asks the registry every `serve.poll_seconds` where the alias points; a new version is loaded
beside the serving one and swapped in by one reference assignment. A request takes the
reference once, so requests in flight finish on the model they started with and none fails.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from io import StringIO
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from data2model.errors import D2MError
from data2model.inference_log import InferenceLog, stats_dict
from data2model.promotion import alias_version
from data2model.request_checks import Field, RequestError, fields_of, request_frame

log = logging.getLogger("data2model.serve")


@dataclass(frozen=True)
class Loaded:
    version: str
    model: Any  # mlflow.pyfunc.PyFuncModel
    fields: list[Field]
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def load_version(name: str, version: str, check_environment: bool = True) -> Loaded:
    """Load `version` of `name`. MLflow checks that this environment satisfies the model's
    requirements (a warning naming each mismatch; 0.5 s of reading every installed package's
    metadata on the first load): `check_environment=False` skips it, for the canary, whose
    server runs in the environment that logged the model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}", suppress_warnings=not check_environment)
    except MlflowException as err:
        raise D2MError(f"{name} version {version} cannot be loaded: {err.message}") from None
    schema = model.metadata.get_input_schema()
    if schema is None:
        raise D2MError(f"{name} version {version} was logged without an input signature; the server cannot check requests against it")
    return Loaded(version, model, fields_of(schema))


class AliasSlot:
    """The model an alias points to, reloaded when the alias moves; or one pinned version
    (`alias` None), which the canary serves before a promotion."""

    def __init__(self, client, name: str, alias: str | None, poll_seconds: float, version: str | None = None, check_environment: bool = True):
        self.client, self.name, self.alias, self.poll_seconds = client, name, alias, poll_seconds
        if alias is not None:
            version = alias_version(client, name, alias)
            if version is None:
                raise D2MError(f"no version of registered model {name!r} has alias {alias!r}: run the pipeline (d2m run) or `d2m promote` a version first")
        self.current = load_version(name, str(version), check_environment)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Swap in the alias's version if it moved; True when it did. A registry hiccup keeps
        the serving model and is logged."""
        try:
            version = alias_version(self.client, self.name, self.alias)
        except Exception as err:  # the registry is down or slow: keep serving what we have
            log.warning("could not ask the registry where @%s points (%s); still serving version %s", self.alias, err, self.current.version)
            return False
        if version is None or version == self.current.version:
            return False
        start = time.perf_counter()
        try:
            loaded = load_version(self.name, version)
        except Exception as err:
            log.error("@%s moved to version %s but it failed to load (%s); still serving version %s", self.alias, version, err, self.current.version)
            return False
        previous, self.current = self.current.version, loaded
        log.info("@%s moved: now serving version %s (was %s), loaded in %.1f s", self.alias, version, previous, time.perf_counter() - start)
        return True

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def start(self) -> None:
        if self.alias is None:
            return
        self._thread = threading.Thread(target=self._follow, name="alias-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 5)


def predict_json(loaded: Loaded, frame):
    """The predictions frame and its JSON in MLflow's response format."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    predictions = loaded.model.predict(frame)
    out = StringIO()
    predictions_to_json(predictions, out)
    return predictions, out.getvalue()


def create_app(slot: AliasSlot, max_rows: int, max_bytes: int, inference_log: InferenceLog | None = None) -> FastAPI:
    from contextlib import asynccontextmanager

    from mlflow.exceptions import MlflowException
    from mlflow.version import VERSION

    @asynccontextmanager
    async def lifespan(app):
        slot.start()
        if inference_log is not None:
            inference_log.start()
        yield
        slot.stop()
        if inference_log is not None:
            inference_log.close()

    app = FastAPI(title=f"data2model scoring: {slot.name}", lifespan=lifespan)

    def error(status: int, message: str, version: str) -> JSONResponse:
        return JSONResponse({"error_code": HTTPStatus(status).name, "message": message}, status_code=status, headers={"X-Model-Version": version})

    def describe(loaded: Loaded) -> dict[str, Any]:
        logged = stats_dict(inference_log.stats) if inference_log is not None else None
        return {"model_name": slot.name, "alias": slot.alias, "version": loaded.version, "loaded_at": loaded.loaded_at, "mlflow_version": VERSION, "inference_log": logged}

    @app.get("/ping")
    @app.get("/health")
    async def ping():
        loaded = slot.current
        return JSONResponse({"status": "ok", "version": loaded.version}, headers={"X-Model-Version": loaded.version})

    @app.get("/version")
    async def version():
        return describe(slot.current)

    @app.post("/invocations")
    async def invocations(request: Request):
        loaded = slot.current  # taken once: a swap during this request does not affect it
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_bytes:
            return error(413, f"request body of {int(size)} bytes is more than serve.max_body_mb allows ({max_bytes} bytes)", loaded.version)
        body = await request.body()
        if len(body) > max_bytes:
            return error(413, f"request body of {len(body)} bytes is more than serve.max_body_mb allows ({max_bytes} bytes)", loaded.version)
        try:
            frame = request_frame(body, request.headers.get("content-type"), loaded.fields, max_rows)
            predictions, content = await asyncio.to_thread(predict_json, loaded, frame)
        except RequestError as err:
            return error(err.status, err.message, loaded.version)
        except MlflowException as err:  # schema enforcement the checks above did not foresee
            return error(400, err.message, loaded.version)
        if inference_log is not None:
            inference_log.record(len(frame), body, request.headers.get("content-type"), loaded.fields, content, loaded.version)
        return Response(content=content, media_type="application/json", headers={"X-Model-Version": loaded.version})

    return app


def serve(params, host: str, port: int, alias: str | None, poll_seconds: float, version: str | None = None, log_requests: bool = True,
          fd: int | None = None) -> None:
    """Load the alias's version (or the pinned `version`), then serve until interrupted: on
    host:port, or on the listening socket `fd` a parent process bound and passed down."""
    import mlflow
    import uvicorn

    from data2model import tracking
    from data2model.stage import configure_logging

    configure_logging()  # alias moves and inference-log trouble are reported on stderr
    tracking.configure(params)
    name = params.register.model_name
    canary = version == "-"
    if canary:  # the canary started this server before the version existed: it is named on stdin
        import mlflow.pyfunc  # noqa: F401 - what loading it needs, imported while waiting

        from data2model.scoring import preload

        preload(params.train.framework)  # the version being registered was trained with it
        version = sys.stdin.readline().strip()
        if not version:
            raise D2MError("--version -: no version came on stdin")
    # The canary runs in the environment that has just logged the model: no requirements check.
    slot = AliasSlot(mlflow.MlflowClient(), name, None if version else alias, poll_seconds, version, check_environment=not canary)
    inference_log = InferenceLog(params.serve.log) if params.serve.log.enabled and log_requests else None
    app = create_app(slot, params.serve.max_rows, int(params.serve.max_body_mb * 1024 * 1024), inference_log)
    following = f"following @{alias} every {poll_seconds:g} s" if slot.alias else "pinned: the alias is not followed"
    if fd is not None:
        with socket.socket(fileno=os.dup(fd)) as inherited:
            host, port = inherited.getsockname()[:2]
    print(f"serving {name} version {slot.current.version} on http://{host}:{port}  (POST /invocations, GET /ping, GET /version); {following}", flush=True)
    if fd is None:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    else:
        uvicorn.run(app, fd=fd, log_level="warning")
