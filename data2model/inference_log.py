"""The server's inference log: a sample of scored requests (the input fields, the predictions,
the model version and the time) in rotating Parquet files, for monitoring.

The request path only samples and puts the frames on a bounded queue; a writer thread turns
them into Arrow 32 requests at a time (about 11 ms of GIL per conversion measured, instead of
one conversion of a whole file's worth: 350 requests, over 100 ms, at 70 requests/s), drops and
hashes columns as configured, and writes files atomically. The conversions still hold the GIL
about 2% of the time at that rate, which is what logging costs the p99 (BENCHMARKS.md). A full
queue or a failing disk costs the log rows (counted in `stats`), never a request.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

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


class InferenceLog:
    def __init__(self, cfg, seed: int | None = None):
        self.cfg = cfg
        self.folder = Path(cfg.folder)
        self.stats = LogStats()
        self._queue: queue.Queue = queue.Queue()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, name="inference-log", daemon=True)
        self._raw: list[tuple[pd.DataFrame, pd.DataFrame, str, datetime]] = []  # taken, not yet converted
        self._tables: list[pa.Table] = []  # converted, not yet written
        self._pending_rows = 0  # rows in both
        self._seq = 0

    # --- the request path: cheap, never raises ---------------------------------------------

    def record(self, features: pd.DataFrame, predictions: pd.DataFrame, version: str) -> None:
        try:
            if self._random.random() >= self.cfg.sample:
                return
            rows = len(features)
            with self._lock:
                if self._queued_rows + rows > self.cfg.queue_rows:
                    self.stats.dropped_rows += rows
                    return
                self._queued_rows += rows
            self._queue.put_nowait((features, predictions, version, datetime.now(timezone.utc)))
        except Exception as err:  # logging must never fail a request
            self.stats.errors.append(f"record: {err}")

    # --- the writer thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.cfg.flush_seconds + 30)

    def _take(self, timeout: float) -> None:
        try:
            request = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        with self._lock:
            self._queued_rows -= len(request[0])
        self._raw.append(request)
        self._pending_rows += len(request[0])
        if len(self._raw) >= CHUNK_REQUESTS:
            self._convert()

    def _write_loop(self) -> None:
        last_flush = time.monotonic()
        while not (self._stop.is_set() and self._queue.empty()):
            self._take(timeout=0.2)
            if self._pending_rows >= self.cfg.rows_per_file or (self._pending_rows and time.monotonic() - last_flush >= self.cfg.flush_seconds):
                self._flush()
                last_flush = time.monotonic()
        self._flush()

    def _convert(self) -> None:
        requests, self._raw = self._raw, []
        if not requests:
            return
        try:
            self._tables.append(log_table(requests, self.cfg.drop, self.cfg.hash))
        except Exception as err:
            rows = sum(len(r[0]) for r in requests)
            self._pending_rows -= rows
            self.stats.failed_rows += rows
            self.stats.errors.append(f"convert: {err}")
            log.warning("inference log: could not convert %d rows (%s); requests are unaffected", rows, err)

    def _flush(self) -> None:
        """Everything taken so far into one file; the Parquet write itself runs outside the GIL."""
        self._convert()
        if not self._tables:
            return
        import pyarrow.parquet as pq

        from data2model.tables import atomic_path

        tables, rows = self._tables, self._pending_rows
        self._tables, self._pending_rows = [], 0
        try:
            table = pa.concat_tables(tables, promote_options="permissive")
            self._seq += 1
            path = self.folder / f"requests-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}-{self._seq:06d}.parquet"
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp, compression="zstd")
            self.stats.logged_rows += rows
            self.stats.files_written += 1
            self._rotate()
        except Exception as err:
            self.stats.failed_rows += rows
            self.stats.errors.append(f"write: {err}")
            log.warning("inference log: could not write %d rows to %s (%s); requests are unaffected", rows, self.folder, err)

    def _rotate(self) -> None:
        files = sorted(self.folder.glob("requests-*.parquet"))
        for old in files[: max(len(files) - self.cfg.max_files, 0)]:
            old.unlink(missing_ok=True)
