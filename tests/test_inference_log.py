"""The inference log on its own (its writer process included): sampling, dropped and hashed
columns, rotation, and that a full backlog or a broken disk costs log rows, never an exception
on the request path."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from data2model.inference_log import InferenceLog
from data2model.params import InferenceLog as LogParams
from data2model.request_checks import Field

FIELDS = [Field("carrier", "string", True), Field("tailnum", "string", True), Field("distance", "double", True)]


def request(i: int) -> dict:
    """A two-row request as the server hands it over: the raw body and the response's JSON."""
    body = {"dataframe_records": [{"carrier": "UA", "tailnum": f"N{i}A", "distance": 100.0 + i}, {"carrier": "DL", "tailnum": f"N{i}B", "distance": 200.0}]}
    content = {"predictions": [{"prediction": 0, "probability": 0.1}, {"prediction": 1, "probability": 0.9}]}
    return {"rows": 2, "body": json.dumps(body).encode(), "content_type": "application/json", "fields": FIELDS, "content": json.dumps(content)}


def run_log(cfg: LogParams, requests: int, seed: int = 0) -> InferenceLog:
    log = InferenceLog(cfg, seed=seed)
    log.start()
    for i in range(requests):
        log.record(**request(i), version="4")
    log.close()
    return log


def test_rows_are_logged_with_predictions_version_and_time_and_configured_columns_hidden(tmp_path):
    cfg = LogParams(folder=str(tmp_path / "log"), drop=["distance"], hash=["tailnum"], rows_per_file=4, max_files=100, flush_seconds=0.1)
    log = run_log(cfg, requests=10)
    table = pq.read_table(tmp_path / "log")
    assert table.num_rows == 20 == log.stats.logged_rows and log.stats.failed_rows == 0
    assert set(table.column_names) == {"carrier", "tailnum", "pred_prediction", "pred_probability", "model_version", "logged_at"}
    assert set(table["model_version"].to_pylist()) == {"4"} and table["pred_probability"].to_pylist() == [0.1, 0.9] * 10
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
        log.record(**request(i), version="1")
    assert log.stats.dropped_rows == 4 and log._counters["queued"].value == 6


def test_an_unwritable_folder_never_raises_and_is_counted(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    log = run_log(LogParams(folder=str(blocker), flush_seconds=0.1), requests=3)
    assert log.stats.failed_rows == 6 and log.stats.logged_rows == 0 and log.stats.errors


def test_a_body_the_writer_cannot_parse_is_counted_not_raised(tmp_path):
    log = InferenceLog(LogParams(folder=str(tmp_path), flush_seconds=0.1), seed=0)
    log.start()
    log.record(**{**request(0), "body": b"not json"}, version="1")
    log.record(**request(1), version="1")
    log.close()
    assert log.stats.failed_rows == 2 and log.stats.logged_rows == 2 and any("convert" in e for e in log.stats.errors)
