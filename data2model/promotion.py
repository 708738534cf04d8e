"""Champion / challenger: score both on the same raw holdout, decide by the `register` rules, and
move the `champion` alias with an audit trail in version tags.

The scoring and the decision are pure; the registry functions take an MlflowClient.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from data2model.errors import CanaryFailed, D2MError, DataError
from data2model.params import Register
from data2model.preprocess import LABEL, as_utc_naive

CHAMPION = "champion"
CALIBRATION_BINS = 10
# task -> (primary metric, higher is better)
PRIMARY = {"binary": ("auc", True), "multiclass": ("accuracy", True), "regression": ("rmse", False)}
PREVIOUS_TAG = "previous_champion"


# --- scoring (pure) -------------------------------------------------------------------------


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Row-weighted mean |fraction positive - mean probability| over equal-width bins."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    gaps = [abs(y[which == b].mean() - p[which == b].mean()) * (which == b).sum() for b in range(bins) if (which == b).any()]
    return float(sum(gaps) / len(y))


def truth(holdout: pa.Table, task: str, target: str) -> np.ndarray:
    """What predictions are compared with: the label (binary, regression) or the class value."""
    if task == "multiclass":
        return holdout[target].cast(pa.string()).to_numpy(zero_copy_only=False)
    return holdout[LABEL].to_numpy()


def primary_score(task: str, y: np.ndarray, output: pd.DataFrame) -> float:
    if task == "binary":
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y, output["probability"].to_numpy())) if len(np.unique(y)) == 2 else float("nan")
    if task == "multiclass":
        return float(np.mean(output["prediction"].astype(str).to_numpy() == y))
    return float(np.sqrt(np.mean((output["prediction"].to_numpy() - y) ** 2)))


@dataclass
class Scores:
    """One model on one holdout: the primary metric overall and per slice, and (binary) ECE."""

    overall: float
    slices: dict[str, tuple[float, int]] = field(default_factory=dict)  # "carrier=UA" -> (metric, rows)
    ece: float | None = None


def score(task: str, y: np.ndarray, output: pd.DataFrame, slices: dict[str, np.ndarray], min_rows: int) -> Scores:
    """`slices` maps a column name to its holdout values; values with fewer than `min_rows` rows are left out."""
    per_slice = {}
    for column, values in slices.items():
        names, which, counts = np.unique(values.astype(str), return_inverse=True, return_counts=True)
        for index, (name, count) in enumerate(zip(names, counts)):
            if count >= min_rows:
                mask = which == index
                per_slice[f"{column}={name}"] = (primary_score(task, y[mask], output[mask]), int(count))
    ece = expected_calibration_error(y, output["probability"].to_numpy()) if task == "binary" else None
    return Scores(primary_score(task, y, output), per_slice, ece)


# --- the decision (pure) --------------------------------------------------------------------


@dataclass
class Decision:
    promote: bool
    reason: str
    metric: str
    table: list[dict[str, Any]]  # scope, rows, champion, challenger, change (+ is better)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(scope: str, rows: int | None, champion: float, challenger: float, sign: int) -> dict[str, Any]:
    change = (challenger - champion) * sign
    return {"scope": scope, "rows": rows, "champion": round(champion, 6), "challenger": round(challenger, 6), "change": round(change, 6)}


def decide(task: str, champion: Scores, challenger: Scores, rules: Register) -> Decision:
    """Promote only if the primary metric is at least as good within `tolerance`, no slice (with
    a value for both models) drops by more than `max_slice_drop`, and (binary) the challenger's
    ECE is at most `max_ece`. The reason lists every rule that failed."""
    metric, higher = PRIMARY[task]
    sign = 1 if higher else -1
    overall = _row("overall", None, champion.overall, challenger.overall, sign)
    table = [overall]
    failures = []
    if not overall["change"] >= -rules.tolerance:
        failures.append(f"{metric} {challenger.overall:.4f} vs champion {champion.overall:.4f} is worse by more than tolerance {rules.tolerance}")
    for scope in sorted(set(champion.slices) & set(challenger.slices)):
        (old, rows), (new, _) = champion.slices[scope], challenger.slices[scope]
        if np.isnan(old) or np.isnan(new):
            continue
        row = _row(scope, rows, old, new, sign)
        table.append(row)
        if row["change"] < -rules.max_slice_drop:
            failures.append(f"slice {scope}: {metric} {new:.4f} vs {old:.4f} drops by more than {rules.max_slice_drop}")
    if challenger.ece is not None:
        table.append(_row("ece", None, champion.ece if champion.ece is not None else float("nan"), challenger.ece, -1))
        if challenger.ece > rules.max_ece:
            failures.append(f"calibration error {challenger.ece:.4f} is above max_ece {rules.max_ece}")
    if failures:
        return Decision(False, "; ".join(failures), metric, table)
    passed = f"{metric} {challenger.overall:.4f} vs champion {champion.overall:.4f} (tolerance {rules.tolerance}); no slice drops more than {rules.max_slice_drop}"
    if challenger.ece is not None:
        passed += f"; ECE {challenger.ece:.4f} <= {rules.max_ece}"
    return Decision(True, passed, metric, table)


def model_frame(table: pa.Table, schema) -> pd.DataFrame:
    """Holdout rows as a client would send them to a model with this MLflow input schema (a
    model logged without one gets every raw column; its preprocessing picks its own)."""
    cast = {"double": pa.float64(), "float": pa.float32(), "long": pa.int64(), "integer": pa.int32()}
    kinds = {s.name: s.type.name for s in schema.inputs} if schema is not None else {n: None for n in table.column_names if n != LABEL}
    columns = {}
    for name, kind in kinds.items():
        column = table[name]
        try:
            if kind == "datetime" or pa.types.is_timestamp(column.type):
                column = as_utc_naive(column, name).cast(pa.timestamp("us"))
            elif kind in cast:
                column = column.cast(cast[kind])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise DataError(f"column {name} ({column.type}) does not fit the model's {kind} field: {err}") from None
        columns[name] = column
    return pa.table(columns).to_pandas()


# --- the registry (I/O) ---------------------------------------------------------------------


def alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def current_champion(client, name: str) -> str | None:
    return alias_version(client, name, CHAMPION)


def move_champion(client, name: str, version: str | int, action: str, reason: str, check: Callable[[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Point `champion` at `version`, recording when, what, why and the previous champion in a
    version tag. `check` (the canary) runs first: if it raises, the event is recorded as
    "blocked" and nothing moves. The tag is written "pending" first; the alias moves in one
    registry call, so a failure before it leaves the old champion in place; then the tag is
    marked "done"."""
    from mlflow.exceptions import MlflowException

    version = str(version)
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise D2MError(f"{name} has no version {version}") from None
    previous = current_champion(client, name)
    if previous == version:
        raise D2MError(f"version {version} of {name} is already the champion")
    at = datetime.now(timezone.utc)
    key = f"audit.{at.strftime('%Y%m%dT%H%M%S.%fZ')}.{action}"
    event = {"action": action, "at": at.isoformat(), "version": version, "previous_champion": previous, "reason": reason, "status": "pending"}
    if check is not None:
        try:
            event["canary"] = check(name, version)
        except D2MError as err:
            client.set_model_version_tag(name, version, key, json.dumps({**event, "status": "blocked", "canary": {"passed": False, "reason": str(err)}}))
            raise CanaryFailed(f"version {version} of {name} not promoted, champion stays {previous or '-'}: canary failed: {err}") from None
    client.set_model_version_tag(name, version, key, json.dumps(event))
    if action != "rollback" and previous is not None:
        client.set_model_version_tag(name, version, PREVIOUS_TAG, previous)
    client.set_registered_model_alias(name, CHAMPION, version)
    event["status"] = "done"
    client.set_model_version_tag(name, version, key, json.dumps(event))
    return event


def rollback(client, name: str, reason: str) -> dict[str, Any]:
    """`champion` back to the version it replaced (that version keeps its own predecessor, so
    repeated rollbacks walk further back)."""
    current = current_champion(client, name)
    if current is None:
        raise D2MError(f"{name} has no champion to roll back")
    previous = client.get_model_version(name, current).tags.get(PREVIOUS_TAG)
    if not previous:
        raise D2MError(f"champion version {current} of {name} records no previous champion")
    return move_champion(client, name, previous, "rollback", reason)


def audit_trail(client, name: str, version: str | int) -> list[dict[str, Any]]:
    """The version's promotion events, oldest first."""
    tags = client.get_model_version(name, str(version)).tags
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith("audit."))]
