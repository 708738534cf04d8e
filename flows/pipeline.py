"""The Prefect flow: one task per dvc.yaml stage, in DAG order, each skipped when DVC says it is
up to date. The DAG is read from dvc.yaml, never restated here, so a flow run and `dvc repro`
leave the same dvc.lock.

The flow's one parameter is the typed `Params` (the Prefect UI renders it as a form). Values
that differ from params.yaml are this run's overrides: they are in params.yaml only while the
run lasts (DVC and the stages read that file), the finished run is saved as a DVC experiment,
and the committed params.yaml is put back byte for byte."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from data2model import tracking
from data2model.dag import StageResult, run_stage, stage_order, workspace_lock
from data2model.errors import D2MError
from data2model.params import PARAMS_FILE, Params, changed_keys, load_params, write_overrides
from data2model.status import pipeline_status
from data2model.tables import read_json

# Data-centric stage reports shown as table artifacts: (artifact key, paths field, description).
DATA_REPORTS = (
    ("data2model-calibration", "calibration", "calibrate: ECE before/after per bin count, conformal coverage"),
    ("data2model-label-audit", "label_audit", "label_audit: estimated label-issue rate, overall and per class"),
    ("data2model-learning-curve", "learning_curve", "learning_curve: fitted a*n^-b + c, predicted gain from 2x and 10x data"),
)


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


@contextmanager
def params_for_run(overrides: dict[str, Any], logger) -> Iterator[None]:
    """params.yaml holds `overrides` for the duration of the run, then its committed bytes again."""
    path = Path(PARAMS_FILE)
    committed = path.read_bytes()
    try:
        for change in write_overrides(overrides):
            logger.info("this run's params.yaml %s", change)
        yield
    finally:
        path.write_bytes(committed)


def experiment_name() -> str:
    """A DVC experiment (git ref) name tied to the flow run."""
    return f"d2m-{runtime.flow_run.name or 'run'}-{str(runtime.flow_run.id)[:8]}"


def save_experiment(name: str) -> None:
    """Record the run's params.yaml, dvc.lock and outputs as a DVC experiment (`dvc exp show`)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        try:
            repo.experiments.save(name=name, force=True)
        except Exception as err:  # DVC and scmrepo raise many types; the message is what matters
            raise D2MError(f"the run finished but could not be saved as DVC experiment {name}: {err}") from None


@flow(name="data2model-pipeline", log_prints=True)
def pipeline(params: Params | None = None) -> dict[str, Any]:
    """Run the DVC DAG on params.yaml, or on `params`: the keys that differ from params.yaml are
    this run's overrides, recorded as a DVC experiment; params.yaml itself is left as committed."""
    logger = get_run_logger()
    with workspace_lock(logger):
        overrides = changed_keys(load_params().as_dict(), params.as_dict()) if params else {}
        if not overrides:
            return _run_stages(load_params(), logger)
        with params_for_run(overrides, logger):
            outcome = _run_stages(load_params(), logger)
            if isinstance(outcome, State):
                return outcome
            name = experiment_name()
            save_experiment(name)
        logger.info("overrides recorded as DVC experiment %s (`dvc exp show`, `dvc exp apply %s`); params.yaml restored", name, name)
        create_markdown_artifact(
            "# Overrides of this run\n\n| key | value |\n|---|---|\n" + "\n".join(f"| {k} | `{v}` |" for k, v in overrides.items())
            + f"\n\nRecorded as DVC experiment `{name}`: `dvc exp apply {name}` brings back its params.yaml, dvc.lock and outputs.\n",
            key="data2model-overrides", description=f"DVC experiment {name}",
        )
        return {**outcome, "experiment": name}


def _run_stages(params: Params, logger) -> dict[str, Any] | State:
    results = []
    order = stage_order()
    last_ray = last_ray_stage(order, params)
    for index, name in enumerate(order):
        if (start := _BEFORE_STAGE.pop(name, None)) is not None:
            start()
        state = stage_task.with_options(task_run_name=name)(name, return_state=True)
        if state.is_failed():  # the run ends Failed with the stage's message; later stages never start
            create_markdown_artifact(_failure_markdown(name, state.message, params), key="data2model-run", description=f"failed at {name}")
            return Failed(message=state.message, data=state.result(raise_on_failure=False))
        results.append(state.result())
        if index >= last_ray:
            release_ray()  # no stage is left to use it: it stops while the later stages run
    _push_data()
    status = pipeline_status(params)
    _publish_artifacts(status, params, _summary_markdown(status, results))
    return status


def last_ray_stage(order: list[str], params: Params) -> int:
    """Where in `order` the last stage that runs Ray work is: train, and label_audit and
    learning_curve when enabled (their extra models are Ray tasks); -1 when none is."""
    uses = {"train": True, "label_audit": params.label_audit.enabled, "learning_curve": params.learning_curve.enabled}
    return max((order.index(name) for name, used in uses.items() if used and name in order), default=-1)


def mlflow_links(base: str, experiment_id: str, registered: dict[str, Any]) -> dict[str, str]:
    """MLflow UI addresses of the training run and the registered version."""
    base = base.rstrip("/")
    return {
        "MLflow run": tracking.run_url(base, experiment_id, registered["run_id"]),
        f"model {registered['model_name']} version {registered['version']}": f"{base}/#/models/{registered['model_name']}/versions/{registered['version']}",
    }


def promotion_markdown(registered: dict[str, Any]) -> str:
    gate = registered.get("gate")
    if gate:
        return _gate_markdown(gate)
    verdict = "champion" if "champion" in registered["aliases"] else "not promoted"
    first = registered.get("first", {})
    return f"## Promotion\n\nVersion {registered['version']}: {verdict} ({first.get('reason', 'no champion to compare with')}).\n"


def _publish_artifacts(status: dict[str, Any], params: Params, summary: str) -> None:
    """The run's summary, metrics table, MLflow links (to tracking.ui_url()), Data Docs and the
    promotion decision, each its own artifact, created at once (`_create_all`)."""
    metrics = status["metrics"] or {}
    calls: list[tuple[Callable[..., Any], dict[str, Any]]] = [
        (create_markdown_artifact, {"markdown": summary, "key": "data2model-run", "description": "metrics, model version, where to look"}),
        (create_table_artifact, {"table": [{"metric": k, "value": round(v, 6)} for k, v in metrics.items() if isinstance(v, float)],
                                 "key": "data2model-metrics", "description": "holdout metrics"}),
    ]
    for key, path, description in DATA_REPORTS:
        if Path(getattr(params.paths, path)).exists():
            found = read_json(getattr(params.paths, path))
            calls.append((create_table_artifact, {"table": [{"measure": k, "value": v} for k, v in tracking.flatten(found).items()], "key": key, "description": description}))
    registered = status["registered"]
    if registered:
        for text, link in mlflow_links(tracking.ui_url(), tracking.configure(params), registered).items():
            calls.append((create_link_artifact, {"link": link, "link_text": text, "key": "data2model-" + ("mlflow-run" if text == "MLflow run" else "model-version")}))
        calls.append((create_markdown_artifact, {"markdown": promotion_markdown(registered), "key": "data2model-promotion", "description": "promotion decision"}))
        data_card = Path(params.paths.dataset_card)
        if data_card.exists():
            calls.append((create_markdown_artifact, {"markdown": data_card.read_text(), "key": "data2model-dataset-card",
                                                     "description": f"dataset card of the data version (Croissant: {params.paths.croissant})"}))
        card = Path(params.paths.model_card)
        if card.exists():
            calls.append((create_markdown_artifact, {"markdown": card.read_text(), "key": "data2model-model-card", "description": f"model card of version {registered['version']}"}))
    if status["data_docs"]:
        docs = Path(status["data_docs"]).resolve()
        calls.append((create_link_artifact, {"link": docs.as_uri(), "link_text": f"Data Docs ({status['data_docs']})", "key": "data2model-data-docs"}))
    _create_all(calls)


def _create_all(calls: list[tuple[Callable[..., Any], dict[str, Any]]]) -> None:
    """Make the artifact calls from threads that see this flow run's context: each is an API
    request with an HTTP client of its own, and one after another ten of them took about 1 s."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        done = [pool.submit(contextvars.copy_context().run, create, **kwargs) for create, kwargs in calls]
    for future in done:
        future.result()


_RAY_KEEPER: list[threading.Thread] = []
_RAY_STOP = threading.Event()
_BEFORE_STAGE: dict[str, Callable[[], None]] = {}  # what warm_up starts as a stage begins, by stage


def warm_up(due: Collection[str]) -> Callable[[], None]:
    """Start, beside the flow's first stages, what the stages that are `due` would otherwise
    wait for one after another. For train, the MLflow store opens now, in a thread. The returned
    function, called once Prefect's server has booted (the boot wants the 2 cores a laptop has),
    starts validate's great-expectations process (`tasks.validate.prestart`: its import then runs
    beside ingest) and, for train, a local Ray in another thread, which then imports the
    framework's Ray Train trainer and starts Ray Train's autoscaling coordinator
    (`trainers.prepare`). The stages' own calls wait for them (init_ray and tracking.configure
    take a lock; an import under way is waited for). Ray ties its processes' lives to the
    thread that starts them, so that thread lives, idle, until shutdown_ray. When register is
    due after train, the canary's server starts as train begins (`canary.prestart`), its
    imports beside training, which leaves a core idle on a laptop. `cool_down` ends what no
    stage used.

    Nothing here can fail the run: a problem (no tracking server, too few CPUs) is raised again
    by the stage that meets it, inside the flow run, where the UI shows it."""
    params = load_params()
    if "train" in due:
        threading.Thread(target=_quietly, args=(tracking.configure, params), name="d2m-mlflow", daemon=True).start()

    def after_boot() -> None:
        if "validate" in due:
            from tasks import validate

            validate.prestart()
        if "train" in due:
            from data2model.trainers import prepare

            keeper = threading.Thread(target=_keep_ray, args=(prepare, params.train), name="d2m-ray", daemon=True)
            keeper.start()
            _RAY_KEEPER.append(keeper)

    if "train" in due and "register" in due:
        _BEFORE_STAGE["train"] = lambda: _quietly(_prestart_canary)
    return after_boot


def _prestart_canary() -> None:
    from data2model import canary

    params = load_params()  # this run's, overrides included
    tracking.configure(params)  # the server opens the store as it starts: it must exist (waits for warm_up's thread)
    canary.prestart(params)


def _keep_ray(prepare: Any, train: Any) -> None:
    _quietly(prepare, train)
    _RAY_STOP.wait()
    _stop_ray()


def _quietly(start: Any, *args: Any) -> None:
    """Run a warm-up step; its error is left to the stage that meets it (see warm_up)."""
    try:
        start(*args)
    except Exception as err:  # noqa: BLE001 - see warm_up
        logging.getLogger("data2model").debug("warm-up left to the stages: %s", err)


def release_ray() -> None:
    """Let warm_up's thread stop its Ray now, in the background (shutdown_ray waits for it)."""
    _RAY_STOP.set()


def shutdown_ray() -> None:
    """Stop the Ray that warm_up's thread (which stops it itself) or the train stage started in
    this process, so that the process can exit cleanly."""
    release_ray()
    for keeper in _RAY_KEEPER:
        keeper.join()
    _stop_ray()


def cool_down() -> None:
    """What `d2m run` calls at its end: stop the warm-up's Ray (shutdown_ray), and a prestarted
    great-expectations process or canary server that no stage took."""
    shutdown_ray()
    _BEFORE_STAGE.clear()
    from data2model import canary
    from tasks import validate

    validate.discard_spare()
    canary.discard_spare()


def _stop_ray() -> None:
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def default_parameters() -> dict[str, Any]:
    """The deployment's form starts at params.yaml as it is when the deployment is served."""
    return {"params": load_params().as_dict()}
