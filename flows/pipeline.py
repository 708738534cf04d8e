"""The Prefect flow: one task per dvc.yaml stage, in DAG order, each skipped when DVC says it is
up to date. The DAG is read from dvc.yaml, never restated here, so a flow run and `dvc repro`
leave the same dvc.lock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from data2model.dag import StageResult, run_stage, stage_order
from data2model.errors import D2MError
from data2model.params import Params, load_params, write_overrides
from data2model.status import pipeline_status


def _transient(task, task_run, state) -> bool:
    """Retry infrastructure hiccups, never a user error (bad data or params fail the same way twice)."""
    try:
        state.result()
    except D2MError:
        return False
    except Exception:
        return True
    return False


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=_transient)
def stage_task(name: str) -> StageResult | State:
    logger = get_run_logger()
    try:
        result = run_stage(name)
    except D2MError as err:
        # A user-facing problem: the state carries the explanation, not a library traceback.
        return Failed(message=f"{name}: {err}", data=err)
    logger.info("%s: %s", name, "ran" if result.ran else "up to date, skipped")
    for warning in result.summary.get("warnings", []):  # checks of severity warn: reported, not blocking
        logger.warning("%s warning: %s", name, warning)
    return result


def _push_data() -> None:
    """Store this data version in the DVC remote, when one is configured."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        if repo.config["core"].get("remote"):
            repo.push()


def _summary_markdown(status: dict[str, Any], results: list[StageResult]) -> str:
    stages = " -> ".join(f"{r.name}{'' if r.ran else ' (up to date)'}" for r in results)
    metrics = status["metrics"] or {}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float))
    reg = status["registered"] or {}
    return (
        f"# data2model run\n\nStages: {stages}\n\n"
        f"## Holdout metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Model\n\n`{status['model_name']}` version {reg.get('version', '-')} "
        f"({', '.join(reg.get('aliases', [])) or 'not registered'}); champion: {status['champion_version']}\n\n"
        f"Data version (raw md5): `{status['data_version']}`  \n"
        f"MLflow: `{status['mlflow_ui']}`  \nData Docs: `{status['data_docs']}`\n"
    ) + _gate_markdown(reg.get("gate"))


def _gate_markdown(gate: dict[str, Any] | None) -> str:
    """The promotion gate's decision and side-by-side table, when there was a champion to beat."""
    if not gate:
        return ""
    lines = "\n".join(f"| {r['scope']} | {r['rows'] or ''} | {r['champion']:.4f} | {r['challenger']:.4f} | {r['change']:+.4f} |" for r in gate["table"])
    verdict = "promoted to champion" if gate["promote"] else "not promoted"
    return (
        f"\n## Promotion gate vs champion version {gate['champion_version']}: {verdict}\n\n{gate['reason']}\n\n"
        f"| {gate['metric']} | rows | champion | challenger | change (+ better) |\n|---|---|---|---|---|\n{lines}\n"
    )


def _failure_markdown(stage: str, message: str, params: Params) -> str:
    docs = Path(params.paths.data_docs, "index.html").resolve()
    link = f"[Data Docs]({docs.as_uri()})" if docs.exists() else "no Data Docs yet"
    return f"# data2model run failed at `{stage}`\n\n```\n{message}\n```\n\n{link}\n"


@flow(name="data2model-pipeline", log_prints=True)
def pipeline(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the DVC DAG on params.yaml (with `overrides`, dotted keys, written into params.yaml)."""
    logger = get_run_logger()
    if overrides:
        for change in write_overrides(overrides):
            logger.info("params.yaml %s", change)
    params = load_params()
    results = []
    for name in stage_order():
        state = stage_task.with_options(task_run_name=name)(name, return_state=True)
        if state.is_failed():  # the run ends Failed with the stage's message; later stages never start
            create_markdown_artifact(_failure_markdown(name, state.message, params), key="data2model-run", description=f"failed at {name}")
            return Failed(message=state.message, data=state.result(raise_on_failure=False))
        results.append(state.result())
    _push_data()
    status = pipeline_status(params)
    create_markdown_artifact(_summary_markdown(status, results), key="data2model-run", description="metrics, model version, where to look")
    card = Path(params.paths.model_card)
    if card.exists():
        create_markdown_artifact(card.read_text(), key="data2model-model-card", description="model card of the last registered version")
    return status


def shutdown_ray() -> None:
    """The train stage started Ray in this process; stop it so the process can exit cleanly."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()

