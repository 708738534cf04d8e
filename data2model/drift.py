"""Drift between the accepted reference and a new batch: per-column PSI, in numpy.

The reference distribution is part of the profiled contract: decile edges and the share of
values per bin for numeric columns, the share of each frequent value for string columns. A new
batch is binned the same way, so PSI needs one pass over each column and no reference data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

QUANTILES = np.linspace(0.1, 0.9, 9)
TOP_VALUES = 50
OTHER = "__other__"
EPSILON = 1e-4  # floor on a bin's share, so an empty bin gives a large but finite PSI


def _numbers(column: pa.ChunkedArray) -> np.ndarray:
    """The column's values as numpy, nulls (and for floats NaN and infinities) left out; integers
    stay integers (`bin_counts` counts them faster)."""
    values = column.drop_null().to_numpy()
    if values.dtype.kind in "iu":
        return values
    values = values.astype(np.float64, copy=False)
    return values[np.isfinite(values)]


def _shares(counts: np.ndarray) -> list[float]:
    total = int(counts.sum())
    return [round(float(c) / total, 6) if total else 0.0 for c in counts]


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts per bin; bin i holds values in [edges[i-1], edges[i]) (open at both ends).

    Integers spanning fewer distinct values than there are values (flights: times, delays,
    distances, seats) are counted per value first and each value is then placed once: the same
    counts as a binary search per value, 8x faster on 65,536 values spanning 8,500."""
    edges = np.asarray(edges, dtype=np.float64)
    if values.dtype.kind in "iu" and len(values):
        low, high = int(values.min()), int(values.max())
        if high - low < len(values):
            wide = np.uint64 if values.dtype.kind == "u" else np.int64
            per_value = np.bincount((values.astype(wide, copy=False) - wide(low)).astype(np.intp, copy=False))
            bins = np.searchsorted(edges, np.arange(low, high + 1).astype(np.float64), side="right")
            return np.bincount(bins, weights=per_value, minlength=len(edges) + 1).astype(np.int64)
    return np.bincount(np.searchsorted(edges, values.astype(np.float64, copy=False), side="right"), minlength=len(edges) + 1)


def numeric_reference(column: pa.ChunkedArray) -> dict[str, Any]:
    """Decile edges (distinct ones only: a constant column has one bin) and each bin's share."""
    values = _numbers(column)
    if not len(values):
        return {}
    edges = [float(e) for e in np.unique(np.quantile(values, QUANTILES))]
    return {"bin_edges": edges, "bin_shares": _shares(bin_counts(values, edges))}


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null())
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def category_reference(column: pa.ChunkedArray) -> dict[str, Any]:
    """The share of the most frequent values; the rest share one `__other__` bucket."""
    counts = _value_counts(column)
    total = sum(counts.values())
    if not total:
        return {}
    top = sorted(counts, key=lambda v: (-counts[v], v))[:TOP_VALUES]
    other = total - sum(counts[v] for v in top)
    shares = {v: round(counts[v] / total, 6) for v in top}
    if other:
        shares[OTHER] = round(other / total, 6)
    return {"value_shares": shares}


def psi(reference: list[float], observed: list[float]) -> float:
    """Population stability index: sum of (o - r) * ln(o / r), both floored at EPSILON."""
    total = 0.0
    for r, o in zip(reference, observed):
        r, o = max(r, EPSILON), max(o, EPSILON)
        total += (o - r) * math.log(o / r)
    return round(total, 6)


def numeric_psi(spec: dict[str, Any], counts: np.ndarray) -> float | None:
    """PSI of per-bin counts (over `spec["bin_edges"]`) against the profiled bin shares."""
    return psi(spec["bin_shares"], _shares(counts)) if counts.sum() else None


def category_psi(spec: dict[str, Any], counts: dict[str, int], total: int) -> float | None:
    """PSI of value counts (`total` non-null values, `counts` for the profiled values) against
    the profiled value shares; unprofiled values share the `__other__` bucket."""
    if not total:
        return None
    known = spec["value_shares"]
    seen = {v: counts.get(v, 0) / total for v in known if v != OTHER}
    seen[OTHER] = 1 - sum(seen.values())
    return psi([known.get(v, 0.0) for v in seen], list(seen.values()))


def column_psi(column: pa.ChunkedArray, spec: dict[str, Any]) -> float | None:
    """PSI of `column` against its profiled reference; None when there is nothing to compare."""
    counts = DriftCounts({"columns": {"x": spec}}, pa.schema([("x", column.type)]))
    counts.add(pa.table({"x": column}))
    return counts.psi().get("x")


class DriftCounts:
    """Bin and value counts per profiled column, added batch by batch: PSI over every row while
    holding one batch plus the counts (one per bin of a numeric column, one per profiled value of
    a string column)."""

    def __init__(self, contract: dict[str, Any], schema: pa.Schema) -> None:
        self.contract = contract
        self.numeric: dict[str, np.ndarray] = {}
        self.categories: dict[str, dict[str, int]] = {}
        self.totals: dict[str, int] = {}
        for name in sorted(set(contract["columns"]) & set(schema.names)):
            spec, kind = contract["columns"][name], schema.field(name).type
            if "bin_edges" in spec and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                self.numeric[name] = np.zeros(len(spec["bin_edges"]) + 1, dtype=np.int64)
            elif "value_shares" in spec and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                self.categories[name], self.totals[name] = {}, 0

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        for name, counts in self.numeric.items():
            counts += bin_counts(_numbers(batch.column(name)), self.contract["columns"][name]["bin_edges"])
        for name, counts in self.categories.items():
            profiled = self.contract["columns"][name]["value_shares"]
            for value, n in _value_counts(batch.column(name)).items():
                self.totals[name] += n
                if value in profiled:
                    counts[value] = counts.get(value, 0) + n

    def psi(self) -> dict[str, float]:
        """PSI per profiled column, in column-name order; columns with no values are left out."""
        out = {}
        for name in sorted([*self.numeric, *self.categories]):
            spec = self.contract["columns"][name]
            value = numeric_psi(spec, self.numeric[name]) if name in self.numeric else category_psi(spec, self.categories[name], self.totals[name])
            if value is not None:
                out[name] = value
        return out


def drift(table: pa.Table, contract: dict[str, Any]) -> dict[str, float]:
    """PSI per profiled column the batch has, in column-name order."""
    counts = DriftCounts(contract, table.schema)
    counts.add(table)
    return counts.psi()
