"""validate: the great-expectations gate between ingest and features.

The contract is the profile of the first accepted data (paths.contract, committed to git)
plus the rules declared in params `validate`. A check of severity `error` that fails stops the
DAG with a report per failed check; a `warn` one is reported in validation.json and the log.
Per-column PSI against the profiled reference blocks above `validate.drift_threshold`. With
`on_row_failure: quarantine`, rows breaking a row-level rule go to paths.quarantine with their
reason and the rest continue. What passes is written to paths.validated, which features reads;
the Data Docs site under paths.data_docs shows every run.

paths.raw is read one record batch (`data.batch_rows`) at a time: exact counts over every row
in pyarrow, great-expectations on a seeded sample of at most `validate.gx_sample_rows` rows (the
whole table below it), so memory is bounded by the batch and the sample, not by the input.
great-expectations runs in a child process beside the exact pass (`GxProcess`), which reads the
sample from paths.raw itself.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data2model.contract import RowRule, describe_failure, expectations, failure_summary, profile, row_rules, to_pandas
from data2model.drift import DriftCounts
from data2model.errors import DataError, ValidationFailed
from data2model.exact import ExactCounts
from data2model.params import Data, Params, Validate
from data2model.quarantine import no_rows, split_rows
from data2model.stage import finish, main
from data2model.tables import atomic_path, parquet_file, parquet_writer, read_json, read_table, write_json

log = logging.getLogger("data2model.validate")

SITE = "data2model"
ROOT = Path(__file__).resolve().parents[1]  # the project: where the great-expectations process imports this module from


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one validation; `as_dict` is deterministic because DVC hashes it.

    `failed` holds the checks that block (severity error), `warnings` those only reported;
    `rows` were checked exactly, `gx_rows` of them (a sample, or all) by great-expectations.
    """

    success: bool
    rows: int
    evaluated_expectations: int
    failed: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    drift: dict[str, float]
    data_docs: str
    quarantine: dict[str, Any] | None = None
    gx_rows: int = 0
    page: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "rows": self.rows,
            "evaluated_expectations": self.evaluated_expectations,
            "failed": self.failed,
            "warnings": self.warnings,
            "drift": self.drift,
            "quarantine": self.quarantine,
            "data_docs": self.data_docs,
            "gx_rows": self.gx_rows,
        }

    def summary(self) -> str:
        return failure_summary(self.failed, self.warnings, self.page or self.data_docs)


def _context(data_docs_dir: Path) -> Any:
    """An in-memory GE context whose only Data Docs site is a static folder at `data_docs_dir`."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    site = {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={SITE: site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


SAMPLE_SEED = 0  # the great-expectations sample is the same rows for the same input


@dataclass(frozen=True)
class GxResult:
    """One expectation's outcome, as plain values (they cross from the great-expectations
    process to the stage's)."""

    type: str
    kwargs: dict[str, Any]
    success: bool
    result: dict[str, Any]
    exception_info: dict[str, Any] | None


@dataclass(frozen=True)
class GxOutcome:
    results: list[GxResult]  # in suite order
    evaluated: int
    page: str | None  # the run's Data Docs page
    rows: int  # rows great-expectations checked: the sample


def gx_sample(source: pa.Table | str | Path, limit: int, split_rules: list[RowRule]) -> pa.Table:
    """The rows great-expectations checks: a seeded uniform sample of at most `limit` rows of
    `source` (all of them below it), less those the blocking row rules set aside, so it is a
    uniform sample of the rows that continue. A Parquet file is read one row group at a time."""
    parquet = None if isinstance(source, pa.Table) else parquet_file(source)
    rows = source.num_rows if parquet is None else parquet.metadata.num_rows
    picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(rows, size=limit, replace=False)) if rows > limit else None
    if parquet is None:
        sample = source if picked is None else source.take(pa.array(picked))
    else:
        parts, start = [parquet.schema_arrow.empty_table()], 0
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if picked is None:
                parts.append(parquet.read_row_group(group))
            else:
                low, high = np.searchsorted(picked, [start, start + size])
                if high > low:
                    parts.append(parquet.read_row_group(group).take(pa.array(picked[low:high] - start)))
            start += size
        sample = pa.concat_tables(parts)
    return split_rows(sample, split_rules)[0] if split_rules else sample


class GxSuite:
    """great-expectations' side of one validation: context, suite and checkpoint, built before
    the rows are known (its import and this building are most of its fixed cost), then `run`
    once on the sample, which also builds the Data Docs page."""

    def __init__(self, contract: dict[str, Any], declared: Validate, target: str, columns: list[str], data_docs_dir: Path) -> None:
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction

        self.context = _context(data_docs_dir)
        batch = self.context.data_sources.add_pandas("raw").add_dataframe_asset("table").add_batch_definition_whole_dataframe("whole")
        self.suite = self.context.suites.add(gx.ExpectationSuite(name="contract", expectations=expectations(contract, declared, target, columns)))
        definition = self.context.validation_definitions.add(gx.ValidationDefinition(name="raw", data=batch, suite=self.suite))
        self.checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name="validate",
                validation_definitions=[definition],
                actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE])],
                result_format={"result_format": "BASIC"},  # what describe_failure reads; SUMMARY adds per-value counts and row indexes (~0.8 s more at 100,000 rows)
            )
        )

    def run(self, table: pa.Table) -> GxOutcome:
        outcome = self.checkpoint.run(batch_parameters={"dataframe": to_pandas(table)})
        [(key, result)] = outcome.run_results.items()
        position = {e.id: i for i, e in enumerate(self.suite.expectations)}
        pages = self.context.get_docs_sites_urls(resource_identifier=key, site_names=[SITE])
        ordered = sorted(result.results, key=lambda r: position[r.expectation_config.id])
        return GxOutcome(
            results=[GxResult(r.expectation_config.type, dict(r.expectation_config.kwargs), bool(r.success), dict(r.result), r.exception_info) for r in ordered],
            evaluated=result.statistics["evaluated_expectations"],
            page=pages[0]["site_url"] if pages else None,
            rows=table.num_rows,
        )


class GxProcess:
    """Great-expectations beside the stream: a child process imports it, builds the suite, reads
    its sample from the Parquet file and validates it while this process makes the exact pass
    over every row. At 10x the default data on a 2-core machine the import and suite were ~7 s
    and the run on 100,000 rows ~9 s of validate's ~27 s, all after the exact pass
    (BENCHMARKS.md). A thread in this process would not overlap them: the stream's per-batch
    Python holds the GIL (tried and measured, no gain). Inside the child, a thread does overlap
    the sample's decoding (pyarrow, without the GIL) with great-expectations' import.

    The child is a plain `python -c` (not multiprocessing, which would import the caller's main
    script again) that answers over a socket pair; `outcome` waits for its answer. An exception
    in the child is raised again here, a child that dies is an error naming its exit code, and
    leaving the block stops the child if it still runs. The child imports great-expectations
    as soon as it starts, so one started ahead of the stage (`prestart`) has it ready."""

    def __init__(self, suite_args: tuple[Any, ...], source: str | Path, limit: int, split_rules: list[RowRule]) -> None:
        self.sock, self.process = _SPARE.pop() if _SPARE else _spawn_child()
        _send(self.sock, (suite_args, str(source), limit, split_rules))

    def __enter__(self) -> GxProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait()

    def outcome(self) -> GxOutcome:
        try:
            status, value, trace = _receive(self.sock)
        except (EOFError, OSError):
            raise DataError(f"the great-expectations process stopped (exit code {self.process.wait()}) before it validated the sample: see its output above") from None
        if status == "error":
            value.add_note(f"in the great-expectations process:\n{trace}")
            raise value
        return value



_SPARE: list[tuple[Any, Any]] = []  # (socket, Popen) of a child started by `prestart`


def _spawn_child() -> tuple[Any, Any]:
    import socket
    import subprocess
    import sys

    sock, child = socket.socketpair()
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tasks.validate import _gx_child; _gx_child({child.fileno()})"
    process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno()])
    child.close()
    return sock, process


def prestart() -> None:
    """Start great-expectations' child now, for this process's next validation: `d2m run` calls
    it once Prefect's API answers (`after_boot` of flows.pipeline.warm_up: started during the
    server's boot, the child slowed it by more than it gained), so that the child's import
    (3.5-5 s) is done when validate begins. A child never used ends with this process, or with
    `discard_spare`."""
    if not _SPARE:
        _SPARE.append(_spawn_child())


def discard_spare() -> None:
    """Stop a prestarted child that no validation took (the run ended before validate)."""
    while _SPARE:
        sock, process = _SPARE.pop()
        sock.close()  # the child, waiting for its work, reads the end of the stream and exits
        process.wait()


def _send(sock: Any, value: Any) -> None:
    import pickle

    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(len(data).to_bytes(8, "big") + data)


def _receive(sock: Any) -> Any:
    import pickle

    def exactly(n: int) -> bytes:
        parts = []
        while n:
            part = sock.recv(min(n, 1 << 20))
            if not part:
                raise EOFError("the other end closed the socket")
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    return pickle.loads(exactly(int.from_bytes(exactly(8), "big")))


def _gx_child(fd: int) -> NoReturn:
    """GxProcess's child: build the suite, read the sample, validate it, hand back the outcome
    (or the exception) and end the process (`finish`: the parent waits for it, and
    great-expectations' module teardown is no use to anyone)."""
    import pickle
    import socket
    import threading
    import traceback
    from concurrent.futures import ThreadPoolExecutor

    sock = socket.socket(fileno=fd)
    warm = threading.Thread(target=_import_gx, name="gx-import", daemon=True)  # not waited for at exit
    warm.start()  # before the work arrives: a prestarted child has it done by then
    try:
        suite_args, source, limit, split_rules = _receive(sock)
        with ThreadPoolExecutor(1) as pool:  # pyarrow decodes the sample while great-expectations imports
            sample = pool.submit(gx_sample, source, limit, split_rules)
            warm.join()
            suite = GxSuite(*suite_args)
            outcome = suite.run(sample.result())
        _send(sock, ("ok", outcome, None))
    except BaseException as err:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            pickle.dumps(err)
        except Exception:  # noqa: BLE001 - an exception that cannot cross the socket
            err = RuntimeError(f"{type(err).__name__}: {err}")
        try:
            _send(sock, ("error", err, traceback.format_exc()))
        except OSError:
            pass  # the parent is gone
    finally:
        sock.close()
    finish(0)


def _import_gx() -> None:
    import great_expectations  # noqa: F401 - imported ahead of GxSuite, which waits for it
    from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: F401


class Gate:
    """One validation, streamed: `split` each record batch (rows that continue, rows set aside),
    then `report`. Exact checks count over every row that continues (`ExactCounts`, `DriftCounts`);
    great-expectations checks a seeded uniform sample of at most `validate.gx_sample_rows` of them
    (all of them below it) and builds the Data Docs, in a child process started before the first
    batch (`great_expectations`) or here (`great_expectations_here`). Where the two disagree, the
    exact count wins. Memory: one batch and the counters here; the sample in great-expectations'."""

    def __init__(self, contract: dict[str, Any], declared: Validate, data: Data, schema: pa.Schema) -> None:
        duplicated = sorted({c for c in schema.names if schema.names.count(c) > 1})
        if duplicated:
            raise DataError(f"columns {duplicated} appear more than once: give every column its own name")
        self.contract, self.declared, self.data, self.schema = contract, declared, data, schema
        rules = row_rules(contract, declared, data.target, schema.names)
        self.split_rules = [r for r in rules if declared.severity_of(r.check, r.column) == "error"] if declared.on_row_failure == "quarantine" else []
        self.exact = ExactCounts(rules, schema, declared, data)
        self.drift = DriftCounts(contract, schema)
        self.rows = self.quarantined = 0
        self.reasons: dict[str, int] = {}

    def split(self, batch: pa.RecordBatch | pa.Table) -> tuple[pa.Table, pa.Table]:
        """(rows that continue, rows set aside with their reason) of one batch; counts both."""
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        clean, quarantined, reasons = split_rows(table, self.split_rules) if self.split_rules else (table, no_rows(table), {})
        self.rows += table.num_rows
        self.quarantined += quarantined.num_rows
        for reason, n in reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.exact.add(clean)
        self.drift.add(clean)
        return clean, quarantined

    def _suite_args(self, data_docs_dir: str | Path) -> tuple[Any, ...]:
        return self.contract, self.declared, self.data.target, self.schema.names, Path(data_docs_dir)

    def great_expectations(self, data_docs_dir: str | Path, source: str | Path) -> GxProcess:
        """great-expectations on a sample of the Parquet file `source`, started now in its own
        process; its `outcome()` goes to `report`."""
        return GxProcess(self._suite_args(data_docs_dir), source, self.declared.gx_sample_rows, self.split_rules)

    def great_expectations_here(self, data_docs_dir: str | Path, table: pa.Table) -> GxOutcome:
        """great-expectations on a sample of `table`, in this process."""
        return GxSuite(*self._suite_args(data_docs_dir)).run(gx_sample(table, self.declared.gx_sample_rows, self.split_rules))

    def report(self, data_docs_dir: str | Path, gx: GxOutcome) -> ValidationReport:
        """The report over every row split so far and great-expectations' outcome on the sample."""
        data_docs_dir = Path(data_docs_dir)
        results, evaluated, page = gx.results, gx.evaluated, gx.page
        checks = [c for r in results if (c := self._failure(r, gx.rows)) is not None]
        psi = self.drift.psi()
        threshold = self.declared.drift_threshold
        checks += [drift_failure(column, value, threshold) for column, value in psi.items() if value > threshold]
        for check in checks:
            check["severity"] = self.declared.severity_of(check["check"], check["column"])
        failed = [c for c in checks if c["severity"] == "error"]
        report = ValidationReport(
            success=not failed, rows=self.exact.rows, evaluated_expectations=evaluated, failed=failed,
            warnings=[c for c in checks if c["severity"] == "warn"], drift=psi, data_docs=str(data_docs_dir / "index.html"),
            gx_rows=gx.rows, page=page,
        )
        if self.split_rules:
            report = self._with_quarantine(report)
        label = self.exact.label_check()
        return with_check(report, label, self.declared) if label else report

    def _failure(self, result: GxResult, sampled: int) -> dict[str, Any] | None:
        """The failure of one expectation, or None: the exact count decides where there is one."""
        kind, kwargs = result.type, result.kwargs
        described = describe_failure(kind, kwargs, result.result, result.exception_info)
        exact = self.exact.result(kind, kwargs, self.contract, self.declared)
        if exact is None:
            return None if result.success else described
        success, counted = exact
        if success:
            return None
        if not result.success and sampled == self.exact.rows:
            return described  # the sample is every row: the same counts, and great-expectations' samples
        failure = describe_failure(kind, kwargs, counted, None)
        seen = "passed it" if result.success else f"counted {described['observed']}"
        failure["message"] += f" (exact count over all {self.exact.rows} rows; great-expectations on a sample of {sampled} rows {seen})"
        return failure

    def _with_quarantine(self, report: ValidationReport) -> ValidationReport:
        """Too many rows set aside blocks the batch."""
        order = {r.reason(): i for i, r in enumerate(self.split_rules)}
        reasons = {reason: self.reasons[reason] for reason in sorted(self.reasons, key=order.__getitem__)}
        fraction = round(self.quarantined / self.rows, 6) if self.rows else 0.0
        limit = self.declared.max_quarantine_fraction
        summary = {"rows": self.quarantined, "fraction": fraction, "max_fraction": limit, "reasons": reasons}
        failed = report.failed
        if fraction > limit:
            counts = "; ".join(f"{reason} ({n} rows)" for reason, n in reasons.items())
            message = f"{self.quarantined} of {self.rows} rows ({100 * fraction:.2f}%) break row-level rules, more than the {100 * limit:g}% that may be quarantined: {counts}"
            failed = [{"check": "quarantine", "expectation": "max_quarantine_fraction", "column": None, "observed": fraction, "sample_values": [], "message": message, "severity": "error"}, *failed]
        return replace(report, success=not failed, failed=failed, quarantine=summary)


def drift_failure(column: str, value: float, threshold: float) -> dict[str, Any]:
    return {
        "check": "drift",
        "expectation": "population_stability_index",
        "column": column,
        "observed": value,
        "sample_values": [],
        "message": f"distribution drifted from the reference: PSI {value:.3f} above {threshold:g}",
    }


def gate(table: pa.Table, contract: dict[str, Any], declared: Validate, target: str, data_docs_dir: str | Path) -> tuple[ValidationReport, pa.Table, pa.Table]:
    """(report, rows that continue, quarantined rows) of a table in memory. With
    `on_row_failure: quarantine`, rows that break a blocking row-level rule are set aside and the
    rest is validated; too many set aside blocks the batch."""
    checker = Gate(contract, declared, Data(target=target, label_rule=None), table.schema)
    parts = [checker.split(batch) for batch in table.to_batches()]
    clean = pa.concat_tables([table.slice(0, 0), *(c for c, _ in parts)])
    quarantined = pa.concat_tables([no_rows(table), *(q for _, q in parts)])
    return checker.report(data_docs_dir, checker.great_expectations_here(data_docs_dir, table)), clean, quarantined


def validate_table(table: pa.Table, contract: dict[str, Any], declared: Validate, target: str, data_docs_dir: str | Path) -> ValidationReport:
    """Check `table` against the contract and declared rules, setting no rows aside."""
    return gate(table, contract, declared.model_copy(update={"on_row_failure": "fail"}), target, data_docs_dir)[0]


def with_check(report: ValidationReport, check: dict[str, Any], declared: Validate) -> ValidationReport:
    check = {**check, "severity": declared.severity_of(check["check"], check["column"])}
    if check["severity"] == "warn":
        return replace(report, warnings=[*report.warnings, check])
    return replace(report, success=False, failed=[*report.failed, check])


def load_or_profile(raw: str | Path, path: str | Path) -> dict[str, Any]:
    """The committed contract; the first run profiles the table at `raw` into it (in memory: the
    deciles need every value), never a later one."""
    path = Path(path)
    if path.exists():
        return read_json(path)
    table = read_table(raw)
    contract = profile(table)
    write_json(contract, path)
    log.warning("no contract at %s: profiled a new one from this data (%d rows, %d columns); review it and commit it", path, table.num_rows, table.num_columns)
    return contract


def failed_report_path(validation: str | Path) -> Path:
    path = Path(validation)
    return path.with_name(f"{path.stem}.failed.json")


class PassedRows:
    """The rows that continue, written to paths.validated only once a batch sets rows aside.

    Until then every batch continues whole, so the output would be the input again: a run that
    sets nothing aside (the usual one) copies paths.raw's bytes instead of encoding the table
    again (a copy, not a hard link: an in-place edit of one DVC output must not change another).
    Seen in a profile at 10x the default data: the encoding was 2.9 s of validate's 15. When
    the first batch does set rows aside, the batches before it are read again from paths.raw
    and written, then every later batch's passed rows."""

    def __init__(self, tmp: Path, raw: str | Path, schema: pa.Schema, batch_rows: int) -> None:
        self.tmp, self.raw, self.schema, self.batch_rows = tmp, raw, schema, batch_rows
        self.whole_batches = 0
        self.writer: pq.ParquetWriter | None = None

    def add(self, rows: pa.Table, whole: bool) -> None:
        if self.writer is None and whole:
            self.whole_batches += 1
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
            for index, batch in enumerate(parquet_file(self.raw).iter_batches(batch_size=self.batch_rows)):
                if index == self.whole_batches:
                    break
                self.writer.write_batch(batch)
        if rows.num_rows:  # an empty row group per batch would bloat the footer
            self.writer.write_table(rows)

    def copy_raw(self) -> None:
        shutil.copyfile(self.raw, self.tmp)


@contextmanager
def passed_rows(path: str | Path, raw: str | Path, schema: pa.Schema, batch_rows: int) -> Iterator[PassedRows]:
    """A `PassedRows` whose output replaces `path` only if the block succeeds."""
    with atomic_path(path) as tmp:
        rows = PassedRows(tmp, raw, schema, batch_rows)
        try:
            yield rows
        finally:
            if rows.writer is not None:
                rows.writer.close()
        if rows.writer is None:
            rows.copy_raw()


def run(params: Params) -> dict[str, Any]:
    """Stream paths.raw a batch at a time; the outputs replace the accepted ones only if it passes."""
    paths = params.paths
    source = parquet_file(paths.raw)
    contract = load_or_profile(paths.raw, paths.contract)
    start = time.perf_counter()
    checker = Gate(contract, params.validate, params.data, source.schema_arrow)
    with checker.great_expectations(paths.data_docs, paths.raw) as gx, passed_rows(paths.validated, paths.raw, source.schema_arrow, params.data.batch_rows) as clean, parquet_writer(paths.quarantine, no_rows(source.schema_arrow.empty_table()).schema) as quarantined:
        for batch in source.iter_batches(batch_size=params.data.batch_rows):
            kept, set_aside = checker.split(batch)
            clean.add(kept, whole=not set_aside.num_rows)
            if set_aside.num_rows:  # an empty row group per batch would bloat the footer
                quarantined.write_table(set_aside)
        report = checker.report(paths.data_docs, gx.outcome())
        log.info("%d expectations on %d sampled rows, exact checks and drift on %d rows in %.1f s; Data Docs: %s", report.evaluated_expectations, report.gx_rows, report.rows, time.perf_counter() - start, report.page)
        warnings = [f"{w['column'] or 'table'}: {w['message']}" for w in report.warnings]
        for warning in warnings:
            log.warning("data contract warning: %s", warning)
        if not report.success:
            # Nothing is renamed into place: DVC still sees the last accepted batch as current.
            rejected = failed_report_path(paths.validation)
            write_json(report.as_dict(), rejected)
            raise ValidationFailed(f"{report.summary()}\nFull report: {rejected}")
    write_json(report.as_dict(), paths.validation)
    return {"rows": report.rows, "quarantined": checker.quarantined, "expectations": report.evaluated_expectations, "warnings": warnings, "out": paths.validated}


if __name__ == "__main__":
    main(run)
