"""data2model.tables: what a Parquet footer tells (schema, rows, nulls) and the first rows,
checked against reading the whole file."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data2model.errors import DataError
from data2model.tables import read_footer, read_head


def _table(n: int = 1000) -> pa.Table:
    rng = np.random.default_rng(0)
    gaps = rng.random(n) < 0.1
    return pa.table({
        "count": pa.array([None if g else int(i) for i, g in enumerate(gaps)], pa.int32()),
        "name": pa.array([None if i % 7 == 0 else f"n{i}" for i in range(n)]),
        "value": pa.array(np.where(rng.random(n) < 0.2, np.nan, rng.random(n))),  # NaN is not null
        "at": pa.array([None if i % 13 == 0 else dt.datetime(2013, 1, 1) + dt.timedelta(hours=i) for i in range(n)], pa.timestamp("s", tz="UTC")),
        "tags": pa.array([None if i % 5 == 0 else [i] for i in range(n)], pa.list_(pa.int64())),  # nested: counted by reading
        "full": pa.array(range(n), pa.int64()),
    })


@pytest.mark.parametrize("statistics", [True, False], ids=["footer statistics", "written without statistics"])
def test_footer_nulls_equal_a_full_read(tmp_path, statistics):
    table = _table()
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=128, write_statistics=statistics)  # 8 row groups
    footer = read_footer(path)
    assert footer.rows == table.num_rows and footer.schema == pq.read_schema(path)
    assert footer.nulls == {name: table[name].null_count for name in table.column_names}
    assert 0 < footer.nulls["count"] < table.num_rows and footer.nulls["value"] == 0 and footer.nulls["full"] == 0
    some = read_footer(path, columns=["full", "name"])
    assert some.schema.names == ["full", "name"] and some.nulls == {"full": 0, "name": table["name"].null_count}


def test_footer_of_a_missing_file_or_column_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_footer(tmp_path / "none.parquet")
    pq.write_table(_table(10), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="has no column 'nope'"):
        read_footer(tmp_path / "t.parquet", columns=["full", "nope"])


def test_head_is_the_first_rows_in_the_columns_asked(tmp_path):
    table = _table()
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)
    head = read_head(tmp_path / "t.parquet", 5, ["name", "count"])
    assert head.equals(table.select(["name", "count"]).slice(0, 5))
    pq.write_table(table.slice(0, 0), tmp_path / "empty.parquet")
    empty = read_head(tmp_path / "empty.parquet", 5)
    assert empty.num_rows == 0 and empty.schema.names == table.column_names
