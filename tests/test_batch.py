"""Batch scoring's reading and writing, with a plain function standing in for the model's
predict (the real model runs in tests/test_serving.py)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data2model.batch import VERSION_COLUMN, open_batches, score_batches, write_batches
from data2model.errors import DataError
from data2model.request_checks import Field

FIELDS = [Field("code", "string", True), Field("distance", "double", True), Field("note", "string", False)]


def doubled(table: pa.Table) -> pd.DataFrame:
    return pd.DataFrame({"prediction": table["distance"].to_numpy() * 2})


def test_csv_batches_keep_text_codes_as_text_and_score_every_row(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("code,distance\n0123,10\n0456,2.5\n0789,1\n")
    schema, batches = open_batches(source, FIELDS, batch_rows=2)
    assert schema.field("code").type == pa.string()
    out = tmp_path / "out.parquet"
    rows = write_batches(score_batches(doubled, "7", batches, FIELDS), out, lambda n: None)
    table = pq.read_table(out)
    assert rows == 3 == table.num_rows
    assert table["code"].to_pylist() == ["0123", "0456", "0789"]
    assert table["prediction"].to_pylist() == [20.0, 5.0, 2.0]
    assert table[VERSION_COLUMN].to_pylist() == ["7"] * 3


def test_a_failing_batch_leaves_no_output_or_temp_file(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"code": ["a", "b", "c"], "distance": [1.0, 2.0, 3.0]}), source)
    calls = []

    def fails_second_time(table):
        calls.append(1)
        if len(calls) == 2:
            raise DataError("the model refused a batch")
        return doubled(table)

    _, batches = open_batches(source, FIELDS, batch_rows=1)
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match="refused"):
        write_batches(score_batches(fails_second_time, "1", batches, FIELDS), out, lambda n: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("in.json", "{}", ["unsupported file type", ".json"]),
        ("missing.csv", None, ["does not exist"]),
        ("in.csv", "distance\n1\n", ["required column", "code"]),
    ],
)
def test_unusable_inputs_are_refused_naming_the_problem(tmp_path, name, content, words):
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    with pytest.raises(DataError) as err:
        open_batches(source, FIELDS, batch_rows=10)
    for word in words:
        assert word in str(err.value)


def test_an_empty_input_writes_nothing(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("code,distance\n")
    _, batches = open_batches(source, FIELDS, batch_rows=10)
    with pytest.raises(DataError, match="no rows"):
        write_batches(score_batches(doubled, "1", batches, FIELDS), tmp_path / "out.parquet", lambda n: None)
    assert not (tmp_path / "out.parquet").exists()
