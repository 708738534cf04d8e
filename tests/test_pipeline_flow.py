"""The flow's edges that make concurrent and overridden runs safe, and its release of the
warm-up's Ray, without running stages."""

from __future__ import annotations

import fcntl
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from data2model.dag import WORKSPACE_LOCK, workspace_lock
from flows.pipeline import last_ray_stage, mlflow_links, params_for_run, promotion_markdown
from tests.conftest import sh

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args) -> None:
        self.lines.append(message % args)


def test_a_second_run_waits_for_the_workspace_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    logger, entered = Recorder(), []
    lock = Path(WORKSPACE_LOCK)
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)

        def second_run() -> None:
            with workspace_lock(logger):
                entered.append(time.monotonic())

        thread = threading.Thread(target=second_run)
        thread.start()
        time.sleep(0.5)
        assert not entered  # still waiting while the first run holds the workspace
        released = time.monotonic()
        fcntl.flock(held, fcntl.LOCK_UN)
    thread.join(5)
    assert entered and entered[0] >= released
    assert logger.lines == ["another run is using this workspace; waiting for it to finish"]


def test_overrides_live_in_params_yaml_only_during_the_run(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    committed = Path("params.yaml").read_bytes()
    logger = Recorder()
    with pytest.raises(RuntimeError), params_for_run({"train.xgboost.max_depth": 3}, logger):
        assert "max_depth: 3" in Path("params.yaml").read_text()
        raise RuntimeError("a stage failed")
    assert Path("params.yaml").read_bytes() == committed
    assert logger.lines == ["this run's params.yaml train.xgboost.max_depth: 8 -> 3"]


def test_mlflow_links_point_at_the_run_and_the_version():
    links = mlflow_links("http://127.0.0.1:5000/", "7", {"run_id": "abc", "model_name": "m", "version": 4})
    assert links == {
        "MLflow run": "http://127.0.0.1:5000/#/experiments/7/runs/abc",
        "model m version 4": "http://127.0.0.1:5000/#/models/m/versions/4",
    }


def test_promotion_markdown_for_a_first_version_and_a_gate():
    assert "Version 1: champion" in promotion_markdown({"version": 1, "aliases": ["challenger", "champion"]})
    blocked = {"version": 1, "aliases": ["challenger"], "first": {"promoted": False, "reason": "the first version; but canary failed: version 1 does not load"}}
    assert "Version 1: not promoted (the first version; but canary failed: version 1 does not load)" in promotion_markdown(blocked)
    gate = {"champion_version": 1, "promote": False, "reason": "auc dropped", "metric": "auc", "table": [{"scope": "all", "rows": 10, "champion": 0.7, "challenger": 0.6, "change": -0.1}]}
    text = promotion_markdown({"version": 2, "aliases": ["challenger"], "gate": gate})
    assert "not promoted" in text and "auc dropped" in text and "| all | 10 | 0.7000 | 0.6000 | -0.1000 |" in text


def test_ray_is_released_after_the_last_stage_that_runs_ray_work():
    from data2model.params import load_params, parse_params

    order = ["ingest", "validate", "features", "split", "train", "calibrate", "evaluate", "label_audit", "learning_curve", "register"]
    raw = load_params(ROOT).as_dict()
    assert last_ray_stage(order, parse_params(raw)) == order.index("train")  # the default: both audits off
    raw["label_audit"]["enabled"] = True
    assert last_ray_stage(order, parse_params(raw)) == order.index("label_audit")
    raw["learning_curve"]["enabled"] = True
    assert last_ray_stage(order, parse_params(raw)) == order.index("learning_curve")
    assert last_ray_stage(["ingest", "validate"], parse_params(raw)) == -1


RELEASE = """
import time
import ray
from data2model import canary
from flows import pipeline

after_boot = pipeline.warm_up(["train", "register"])
after_boot()
pipeline._BEFORE_STAGE.pop("train")()  # what the flow calls as train begins: the canary's server starts
((_, server),) = canary._SPARE
(keeper,) = pipeline._RAY_KEEPER
deadline = time.monotonic() + 120
while not ray.is_initialized() and time.monotonic() < deadline:
    time.sleep(0.1)
assert ray.is_initialized(), "the warm-up thread did not start Ray"
assert keeper.is_alive(), "the warm-up thread left before it was told to stop Ray"
pipeline.release_ray()
keeper.join(60)
assert not keeper.is_alive(), "release_ray did not stop the warm-up thread"
assert not ray.is_initialized(), "Ray is still up after release_ray"
pipeline.cool_down()  # what `d2m run` calls at the end: nothing left to wait for but the unused canary server
assert not canary._SPARE and server.proc.poll() is not None, "cool_down left the prestarted canary server running"
print("released")
"""


def test_release_ray_stops_the_warm_up_ray_in_its_own_thread(project):
    """The flow releases Ray once the last stage has finished; the thread that started it stops it.
    A canary server started as train began and never taken is stopped at the end."""
    proc = sh([sys.executable, "-c", RELEASE], project, timeout=300)
    assert proc.stdout.strip().endswith("released")
