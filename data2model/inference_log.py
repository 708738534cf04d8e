"""The server's inference log: a sample of scored requests (the input fields, the predictions,
the model version and the time) in rotating Parquet files, for monitoring.

The request path only samples and hands the request's raw body and response to a writer
process: pickling bytes and a string costs microseconds, so the server's threads never wait on
the log. The writer process parses the body with the server's own request checks, turns 32
requests at a time into Arrow, drops and hashes columns as configured, and writes files
atomically. A full backlog or a failing disk costs log rows (counted in `stats`), never a
request. (A writer *thread* in the server's process held the GIL about 2% of the time for its
pandas work at 70 requests/s, which cost the p99 1.12-1.28x: BENCHMARKS.md, Serving.)
"""

from __future__ import annotations

import json
import logging
import queue
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

log = logging.getLogger("data2model.serve")
PREDICTION_PREFIX = "pred_"
CHUNK_REQUESTS = 32  # requests converted to Arrow together
HASH_KEY = "d2m-inferencelog"  # 16 bytes, as pandas asks; a fixed key keeps hashes comparable across files and runs


@dataclass
class LogStats:
    logged_rows: int = 0
    dropped_rows: int = 0  # the queue was full
    failed_rows: int = 0  # building or writing the file failed
    files_written: int = 0
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))  # the latest few


def log_table(requests: list[tuple[pd.DataFrame, pd.DataFrame, str, datetime]], drop: list[str], hashed: list[str]) -> pa.Table:
    """Requests' rows as logged: kept input columns (hashed where asked),
    `pred_*`, `model_version` and `logged_at` (UTC)."""
    features = pd.concat([f for f, _, _, _ in requests], ignore_index=True)
    predictions = pd.concat([p for _, p, _, _ in requests], ignore_index=True)
    kept = features.drop(columns=[c for c in drop if c in features.columns])
    for name in hashed:
        if name in kept.columns:
            kept[name] = pd.util.hash_pandas_object(kept[name].astype(str), index=False, hash_key=HASH_KEY).to_numpy()
    out = pd.concat([kept, predictions.add_prefix(PREDICTION_PREFIX)], axis=1)
    sizes = [len(f) for f, _, _, _ in requests]
    out["model_version"] = np.repeat([v for _, _, v, _ in requests], sizes)
    out["logged_at"] = pd.to_datetime(np.repeat([at for _, _, _, at in requests], sizes), utc=True)
    return pa.Table.from_pandas(out, preserve_index=False)


def stats_dict(stats: LogStats) -> dict:
    return {**asdict(stats), "errors": list(stats.errors)}


class _Writer:
    """The writer process's side: takes requests, converts them a chunk at a time, writes files."""

    def __init__(self, cfg, counters: dict[str, Any], errors) -> None:
        self.cfg, self.folder = cfg, Path(cfg.folder)
        self.counters, self.errors = counters, errors
        self.fields: dict[str, list] = {}  # per model version, sent once by the server
        self.raw: list[tuple] = []  # taken, not yet converted
        self.tables: list[pa.Table] = []  # converted, not yet written
        self.pending_rows = 0  # rows in both
        self.seq = 0

    def run(self, requests) -> None:
        last_flush = time.monotonic()
        while True:
            try:
                item = requests.get(timeout=0.2)
            except queue.Empty:
                item = ()
            if item is None:  # the server closes the log
                break
            if item:
                self.take(item)
            if self.pending_rows >= self.cfg.rows_per_file or (self.pending_rows and time.monotonic() - last_flush >= self.cfg.flush_seconds):
                self.flush()
                last_flush = time.monotonic()
        self.flush()

    def take(self, item: tuple) -> None:
        if item[0] == "fields":
            self.fields[item[1]] = item[2]
            return
        rows = item[1]
        _add(self.counters["queued"], -rows)
        self.raw.append(item[1:])
        self.pending_rows += rows
        if len(self.raw) >= CHUNK_REQUESTS:
            self.convert()

    def convert(self) -> None:
        from data2model.request_checks import request_frame

        requests, self.raw = self.raw, []
        if not requests:
            return
        frames = []
        for rows, body, content_type, version, content, at in requests:
            try:  # one request that cannot be read costs its own rows only
                frames.append((request_frame(body, content_type, self.fields[version], rows), pd.DataFrame(json.loads(content)["predictions"]), version, at))
            except Exception as err:
                self.pending_rows -= rows
                self.fail(rows, f"convert: {err}")
        if not frames:
            return
        try:
            self.tables.append(log_table(frames, self.cfg.drop, self.cfg.hash))
        except Exception as err:
            rows = sum(len(f[0]) for f in frames)
            self.pending_rows -= rows
            self.fail(rows, f"convert: {err}")

    def flush(self) -> None:
        """Everything taken so far into one file."""
        self.convert()
        if not self.tables:
            return
        import pyarrow.parquet as pq

        from data2model.tables import atomic_path

        tables, rows = self.tables, self.pending_rows
        self.tables, self.pending_rows = [], 0
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
            self.seq += 1
            path = self.folder / f"requests-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{self.seq:06d}.parquet"
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp, compression="zstd")
            _add(self.counters["logged"], rows)
            _add(self.counters["files"], 1)
            self.rotate()
        except Exception as err:
            self.fail(rows, f"write: {err}")

    def fail(self, rows: int, error: str) -> None:
        _add(self.counters["failed"], rows)
        self.errors.put(error)
        log.warning("inference log: could not log %d rows (%s) in %s; requests are unaffected", rows, error, self.folder)

    def rotate(self) -> None:
        files = sorted(self.folder.glob("requests-*.parquet"))
        for old in files[: max(len(files) - self.cfg.max_files, 0)]:
            old.unlink(missing_ok=True)


def _add(counter, n: int) -> None:
    with counter.get_lock():
        counter.value += n


def _write(cfg, requests, counters: dict[str, Any], errors) -> None:
    """The writer process's entry point."""
    _Writer(cfg, counters, errors).run(requests)


class InferenceLog:
    """The server's side: sampling and a bounded backlog in the request path, the writing in a
    separate process (`start`, `close`)."""

    def __init__(self, cfg, seed: int | None = None):
        import multiprocessing

        self.cfg = cfg
        context = multiprocessing.get_context("spawn")  # the server has threads: no fork
        self._requests = context.Queue()
        self._errors = context.Queue()
        self._counters = {name: context.Value("q", 0) for name in ("queued", "logged", "failed", "files")}
        self._process = context.Process(target=_write, args=(cfg, self._requests, self._counters, self._errors), name="inference-log", daemon=True)
        self._random = random.Random(seed)
        self._dropped = 0
        self._recent_errors: deque[str] = deque(maxlen=20)
        self._fields_sent: set[str] = set()

    @property
    def stats(self) -> LogStats:
        while True:
            try:
                self._recent_errors.append(self._errors.get_nowait())
            except (queue.Empty, OSError, ValueError):
                break
        value = {name: counter.value for name, counter in self._counters.items()}
        return LogStats(logged_rows=value["logged"], dropped_rows=self._dropped, failed_rows=value["failed"], files_written=value["files"], errors=self._recent_errors)

    # --- the request path: cheap, never raises ---------------------------------------------

    def record(self, rows: int, body: bytes, content_type: str | None, fields: list, content: str, version: str) -> None:
        """One answered request: its `rows`, raw `body` (parsed again by the writer with
        `fields`, the model's input fields) and the response `content` (MLflow's JSON)."""
        try:
            if self._random.random() >= self.cfg.sample:
                return
            queued = self._counters["queued"]
            with queued.get_lock():
                if queued.value + rows > self.cfg.queue_rows:
                    self._dropped += rows
                    return
                queued.value += rows
            if version not in self._fields_sent:
                self._requests.put_nowait(("fields", version, fields))
                self._fields_sent.add(version)
            self._requests.put_nowait(("request", rows, body, content_type, version, content, datetime.now(timezone.utc)))
        except Exception as err:  # logging must never fail a request
            self._recent_errors.append(f"record: {err}")

    # --- the writer process --------------------------------------------------------------

    def start(self) -> None:
        self._process.start()

    def close(self) -> None:
        """Write what is pending and stop the writer."""
        if self._process.pid is None:
            return
        self._requests.put(None)
        self._process.join(timeout=self.cfg.flush_seconds + 30)
        if self._process.is_alive():
            self._process.terminate()
