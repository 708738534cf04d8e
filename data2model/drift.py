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
    values = column.drop_null().to_numpy().astype(np.float64, copy=False)
    return values[np.isfinite(values)]


def _shares(counts: np.ndarray) -> list[float]:
    total = int(counts.sum())
    return [round(float(c) / total, 6) if total else 0.0 for c in counts]


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts per bin; bin i holds values in [edges[i-1], edges[i]) (open at both ends)."""
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right"), minlength=len(edges) + 1)


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


def column_psi(column: pa.ChunkedArray, spec: dict[str, Any]) -> float | None:
    """PSI of `column` against its profiled reference; None when there is nothing to compare."""
    if "bin_edges" in spec and (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        values = _numbers(column)
        return psi(spec["bin_shares"], _shares(bin_counts(values, spec["bin_edges"]))) if len(values) else None
    if "value_shares" in spec and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        counts = _value_counts(column)
        total = sum(counts.values())
        if not total:
            return None
        known = spec["value_shares"]
        seen = {v: counts.get(v, 0) / total for v in known if v != OTHER}
        seen[OTHER] = 1 - sum(seen.values())
        return psi([known.get(v, 0.0) for v in seen], list(seen.values()))
    return None


def drift(table: pa.Table, contract: dict[str, Any]) -> dict[str, float]:
    """PSI per profiled column the batch has, in column-name order."""
    out = {}
    for name in sorted(set(contract["columns"]) & set(table.column_names)):
        value = column_psi(table[name], contract["columns"][name])
        if value is not None:
            out[name] = value
    return out
