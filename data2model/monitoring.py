"""Monitoring: served traffic (the inference log) against what the champion was built on, and
whether that calls for retraining. Pure functions on Arrow tables and arrays; the flow in
flows/monitor.py does the I/O, the report and the trigger.

- Feature drift: PSI per column against the contract's reference distributions, the same code
  (data2model/drift.py) the validation gate runs on each new batch.
- Prediction drift: PSI of served predictions against the champion's own predictions on its
  holdout (deciles for numbers, shares for classes).
- Live quality, once ground truth arrives: served rows joined to a labels file on `monitor.key`,
  scored with the promotion gate's metric, overall and per slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data2model.drift import category_reference, column_psi, drift, numeric_reference
from data2model.errors import DataError
from data2model.inference_log import PREDICTION_PREFIX

LOG_COLUMNS = {"model_version", "logged_at"}
MIN_VALUES_FOR_PSI = 100  # a PSI over fewer served values (a mostly-null column) is noise, not drift


def served_rows(folder: str | Path, since: datetime) -> pa.Table | None:
    """Logged rows at or after `since` (UTC); None when nothing was logged."""
    import pyarrow.dataset as ds

    files = sorted(Path(folder).glob("requests-*.parquet"))
    if not files:
        return None
    table = ds.dataset(files, format="parquet").to_table()
    return table.filter(pc.greater_equal(table["logged_at"], pa.scalar(since, pa.timestamp("us", tz="UTC"))))


def inputs_of(served: pa.Table) -> pa.Table:
    return served.select([c for c in served.column_names if c not in LOG_COLUMNS and not c.startswith(PREDICTION_PREFIX)])


def prediction_column(task: str) -> str:
    return "probability" if task == "binary" else "prediction"


def prediction_psi(served: pa.ChunkedArray, reference: pa.ChunkedArray) -> float | None:
    """PSI of served predictions against reference predictions, binned by the reference."""
    numeric = pa.types.is_floating(reference.type) or pa.types.is_integer(reference.type)
    spec = numeric_reference(reference) if numeric else category_reference(reference.cast(pa.string()))
    return column_psi(served if numeric else served.cast(pa.string()), spec)


def join_labels(served: pa.Table, labels: pa.Table, key: list[str]) -> pa.Table:
    """Served rows that have ground truth; the labels' columns win over the logged ones."""
    from data2model.preprocess import as_utc_naive

    missing = [k for k in key if k not in served.column_names or k not in labels.column_names]
    if not key or missing:
        raise DataError(f"monitor.key {key} must name columns both the inference log and the labels file have (missing: {missing or 'no key set'})")

    def keyed(table: pa.Table) -> pa.Table:
        for k in key:
            column = table[k]
            if pa.types.is_timestamp(column.type) or k in _timestamp_keys(served):  # one unit on both sides: a join needs equal types
                column = as_utc_naive(column, k).cast(pa.timestamp("us"), safe=False)
            else:
                column = column.cast(pa.string())
            table = table.set_column(table.column_names.index(k), k, column)
        return table

    served, labels = keyed(served), keyed(labels)
    return served.drop_columns([c for c in labels.column_names if c not in key and c in served.column_names]).join(labels, key, join_type="inner")


def _timestamp_keys(table: pa.Table) -> set[str]:
    return {f.name for f in table.schema if pa.types.is_timestamp(f.type)}


@dataclass
class Assessment:
    rows: int
    feature_psi: dict[str, float]
    drifted: dict[str, float]
    prediction_psi: float | None
    live: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)

    @property
    def breach(self) -> bool:
        return bool(self.reasons)


def assess(served: pa.Table, contract: dict[str, Any], reference_predictions: pa.ChunkedArray | None, task: str, cfg, live: dict[str, Any] | None = None) -> Assessment:
    """Compare served traffic with the reference and list every threshold it crosses. With
    fewer than `cfg.min_rows` rows the numbers are reported but nothing is a breach."""
    inputs = inputs_of(served)
    psi = {c: v for c, v in drift(inputs, contract).items() if inputs[c].length() - inputs[c].null_count >= MIN_VALUES_FOR_PSI}
    drifted = {c: v for c, v in sorted(psi.items(), key=lambda kv: -kv[1]) if v > cfg.drift_threshold}
    column = f"{PREDICTION_PREFIX}{prediction_column(task)}"
    pred_psi = prediction_psi(served[column], reference_predictions) if reference_predictions is not None and column in served.column_names else None
    result = Assessment(served.num_rows, psi, drifted, pred_psi, live)
    if served.num_rows < cfg.min_rows:
        return result
    if len(drifted) > cfg.max_drifted_columns:
        shown = ", ".join(f"{c} {v:.2f}" for c, v in list(drifted.items())[:5])
        result.reasons.append(f"{len(drifted)} column(s) drifted beyond PSI {cfg.drift_threshold} ({shown})")
    if pred_psi is not None and pred_psi > cfg.prediction_psi_threshold:
        result.reasons.append(f"prediction distribution drifted: PSI {pred_psi:.2f} above {cfg.prediction_psi_threshold}")
    if live and live["drop"] > cfg.max_metric_drop:
        result.reasons.append(f"live {live['metric']} {live['value']:.4f} is {live['drop']:.4f} below the champion's holdout {live['holdout']:.4f} (max drop {cfg.max_metric_drop})")
    return result


def trigger_decision(breach: bool, last_trigger: datetime | None, now: datetime, cooldown_hours: float) -> tuple[bool, str]:
    """Whether to start a retraining now, and why (not)."""
    if not breach:
        return False, "no threshold crossed"
    if last_trigger is not None and now - last_trigger < timedelta(hours=cooldown_hours):
        return False, f"in cool-down: the last retraining started {last_trigger.isoformat(timespec='seconds')}, {cooldown_hours:g} h cool-down"
    return True, "thresholds crossed"


def window_start(now: datetime, window_hours: float, last_trigger: datetime | None) -> datetime:
    """Traffic counts from `window_hours` ago, but never from before the last trigger: the
    evidence that started one retraining cannot start another."""
    start = now - timedelta(hours=window_hours)
    return max(start, last_trigger) if last_trigger is not None else start


def live_metrics(joined: pa.Table, task: str, data, holdout: dict[str, Any], slices: list[str], min_rows: int) -> dict[str, Any] | None:
    """The promotion metric on served rows with ground truth, against the holdout's."""
    import pandas as pd

    from data2model.preprocess import derive_label
    from data2model.promotion import PRIMARY, score, truth

    if joined.num_rows == 0:
        return None
    labelled, _ = derive_label(joined, data)
    metric, higher = PRIMARY[task]
    y = truth(labelled, task, data.target)
    output = pd.DataFrame({name.removeprefix(PREDICTION_PREFIX): labelled[name].to_numpy(zero_copy_only=False) for name in labelled.column_names if name.startswith(PREDICTION_PREFIX)})
    scores = score(task, y, output, {c: labelled[c].to_numpy(zero_copy_only=False) for c in slices if c in labelled.column_names}, min_rows)
    reference = float(holdout[metric])
    drop = (reference - scores.overall) if higher else (scores.overall - reference)
    return {"metric": metric, "value": scores.overall, "holdout": reference, "drop": float(np.round(drop, 6)), "rows": labelled.num_rows, "slices": scores.slices}
