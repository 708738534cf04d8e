"""The inference log on its own: sampling, dropped and hashed columns, rotation, and that a
full queue or a broken disk costs log rows, never an exception on the request path."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from data2model.inference_log import InferenceLog
from data2model.params import InferenceLog as LogParams


def frames(i: int):
    features = pd.DataFrame({"carrier": ["UA", "DL"], "tailnum": [f"N{i}A", f"N{i}B"], "distance": [100.0 + i, 200.0]})
    return features, pd.DataFrame({"prediction": [0, 1], "probability": [0.1, 0.9]})


def run_log(cfg: LogParams, requests: int, seed: int = 0) -> InferenceLog:
    log = InferenceLog(cfg, seed=seed)
    log.start()
    for i in range(requests):
        log.record(*frames(i), version="4")
    log.close()
    return log


def test_rows_are_logged_with_predictions_version_and_time_and_configured_columns_hidden(tmp_path):
    cfg = LogParams(folder=str(tmp_path / "log"), drop=["distance"], hash=["tailnum"], rows_per_file=4, max_files=100, flush_seconds=0.1)
    log = run_log(cfg, requests=10)
    table = pq.read_table(tmp_path / "log")
    assert table.num_rows == 20 == log.stats.logged_rows and log.stats.failed_rows == 0
    assert set(table.column_names) == {"carrier", "tailnum", "pred_prediction", "pred_probability", "model_version", "logged_at"}
    assert set(table["model_version"].to_pylist()) == {"4"}
    hashed = table["tailnum"].to_pylist()
    assert all(isinstance(h, int) for h in hashed) and len(set(hashed)) == 20
    again = run_log(cfg.model_copy(update={"folder": str(tmp_path / "again")}), requests=1)
    assert again.stats.logged_rows == 2 and pq.read_table(tmp_path / "again")["tailnum"].to_pylist() == hashed[:2]  # stable hash


def test_files_rotate_beyond_max_files(tmp_path):
    cfg = LogParams(folder=str(tmp_path), rows_per_file=2, max_files=3, flush_seconds=60)
    log = run_log(cfg, requests=12)
    files = sorted(tmp_path.glob("requests-*.parquet"))
    assert log.stats.files_written == 12 and len(files) == 3
    assert sorted(pq.read_table(files[-1])["distance"].to_pylist()) == [111.0, 200.0]  # the newest kept


def test_sampling_logs_about_the_configured_share(tmp_path):
    log = run_log(LogParams(folder=str(tmp_path), sample=0.25, flush_seconds=0.1), requests=400, seed=7)
    assert 2 * 70 <= log.stats.logged_rows <= 2 * 130


def test_a_full_queue_drops_rows_and_counts_them(tmp_path):
    log = InferenceLog(LogParams(folder=str(tmp_path), queue_rows=6), seed=0)  # writer not started: nothing drains
    for i in range(5):
        log.record(*frames(i), version="1")
    assert log.stats.dropped_rows == 4 and log._queued_rows == 6


def test_an_unwritable_folder_never_raises_and_is_counted(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    log = run_log(LogParams(folder=str(blocker), flush_seconds=0.1), requests=3)
    assert log.stats.failed_rows == 6 and log.stats.logged_rows == 0 and log.stats.errors
