"""What the pipeline has produced and where to look: for `d2m status` and the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data2model.lineage import data_hashes
from data2model.params import Params


def _read(path: str) -> dict[str, Any] | None:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def champion_version(params: Params) -> int | None:
    import mlflow

    from data2model import tracking
    from data2model.promotion import current_champion

    tracking.configure(params)
    version = current_champion(mlflow.MlflowClient(), params.register.model_name)
    return int(version) if version is not None else None


def pipeline_status(params: Params, root: Path | str = ".") -> dict[str, Any]:
    root = Path(root).resolve()
    uri = params.tracking.resolved_uri(root)
    validation = _read(params.paths.validation) or {}
    return {
        "model_name": params.register.model_name,
        "tracking_uri": uri,
        "champion_version": champion_version(params),
        "registered": _read(params.paths.registration),
        "metrics": _read(params.paths.metrics),
        "data_version": data_hashes(root).get(params.paths.raw),
        "data_docs": validation.get("data_docs"),
        "mlflow_ui": f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
    }


def describe(status: dict[str, Any]) -> str:
    """The human version of `pipeline_status`."""
    lines = [f"model            {status['model_name']} (champion: version {status['champion_version'] or '-'})"]
    reg = status["registered"]
    if reg:
        lines.append(f"last registered  version {reg['version']} as {', '.join(reg['aliases'])} (run {reg['run_id']})")
    metrics = status["metrics"] or {}
    shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    lines.append(f"holdout metrics  {shown or '-'}")
    lines.append(f"data version     {status['data_version'] or '-'} (md5 of the raw table in dvc.lock)")
    lines.append(f"tracking         {status['tracking_uri']}")
    lines.append(f"MLflow UI        {status['mlflow_ui']}")
    if status["data_docs"]:
        lines.append(f"Data Docs        {status['data_docs']}")
    return "\n".join(lines)
