"""The benchmark suite at 1x, once, as CI's smoke test: every figure is produced and the
incremental run reran exactly what a train parameter feeds. No timing is asserted (noise);
the figures themselves are BENCHMARKS.md's, from the full command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_suite_at_1x_produces_every_figure(tmp_path):
    out = tmp_path / "suite.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/suite.py"), "--scales", "1", "--repeats", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    at_1x = results["scales"]["1"]
    assert set(at_1x["medians"]) == {
        "prefect_database_created", "bare_script", "d2m_run_cold", "d2m_run_noop", "dvc_repro_noop", "d2m_run_train_changed",
        "stage_ingest", "stage_validate", "stage_features", "pyarrow_read_write",
    }
    ran = at_1x["incremental_ran"]  # train and what depends on it; nothing upstream of train
    assert ran[0] == "train" and ran[-1] == "register" and "evaluate" in ran, ran
    assert not {"ingest", "validate", "dataset_card", "features", "split"} & set(ran), ran
    for figure in at_1x["medians"].values():
        assert figure["seconds"] > 0 and figure["peak_rss_mb"] > 0
    assert at_1x["orchestration_tax"] > 0 and 0 < at_1x["data_stages_vs_pyarrow"] and at_1x["prefect_database_first_use_s"] > 0
    assert {"fixed_overhead_s_at_1x", "d2m_run_noop_s_at_1x", "dvc_repro_noop_s_at_1x", "data_stages_vs_pyarrow_at_1x"} <= set(results["goals"])
    assert all(isinstance(goal["met"], bool) for goal in results["goals"].values())
