"""Exact checks over every row, accumulated one record batch at a time in pyarrow.

great-expectations checks a bounded sample (it builds the Data Docs and the familiar report);
these counts cover every row, so a violation the sample missed is still caught. They evaluate
the suite's own expectations (`contract.expectations`, whose row-level ones come from
`contract.row_rules`), so each rule is declared once. An expectation with no exact counterpart
here (column set, existence, type) depends only on the schema, which the sample shares.

Memory: one batch, per-column counters, the first few offending values, and for each declared
unique key an 8-byte hash per row (collisions: about n^2 / 2^65, 3e-5 at 34M rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data2model.contract import SAMPLES, RowRule, row_bounds
from data2model.errors import DataError
from data2model.params import Data, Validate
from data2model.preprocess import LABEL, derive_label
from data2model.quarantine import applies, may_break, rule_mask

# The expectation type that checks each row-level rule.
RULE_EXPECTATION = {
    "nulls": "expect_column_values_to_not_be_null",
    "range": "expect_column_values_to_be_between",
    "categories": "expect_column_values_to_be_in_set",
}


def _null_count(column: pa.Array) -> int:
    if pa.types.is_floating(column.type):
        return int(pc.sum(pc.is_null(column, nan_is_null=True)).as_py() or 0)
    return column.null_count


def _key_hashes(batch: pa.RecordBatch | pa.Table, key: list[str]) -> np.ndarray:
    """A 64-bit hash per row of `key`'s values, rows whose key is all null left out (as GE does)."""
    frame = batch.select(key).to_pandas()
    frame = frame[frame.notna().any(axis=1)]
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


class ExactCounts:
    """Row count, nulls per column, rows breaking each row rule (with the first offending
    values), key hashes, the target's distinct values (up to two) and the label's classes."""

    def __init__(self, rules: list[RowRule], schema: pa.Schema, declared: Validate, data: Data) -> None:
        self.rules = [r for r in rules if r.column in schema.names and applies(r, schema.field(r.column).type)]
        self.broken = {(r.check, r.column): 0 for r in self.rules}
        self.examples: dict[tuple[str, str], list[Any]] = {key: [] for key in self.broken}
        self.keys = {",".join(k): [] for k in declared.unique if set(k) <= set(schema.names)}
        self.data = data
        self.rows = 0
        self.nulls = dict.fromkeys(schema.names, 0)
        self.target: set[Any] = set()
        self.labels = np.zeros(2, dtype=np.int64)
        self.label_error = data.label_rule is None or data.target not in schema.names

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.rows += batch.num_rows
        for name in self.nulls:
            self.nulls[name] += _null_count(batch.column(name))
        for rule in self.rules:
            if not may_break(batch.column(rule.column), rule):
                continue
            mask = rule_mask(batch.column(rule.column), rule)
            count = int(mask.sum())
            if count:
                key = (rule.check, rule.column)
                self.broken[key] += count
                room = SAMPLES - len(self.examples[key])
                if room > 0:
                    self.examples[key] += batch.column(rule.column).filter(pa.array(mask)).slice(0, room).to_pylist()
        for name, hashes in self.keys.items():
            hashes.append(_key_hashes(batch, name.split(",")))
        if self.data.target in self.nulls and len(self.target) < 2:
            self.target |= set(pc.unique(batch.column(self.data.target).drop_null()).slice(0, 2).to_pylist())
        if not self.label_error:
            try:
                target = batch.select([self.data.target])  # the label needs no other column
                labelled, _ = derive_label(pa.Table.from_batches([target]) if isinstance(target, pa.RecordBatch) else target, self.data, ["0", "1"])
            except DataError:  # an unusable target is already a failed check of the suite
                self.label_error = True
                return
            self.labels += np.bincount(labelled[LABEL].to_numpy(), minlength=2)[:2]

    def duplicated(self, key: str) -> tuple[int, int]:
        """(rows whose key another row shares, rows with a key) for a declared unique key."""
        hashes = np.concatenate(self.keys[key]) if self.keys[key] else np.zeros(0, np.uint64)
        _, counts = np.unique(hashes, return_counts=True)
        return int(counts[counts > 1].sum()), len(hashes)

    def result(self, kind: str, kwargs: dict[str, Any], contract: dict[str, Any], declared: Validate) -> tuple[bool, dict[str, Any]] | None:
        """(success, a result as great-expectations words it) for one expectation of the suite,
        over every row added; None when it has no exact counterpart here."""
        column = kwargs.get("column")
        match kind:
            case "expect_table_row_count_to_be_between":
                low, high = row_bounds(contract, declared)
                return low <= self.rows <= high, {"observed_value": self.rows}
            case "expect_column_values_to_not_be_null" if column in self.nulls:
                nulls, mostly = self.nulls[column], kwargs.get("mostly")
                success = nulls == 0 if mostly is None else self.rows == 0 or (self.rows - nulls) / self.rows >= mostly
                return success, {"unexpected_count": nulls, "unexpected_percent": 100 * nulls / self.rows if self.rows else 0.0}
            case "expect_column_values_to_be_between" | "expect_column_values_to_be_in_set":
                check = "range" if kind == "expect_column_values_to_be_between" else "categories"
                if (check, column) not in self.broken:
                    return None
                count, present = self.broken[(check, column)], self.rows - self.nulls[column]
                percent = 100 * count / present if present else 0.0
                return count == 0, {"unexpected_count": count, "unexpected_percent": percent, "partial_unexpected_list": self.examples[(check, column)]}
            case "expect_column_values_to_be_unique" | "expect_compound_columns_to_be_unique":
                key = column or ",".join(kwargs["column_list"])
                if key not in self.keys:
                    return None
                count, present = self.duplicated(key)
                return count == 0, {"unexpected_count": count, "unexpected_percent": 100 * count / present if present else 0.0}
            case "expect_column_unique_value_count_to_be_between" if column == self.data.target and column in self.nulls:
                return len(self.target) >= kwargs.get("min_value", 0), {"observed_value": len(self.target)}
        return None

    def label_check(self) -> dict[str, Any] | None:
        """With a label rule the target can vary while the label does not (every delay <= 15):
        the derived label needs both classes too."""
        if self.label_error or not self.labels.sum() or self.labels.min() > 0:
            return None
        seen, rows = ("true" if self.labels[1] else "false"), int(self.labels.max())
        target, rule = self.data.target, self.data.label_rule
        return {
            "check": "target_classes", "expectation": "label_rule_gives_both_classes", "column": target,
            "observed": rows, "sample_values": [],
            "message": f"`{target} {rule}` is {seen} in all {rows} labelled rows: a model needs both classes",
        }
