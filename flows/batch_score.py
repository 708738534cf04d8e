"""Batch scoring as a Prefect flow: a CSV/Parquet file through the model an alias points to
(the champion by default), to a Parquet/CSV file with the model version in a column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from data2model.errors import D2MError


def _score(input_path: str, output_path: str, alias: str, batch_rows: int) -> dict[str, Any]:
    import mlflow

    from data2model import tracking
    from data2model.batch import score_file
    from data2model.params import load_params
    from data2model.promotion import alias_version
    from data2model.serving import load_version

    params = load_params()
    tracking.configure(params)
    name = params.register.model_name
    version = alias_version(mlflow.MlflowClient(), name, alias)
    if version is None:
        raise D2MError(f"no version of registered model {name!r} has alias {alias!r}: run the pipeline (d2m run) first")
    loaded = load_version(name, version)
    summary = score_file(loaded.model, version, loaded.fields, Path(input_path), Path(output_path), batch_rows)
    return {"model_name": name, "alias": alias, **summary}


@flow(name="data2model-batch-score", log_prints=True)
def batch_score(input_path: str, output_path: str, alias: str = "champion", batch_rows: int = 50_000) -> dict[str, Any]:
    """Score `input_path` (CSV or Parquet, raw columns as the source table has them) with
    models:/<register.model_name>@<alias>; write `output_path` (.parquet or .csv)."""
    logger = get_run_logger()
    try:
        summary = _score(input_path, output_path, alias, batch_rows)
    except D2MError as err:
        return Failed(message=str(err), data=err)
    logger.info("scored %s rows with %s version %s -> %s", f"{summary['rows']:,}", summary["model_name"], summary["model_version"], output_path)
    create_markdown_artifact(
        f"# Batch scoring\n\n| | |\n|---|---|\n| model | `{summary['model_name']}` version {summary['model_version']} (@{alias}) |\n"
        f"| input | `{input_path}` |\n| output | `{output_path}` |\n| rows | {summary['rows']:,} |\n",
        key="data2model-batch-score",
        description="what was scored, with which model version",
    )
    return summary
