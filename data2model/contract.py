"""The data contract: a profile of the first accepted data plus the rules declared in params.

`profile` writes down what the data looked like; `row_rules` are its per-row checks (shared by
the suite and by quarantine); `expectations` turns that profile and the declared `validate`
section into great-expectations checks; `contract_diff` says what a re-profile changes; `describe_failure` turns a failed
check back into one line a person can act on. No file I/O here: the stage edge does it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data2model.drift import category_reference, numeric_reference
from data2model.params import Validate

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

MAX_CATEGORIES = 50
SAMPLES = 5

# Integer and boolean columns with nulls become pandas nullable dtypes, so a null does not turn
# int64 into float64 (which would fail the type check the moment a null appears).
_NULLABLE = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}
_PANDAS_TYPE = {
    "halffloat": "float16",
    "float": "float32",
    "double": "float64",
    "bool": "bool",
    "string": "str",
    "large_string": "str",
    "string_view": "str",
}


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """The frame great-expectations checks: `str` strings, datetime timestamps, int64 stays int64.

    Columns without nulls stay numpy: GE's range check is vectorised only for numpy dtypes
    (nullable ones take a per-value Python path, ~2x slower on the flights table).
    """
    return pd.DataFrame(
        {name: column.to_pandas(types_mapper=_NULLABLE.get if column.null_count else None) for name, column in zip(table.column_names, table.columns)}
    )


def pandas_type_name(arrow_type: str) -> str:
    """The dtype name ExpectColumnValuesToBeOfType observes for an Arrow type after `to_pandas`."""
    if arrow_type.startswith(("int", "uint")):
        return arrow_type
    if arrow_type.startswith("timestamp"):
        return "Timestamp" if "tz=" in arrow_type else "datetime64"
    return _PANDAS_TYPE.get(arrow_type, "object")


def _is_string(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type)


def _profile_column(column: pa.ChunkedArray, rows: int) -> dict[str, Any]:
    nulls = pc.sum(pc.is_null(column, nan_is_null=True)).as_py() or 0
    out: dict[str, Any] = {"type": str(column.type), "null_fraction": round(nulls / rows, 6) if rows else 0.0}
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        low, high = (v.as_py() for v in pc.min_max(column).values())
        if low is not None and math.isfinite(low) and math.isfinite(high):
            out["min"], out["max"] = low, high
        out |= numeric_reference(column)
    elif pa.types.is_timestamp(column.type):
        low, high = (v.as_py() for v in pc.min_max(column).values())
        if low is not None:
            out["min"], out["max"] = low.isoformat(), high.isoformat()
    elif _is_string(column.type):
        if pc.count_distinct(column).as_py() <= MAX_CATEGORIES:
            out["categories"] = sorted(pc.unique(column.drop_null()).to_pylist())
        out |= category_reference(column)
    return out


def profile(table: pa.Table) -> dict[str, Any]:
    """What the accepted data looks like, as plain JSON-able values that do not depend on row order.

    Numeric ranges, timestamp periods, category sets and null rates become checks; the bin and
    value shares are the reference distribution drift is measured against.
    """
    return {
        "rows": table.num_rows,
        "columns": {name: _profile_column(table[name], table.num_rows) for name in table.column_names},
    }


def row_bounds(contract: dict[str, Any], declared: Validate) -> tuple[int, int]:
    """Half to twice the profiled row count; a bound set in params replaces the profiled one."""
    rows = contract["rows"]
    low = declared.min_rows if "min_rows" in declared.model_fields_set else rows // 2
    high = declared.max_rows if declared.max_rows is not None else rows * 2
    return low, high


def value_bounds(spec: dict[str, Any], declared: tuple[float | None, float | None], margin: float) -> tuple[Any, Any]:
    """The profiled range (numbers, or a timestamp period) widened by `margin` of its span; a
    declared bound replaces its side."""
    low = high = None
    if "min" in spec:
        lo, hi = spec["min"], spec["max"]
        if isinstance(lo, str):
            lo, hi = dt.datetime.fromisoformat(lo), dt.datetime.fromisoformat(hi)
        pad = margin * (hi - lo)
        low, high = lo - pad, hi + pad
    return (low if declared[0] is None else declared[0]), (high if declared[1] is None else declared[1])


@dataclass(frozen=True)
class RowRule:
    """A check each row passes or fails on its own: what quarantine sets rows aside for."""

    check: str  # nulls | range | categories
    column: str
    low: Any = None
    high: Any = None
    allowed: tuple[str, ...] = ()

    def reason(self) -> str:
        match self.check:
            case "nulls":
                return f"{self.column}: null in a required column"
            case "range":
                return f"{self.column}: outside [{_bound(self.low, '-inf')}, {_bound(self.high, 'inf')}]"
        return f"{self.column}: not in the allowed set"


def column_rules(column: str, spec: dict[str, Any] | None, declared: Validate) -> list[RowRule]:
    """The row-level rules on one column: required means no nulls, then its range and its set."""
    rules = [RowRule("nulls", column)] if column in declared.required else []
    low, high = value_bounds(spec or {}, declared.ranges.get(column, (None, None)), declared.range_margin)
    if low is not None or high is not None:
        rules.append(RowRule("range", column, low=low, high=high))
    allowed = declared.categories[column] if column in declared.categories else (spec or {}).get("categories")
    if allowed is not None:
        rules.append(RowRule("categories", column, allowed=tuple(sorted(allowed))))
    return rules


def checked_columns(contract: dict[str, Any], declared: Validate, target: str, present: Iterable[str]) -> list[str]:
    """The columns that get column-level checks: profiled or declared, and in the batch."""
    return sorted((set(contract["columns"]) | set(declared_columns(declared, target))) & set(present))


def row_rules(contract: dict[str, Any], declared: Validate, target: str, present: Iterable[str]) -> list[RowRule]:
    return [r for c in checked_columns(contract, declared, target, present) for r in column_rules(c, contract["columns"].get(c), declared)]


def declared_columns(declared: Validate, target: str) -> list[str]:
    """Every column params names: each must exist, whatever the profile says."""
    named = [*declared.required, target, *declared.ranges, *declared.categories]
    named += [c for combo in declared.unique for c in combo]
    return sorted(set(named))


def expectations(contract: dict[str, Any], declared: Validate, target: str, present: Iterable[str]) -> list[Expectation]:
    """The suite for one batch, in a stable order.

    Column-level checks are built only for columns the batch has: a missing column is reported
    once, by the existence and column-set checks, not once per check that needs it.
    """
    import great_expectations.expectations as gxe

    present = set(present)
    profiled = contract["columns"]
    low, high = row_bounds(contract, declared)
    suite: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=sorted(profiled), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=high),
    ]
    suite += [gxe.ExpectColumnToExist(column=c) for c in declared_columns(declared, target)]
    for column in checked_columns(contract, declared, target, present):
        suite += _column_expectations(column, profiled.get(column), declared)
    if target in present:
        suite.append(gxe.ExpectColumnUniqueValueCountToBeBetween(column=target, min_value=2))
    suite += [_unique(combo) for combo in declared.unique if set(combo) <= present]
    return suite


def _column_expectations(column: str, spec: dict[str, Any] | None, declared: Validate) -> list[Expectation]:
    import great_expectations.expectations as gxe

    out: list[Expectation] = []
    if spec is not None:
        out.append(gxe.ExpectColumnValuesToBeOfType(column=column, type_=pandas_type_name(spec["type"])))
    mostly = round(1 - spec["null_fraction"] - declared.null_margin, 6) if spec is not None else 0
    if column not in declared.required and mostly > 0:
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly))
    for rule in column_rules(column, spec, declared):
        match rule.check:
            case "nulls":
                out.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
            case "range":
                out.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=rule.low, max_value=rule.high))
            case "categories":
                out.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(rule.allowed)))
    return out


def _unique(combo: list[str]) -> Expectation:
    import great_expectations.expectations as gxe

    if len(combo) == 1:
        return gxe.ExpectColumnValuesToBeUnique(column=combo[0])
    return gxe.ExpectCompoundColumnsToBeUnique(column_list=list(combo))


def plain(value: Any) -> Any:
    """A JSON value for what GE reports (numpy scalars, pd.NA, timestamps, row dicts)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _raised(exception_info: dict[str, Any] | None) -> str | None:
    """GE puts one error at the top level, or one per metric keyed by metric id."""
    if not exception_info:
        return None
    if "raised_exception" in exception_info:
        infos = [exception_info]
    else:
        infos = [v for v in exception_info.values() if isinstance(v, dict)]
    messages = sorted({str(i.get("exception_message")) for i in infos if i.get("raised_exception")})
    return "; ".join(messages) or None


def _bound(value: Any, unbounded: str) -> str:
    if value is None:
        return unbounded
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value if isinstance(value, str) else f"{value:g}"


# validate.severity names checks; this is the check each expectation type belongs to.
CHECK_OF = {
    "expect_table_columns_to_match_set": "columns",
    "expect_table_row_count_to_be_between": "row_count",
    "expect_column_to_exist": "exists",
    "expect_column_values_to_be_of_type": "type",
    "expect_column_values_to_not_be_null": "nulls",
    "expect_column_values_to_be_between": "range",
    "expect_column_values_to_be_in_set": "categories",
    "expect_column_values_to_be_unique": "unique",
    "expect_compound_columns_to_be_unique": "unique",
    "expect_column_unique_value_count_to_be_between": "target_classes",
}


def describe_failure(kind: str, kwargs: dict[str, Any], result: dict[str, Any], exception_info: dict[str, Any] | None) -> dict[str, Any]:
    """One failed expectation as {check, expectation, column, observed, sample_values, message}."""
    column = kwargs.get("column") or (",".join(kwargs["column_list"]) if "column_list" in kwargs else None)
    observed = plain(result.get("observed_value", result.get("unexpected_count")))
    samples = plain(result.get("partial_unexpected_list") or [])[:SAMPLES]
    error = _raised(exception_info)
    if error is not None:
        message = f"{kind} could not be evaluated: {error}"
    else:
        message = _message(kind, kwargs, result, observed)
    if kind in ("expect_table_columns_to_match_set", "expect_column_values_to_not_be_null"):
        samples = []
    return {"check": CHECK_OF[kind], "expectation": kind, "column": column, "observed": observed, "sample_values": samples, "message": message}


def _message(kind: str, kwargs: dict[str, Any], result: dict[str, Any], observed: Any) -> str:
    count, percent = result.get("unexpected_count"), result.get("unexpected_percent") or 0.0
    match kind:
        case "expect_table_columns_to_match_set":
            mismatched = result.get("details", {}).get("mismatched", {})
            parts = [f"{k} {sorted(mismatched[k])}" for k in ("missing", "unexpected") if mismatched.get(k)]
            return f"columns differ from the contract: {', '.join(parts)}"
        case "expect_table_row_count_to_be_between":
            return f"expected between {kwargs['min_value']} and {kwargs['max_value']} rows, got {observed}"
        case "expect_column_to_exist":
            return "column is missing"
        case "expect_column_values_to_be_of_type":
            return f"expected type {kwargs['type_']}, got {observed}"
        case "expect_column_values_to_not_be_null":
            allowed = "no nulls allowed" if kwargs.get("mostly", 1) >= 1 else f"at most {100 * (1 - kwargs['mostly']):.2f}% nulls allowed"
            return f"{allowed}, got {count} nulls ({percent:.2f}%)"
        case "expect_column_values_to_be_between":
            return f"{count} values ({percent:.2f}%) outside [{_bound(kwargs.get('min_value'), '-inf')}, {_bound(kwargs.get('max_value'), 'inf')}]"
        case "expect_column_values_to_be_in_set":
            return f"{count} values ({percent:.2f}%) outside the allowed set {kwargs['value_set']}"
        case "expect_column_unique_value_count_to_be_between":
            return f"the target has {observed} distinct value(s): a model needs at least 2"
        case "expect_column_values_to_be_unique" | "expect_compound_columns_to_be_unique":
            return f"{count} rows ({percent:.2f}%) share a key that must be unique"
    return f"failed, observed {observed}"


def _lines(checks: list[dict[str, Any]]) -> list[str]:
    lines = []
    for f in checks:
        samples = f", e.g. {f['sample_values']}" if f["sample_values"] else ""
        lines.append(f"  - {f['column'] or 'table'}: {f['message']}{samples}")
    return lines


def failure_summary(failed: list[dict[str, Any]], warnings: list[dict[str, Any]], docs: str) -> str:
    """The human report of a batch: one line per blocking check, then the warnings, then the docs."""
    lines = [f"data contract failed ({len(failed)} checks):", *_lines(failed)] if failed else ["data contract passed"]
    if warnings:
        lines += [f"warnings ({len(warnings)}, not blocking):", *_lines(warnings)]
    lines.append(f"Data Docs: {docs}")
    return "\n".join(lines)


def _span(spec: dict[str, Any]) -> str:
    return f"[{_bound(spec.get('min'), '?')}, {_bound(spec.get('max'), '?')}]"


def contract_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What a re-profiled contract changes, one line each: rows, columns, types, ranges, categories."""
    lines = [f"rows: {old['rows']} -> {new['rows']}"] if old["rows"] != new["rows"] else []
    before, after = old["columns"], new["columns"]
    lines += [f"column added: {c} ({after[c]['type']})" for c in sorted(set(after) - set(before))]
    lines += [f"column removed: {c}" for c in sorted(set(before) - set(after))]
    for c in sorted(set(before) & set(after)):
        was, now = before[c], after[c]
        if was["type"] != now["type"]:
            lines.append(f"{c}: type {was['type']} -> {now['type']}")
        if (was.get("min"), was.get("max")) != (now.get("min"), now.get("max")):
            lines.append(f"{c}: range {_span(was)} -> {_span(now)}")
        if was.get("categories") != now.get("categories"):
            gained = sorted(set(now.get("categories") or []) - set(was.get("categories") or []))
            lost = sorted(set(was.get("categories") or []) - set(now.get("categories") or []))
            lines.append(f"{c}: categories +{gained} -{lost}")
        if not ({"bin_shares", "value_shares"} & set(was)) and {"bin_shares", "value_shares"} & set(now):
            lines.append(f"{c}: reference distribution for drift recorded")
        if abs(was["null_fraction"] - now["null_fraction"]) >= 0.001:
            lines.append(f"{c}: null fraction {was['null_fraction']:.4f} -> {now['null_fraction']:.4f}")
    return lines
