"""Scoring-request checks against a real MLflow signature: every malformed kind is refused with
the status and a message naming the problem, and good requests become correctly typed frames."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.types import ColSpec, Schema

from data2model.request_checks import RequestError, fields_of, request_frame

SCHEMA = Schema([
    ColSpec("long", "month"),
    ColSpec("double", "dep_delay_hint", required=False),
    ColSpec("string", "carrier"),
    ColSpec("double", "distance"),
    ColSpec("datetime", "time_hour"),
])
FIELDS = fields_of(SCHEMA)
JSON = "application/json"
ROW = {"month": 11, "dep_delay_hint": 3.5, "carrier": "UA", "distance": 1400.0, "time_hour": "2013-11-02T08:00:00Z"}


def body(doc) -> bytes:
    return json.dumps(doc).encode()


def refused(raw: bytes, content_type: str | None = JSON, max_rows: int = 100) -> RequestError:
    with pytest.raises(RequestError) as err:
        request_frame(raw, content_type, FIELDS, max_rows)
    return err.value


def test_records_become_a_typed_frame_in_schema_order():
    frame = request_frame(body({"dataframe_records": [ROW, {**ROW, "dep_delay_hint": None}]}), JSON, FIELDS, 100)
    assert list(frame.columns) == [f.name for f in FIELDS]
    assert frame["month"].dtype == "int64" and frame["distance"].dtype == "float64"
    assert pd.isna(frame["dep_delay_hint"][1])
    assert frame["time_hour"][0] == pd.Timestamp("2013-11-02 08:00:00")  # zone-naive UTC


def test_split_format_optional_field_left_out_and_integers_for_doubles_are_accepted():
    cols = ["month", "carrier", "distance", "time_hour"]
    frame = request_frame(body({"dataframe_split": {"columns": cols, "data": [[11, "UA", 1400, "2013-11-02 08:00"]]}}), JSON, FIELDS, 100)
    assert frame["distance"][0] == 1400.0 and pd.isna(frame["dep_delay_hint"][0])


def test_csv_body_with_header():
    csv = b"month,carrier,distance,time_hour\n11,UA,1400,2013-11-02 08:00:00\n12,9E,200.5,2013-12-01 09:00:00\n"
    frame = request_frame(csv, "text/csv", FIELDS, 100)
    assert frame["carrier"].tolist() == ["UA", "9E"] and frame["month"].tolist() == [11, 12]


def test_integral_float_in_integer_field_is_accepted():
    frame = request_frame(body({"dataframe_records": [{**ROW, "month": 9.0}]}), JSON, FIELDS, 100)
    assert frame["month"][0] == 9


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "words"),
    [
        (b"{not json", JSON, 400, ["not valid JSON"]),
        (b"", JSON, 400, ["empty"]),
        (body({"rows": [ROW]}), JSON, 400, ["exactly one of", "dataframe_split"]),
        (body([ROW]), JSON, 400, ["exactly one of", "list"]),
        (body({"dataframe_records": [{k: v for k, v in ROW.items() if k != "carrier"}]}), JSON, 400, ["'carrier'", "missing"]),
        (body({"dataframe_records": [{**ROW, "seat": "12A"}]}), JSON, 400, ["unexpected field", "'seat'"]),
        (body({"dataframe_records": [{**ROW, "month": 9.5}]}), JSON, 400, ["'month'", "integer", "9.5"]),
        (body({"dataframe_records": [{**ROW, "month": "nine"}]}), JSON, 400, ["'month'", "integer"]),
        (body({"dataframe_records": [{**ROW, "distance": "far"}]}), JSON, 400, ["'distance'", "number"]),
        (body({"dataframe_records": [{**ROW, "carrier": 7}]}), JSON, 400, ["'carrier'", "string"]),
        (body({"dataframe_records": [{**ROW, "carrier": None}]}), JSON, 400, ["'carrier'", "null"]),
        (b'{"dataframe_records": [{"month": 11, "carrier": "UA", "distance": NaN, "time_hour": "2013-11-02"}]}', JSON, 400, ["'distance'", "NaN"]),
        (body({"dataframe_records": [{**ROW, "distance": True}]}), JSON, 400, ["'distance'", "number"]),
        (b'{"dataframe_records": [{"month": 11, "carrier": "UA", "distance": Infinity, "time_hour": "2013-11-02"}]}', JSON, 400, ["'distance'", "finite"]),
        (body({"dataframe_records": [{**ROW, "dep_delay_hint": True}]}), JSON, 400, ["'dep_delay_hint'", "number"]),
        (body({"dataframe_records": [{**ROW, "time_hour": "yesterday"}]}), JSON, 400, ["'time_hour'", "timestamp"]),
        (body({"dataframe_records": []}), JSON, 400, ["no rows"]),
        (body({"dataframe_split": {"columns": ["month", "carrier"], "data": [[1]]}}), JSON, 400, ["row 0", "1 values for 2 columns"]),
        (body({"dataframe_records": [ROW] * 101}), JSON, 413, ["101 rows", "max_rows=100"]),
        (body({"dataframe_records": [ROW]}), None, 415, ["Content-Type"]),
        (body({"dataframe_records": [ROW]}), "text/plain", 415, ["text/plain"]),
        (body({"dataframe_records": [ROW]}), "application/json; charset=latin-1", 415, ["UTF-8"]),
        (b"month,carrier\nx,UA\n", "text/csv", 400, ["CSV"]),
    ],
)
def test_malformed_requests_are_refused_with_status_and_a_message_naming_the_problem(raw, content_type, status, words):
    err = refused(raw, content_type)
    assert err.status == status, err.message
    for word in words:
        assert word in err.message, err.message


def test_several_bad_values_are_listed_and_the_list_is_capped():
    rows = [{**ROW, "month": 0.5 + i} for i in range(20)]
    message = refused(body({"dataframe_records": rows})).message
    assert message.count("field 'month'") == 5 and message.endswith("(and more)")
