"""The monitoring flow: read recent served traffic from the inference log, compare it with the
champion's reference (feature PSI, prediction PSI, live metrics once labels arrive), publish a
report (plots + table) to MLflow and the Prefect run, and start the pipeline deployment when a
threshold is crossed, at most once per cool-down and never twice on the same evidence."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from data2model.errors import D2MError
from data2model.params import Params


def _read_state(path: str) -> datetime | None:
    p = Path(path)
    return datetime.fromisoformat(json.loads(p.read_text())["last_trigger_at"]) if p.exists() else None


def _champion_reference(params: Params):
    """The champion's version, its holdout metrics, and its predictions on its holdout."""
    import mlflow
    import pyarrow as pa

    from data2model import tracking
    from data2model.monitoring import prediction_column
    from data2model.promotion import current_champion, model_frame
    from data2model.tables import read_table

    tracking.configure(params)
    client = mlflow.MlflowClient()
    name = params.register.model_name
    version = current_champion(client, name)
    if version is None:
        raise D2MError(f"no champion version of {name} to monitor: run the pipeline (d2m run) first")
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    holdout = read_table(params.paths.raw_holdout())
    predictions = model.predict(model_frame(holdout, model.metadata.get_input_schema()))
    metrics = json.loads(client.get_model_version(name, version).tags.get("holdout_metrics", "{}"))
    return version, metrics, pa.chunked_array([pa.array(predictions[prediction_column(params.data.task)].to_numpy())])


def _plots(assessment, served, reference, task: str, threshold: float, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from data2model.inference_log import PREDICTION_PREFIX
    from data2model.monitoring import prediction_column

    folder.mkdir(parents=True, exist_ok=True)
    top = sorted(assessment.feature_psi.items(), key=lambda kv: -kv[1])[:20]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.barh([c for c, _ in top][::-1], [v for _, v in top][::-1], color=["tab:red" if c in assessment.drifted else "tab:blue" for c, _ in top][::-1])
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set(xlabel="PSI vs the contract's reference", title=f"Feature drift of {assessment.rows:,} served rows")
    ax.legend()
    fig.tight_layout()
    paths = [folder / "feature_psi.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    column = f"{PREDICTION_PREFIX}{prediction_column(task)}"
    if reference is not None and column in served.column_names and task != "multiclass":
        fig, ax = plt.subplots(figsize=(8, 4))
        bins = np.histogram_bin_edges(reference.to_numpy(), bins=30)
        ax.hist(reference.to_numpy(), bins=bins, density=True, alpha=0.5, label="champion on its holdout")
        ax.hist(served[column].to_numpy(), bins=bins, density=True, alpha=0.5, label="served")
        ax.set(xlabel=prediction_column(task), ylabel="density", title=f"Prediction distribution, served vs the champion's holdout (PSI {assessment.prediction_psi or 0:.3f})")
        ax.legend()
        fig.tight_layout()
        paths.append(folder / "predictions.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _markdown(report: dict[str, Any], plots: list[Path], run: str, images: list[str]) -> str:
    """The report for the Prefect run: the plots inline (served by the MLflow UI the links point at)."""
    rows = "\n".join(f"| {c} | {v:.3f} | {'drifted' if c in report['drifted'] else ''} |" for c, v in sorted(report["feature_psi"].items(), key=lambda kv: -kv[1])[:15])
    live = report["live"]
    live_line = f"Live {live['metric']}: {live['value']:.4f} on {live['rows']:,} labelled rows (holdout {live['holdout']:.4f})" if live else "No labels joined: live metrics not computed."
    return (
        f"# Monitoring: {report['model_name']} version {report['champion_version']}\n\n"
        f"{report['rows']:,} served rows since {report['since']}. Decision: **{report['decision']}**: {report['why']}.\n\n"
        + ("".join(f"- {r}\n" for r in report["reasons"]) or "- no threshold crossed\n")
        + f"\nPrediction PSI: {report['prediction_psi']}. {live_line}\n\n| column | PSI | |\n|---|---|---|\n{rows}\n\n"
        + "".join(f"![{p.stem}]({url})\n\n" for p, url in zip(plots, images))
        + f"[MLflow run]({run}) (plots and report.json); on disk: " + ", ".join(f"`{p}`" for p in plots) + "\n"
    )


def _trigger(deployment: str, reason: str) -> str:
    from prefect.deployments import run_deployment

    try:
        run = run_deployment(name=deployment, timeout=0, tags=["monitoring"])
    except Exception as err:
        raise D2MError(f"thresholds crossed ({reason}) but starting deployment {deployment!r} failed: {err}. Is the Prefect server up with the deployment served (d2m up)?") from None
    return str(run.id)


def _monitor(params: Params, labels_path: str | None, trigger: bool) -> dict[str, Any]:
    import mlflow

    from data2model.monitoring import assess, join_labels, live_metrics, served_rows, trigger_decision, window_start
    from data2model.tables import read_json, write_json

    cfg = params.monitor
    now = datetime.now(timezone.utc)
    last = _read_state(cfg.state)
    since = window_start(now, cfg.window_hours, last)
    served = served_rows(params.serve.log.folder, since)
    if served is None or served.num_rows == 0:
        return {"rows": 0, "since": since.isoformat(timespec="seconds"), "decision": "nothing to do", "why": f"no served rows logged in {params.serve.log.folder} since then", "reasons": []}
    version, holdout_metrics, reference = _champion_reference(params)
    live = None
    if labels_path:
        from data2model.batch import open_batches

        import pyarrow as pa

        _, batches = open_batches(Path(labels_path), [], 100_000)
        labels = pa.Table.from_batches(list(batches))
        live = live_metrics(join_labels(served, labels, cfg.key), params.data.task, params.data, holdout_metrics, params.register.slices, params.register.min_slice_rows)
    assessment = assess(served, read_json(params.paths.contract), reference, params.data.task, cfg, live)
    act, why = trigger_decision(assessment.breach, last, now, cfg.cooldown_hours)
    report = {
        "model_name": params.register.model_name, "champion_version": version, "rows": assessment.rows, "since": since.isoformat(timespec="seconds"),
        "feature_psi": assessment.feature_psi, "drifted": assessment.drifted, "prediction_psi": assessment.prediction_psi, "live": live,
        "reasons": assessment.reasons, "decision": "retrain" if act and trigger and cfg.trigger else ("breach" if assessment.breach else "ok"), "why": why,
    }
    folder = Path(cfg.report_dir) / now.strftime("%Y%m%dT%H%M%SZ")
    plots = _plots(assessment, served, reference, params.data.task, cfg.drift_threshold, folder)
    if report["decision"] == "retrain":
        report["triggered_flow_run"] = _trigger(cfg.deployment, "; ".join(assessment.reasons))
        write_json({"last_trigger_at": now.isoformat(), "flow_run_id": report["triggered_flow_run"], "reasons": assessment.reasons}, cfg.state)
    write_json(report, folder / "report.json")
    from data2model import tracking

    experiment = tracking.configure(params, experiment=f"{params.tracking.experiment}-monitoring")
    with mlflow.start_run(experiment_id=experiment, run_name=f"monitor {now:%Y-%m-%d %H:%M}") as run:
        mlflow.log_metrics({"served_rows": assessment.rows, "drifted_columns": len(assessment.drifted), "max_feature_psi": max(assessment.feature_psi.values(), default=0.0),
                            **({"prediction_psi": assessment.prediction_psi} if assessment.prediction_psi is not None else {}), **({f"live_{live['metric']}": live["value"]} if live else {})})
        mlflow.log_param("champion_version", version)
        mlflow.set_tag("decision", report["decision"])
        for path in [*plots, folder / "report.json"]:
            mlflow.log_artifact(str(path))
    base, run_id = tracking.ui_url(), run.info.run_id
    images = [tracking.artifact_url(base, run_id, p.name) for p in plots]
    markdown = _markdown(report, plots, tracking.run_url(base, experiment, run_id), images)
    create_markdown_artifact(markdown, key="data2model-monitoring", description=f"monitoring: {report['decision']}")
    return report


@flow(name="data2model-monitor", log_prints=True)
def monitor(labels_path: str | None = None, trigger: bool = True) -> dict[str, Any]:
    """Compare recent served traffic with the champion's reference; on a breach (and outside
    the cool-down) start the pipeline deployment `monitor.deployment`. `labels_path`: a CSV or
    Parquet of ground truth with the `monitor.key` columns and the target."""
    from data2model.params import load_params

    logger = get_run_logger()
    try:
        report = _monitor(load_params(), labels_path, trigger)
    except D2MError as err:
        return Failed(message=str(err), data=err)
    logger.info("%s served rows: %s (%s)", report["rows"], report["decision"], report["why"])
    for reason in report["reasons"]:
        logger.warning("breach: %s", reason)
    return report
