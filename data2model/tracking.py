"""MLflow wiring: where runs go (params > MLFLOW_TRACKING_URI > SQLite in the repo) and one run
per training, which evaluate and register reopen by id."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from data2model.errors import D2MError
from data2model.params import Params


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else value
    return out


def run_params(params: Params) -> dict[str, Any]:
    """The params as MLflow shows them: flat dotted keys, paths left out (they are the same everywhere)."""
    return {k: v for k, v in flatten(params.as_dict()).items() if not k.startswith("paths.")}


UI_DEFAULT = "http://127.0.0.1:5000"


def ui_url() -> str:
    """The MLflow UI that links point at: the one `d2m up` started (D2M_MLFLOW_URL), else `mlflow ui`'s default."""
    return os.environ.get("D2M_MLFLOW_URL", UI_DEFAULT).rstrip("/")


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def artifact_url(base: str, run_id: str, path: str) -> str:
    """The file itself, as the MLflow server sends it (an image renders inline in Markdown)."""
    from urllib.parse import urlencode

    return f"{base.rstrip('/')}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}"


_CONFIGURE = threading.Lock()


def configure(params: Params, root: Path | str = ".", experiment: str | None = None) -> str:
    """Point MLflow at the configured store; return the id of `experiment` (default
    tracking.experiment), created on first use with its artifacts beside the store's. One call
    at a time: a stage's call waits for the warm-up thread's, which may be creating the store."""
    with _CONFIGURE:
        return _configure(params, root, experiment)


def _configure(params: Params, root: Path | str, experiment: str | None) -> str:
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = Path(root).resolve()
    uri = params.tracking.resolved_uri(root)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    name = experiment or params.tracking.experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (root / params.tracking.artifact_dir).resolve().as_uri() if uri.startswith("sqlite:") else None
    return mlflow.create_experiment(name, artifact_location=location)


def check_server(uri: str, timeout: float = 10) -> None:
    """Fail in seconds, naming the URI, when no tracking server answers: MLflow's client
    retries for minutes before its own error."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # something answered (a proxy that wants credentials, say): MLflow's client says more
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise D2MError(f"MLflow tracking URI {uri} (MLFLOW_TRACKING_URI or tracking.uri): no MLflow server answers there ({reason})") from None


def resume_run(run_id: str):
    """Reopen the training run, or explain why it is gone."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.start_run(run_id=run_id)
    except MlflowException as err:
        raise D2MError(
            f"MLflow run {run_id} written by the train stage is not in {mlflow.get_tracking_uri()} "
            f"({err.message}); retrain with `dvc repro -f train`"
        ) from None
