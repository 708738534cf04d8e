"""validate: the great-expectations gate between ingest and features.

The contract is the profile of the first accepted data (paths.contract, committed to git)
plus the rules declared in params `validate`. A batch that breaks it stops the DAG with a
report per failed check; the Data Docs site under paths.data_docs shows every run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from data2model.contract import describe_failure, expectations, failure_summary, profile, to_pandas
from data2model.errors import DataError, ValidationFailed
from data2model.params import Params, Validate
from data2model.stage import main
from data2model.tables import read_json, read_table, write_json

log = logging.getLogger("data2model.validate")

SITE = "data2model"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one validation; `as_dict` is deterministic because DVC hashes it."""

    success: bool
    rows: int
    evaluated_expectations: int
    failed: list[dict[str, Any]]
    data_docs: str
    page: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "rows": self.rows,
            "evaluated_expectations": self.evaluated_expectations,
            "failed": self.failed,
            "data_docs": self.data_docs,
        }

    def summary(self) -> str:
        return failure_summary(self.failed, self.page or self.data_docs)


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


def validate_table(table: pa.Table, contract: dict[str, Any], declared: Validate, target: str, data_docs_dir: str | Path) -> ValidationReport:
    """Check `table` against the contract and declared rules; build the Data Docs page of the run."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    duplicated = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if duplicated:
        raise DataError(f"columns {duplicated} appear more than once: give every column its own name")
    data_docs_dir = Path(data_docs_dir)
    context = _context(data_docs_dir)
    batch = context.data_sources.add_pandas("raw").add_dataframe_asset("table").add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name="contract", expectations=expectations(contract, declared, target, table.column_names)))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="raw", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE])],
            result_format={"result_format": "SUMMARY"},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": to_pandas(table)})
    [(key, result)] = outcome.run_results.items()
    position = {e.id: i for i, e in enumerate(suite.expectations)}
    failed = [
        describe_failure(r.expectation_config.type, r.expectation_config.kwargs, r.result, r.exception_info)
        for r in sorted(result.results, key=lambda r: position[r.expectation_config.id])
        if not r.success
    ]
    pages = context.get_docs_sites_urls(resource_identifier=key, site_names=[SITE])
    return ValidationReport(
        success=result.success,
        rows=table.num_rows,
        evaluated_expectations=result.statistics["evaluated_expectations"],
        failed=failed,
        data_docs=str(data_docs_dir / "index.html"),
        page=pages[0]["site_url"] if pages else None,
    )


def load_or_profile(table: pa.Table, path: str | Path) -> dict[str, Any]:
    """The committed contract; the first run profiles `table` into it, never a later one."""
    path = Path(path)
    if path.exists():
        return read_json(path)
    contract = profile(table)
    write_json(contract, path)
    log.warning("no contract at %s: profiled a new one from this data (%d rows, %d columns); review it and commit it", path, table.num_rows, table.num_columns)
    return contract


def failed_report_path(validation: str | Path) -> Path:
    path = Path(validation)
    return path.with_name(f"{path.stem}.failed.json")


def run(params: Params) -> dict[str, Any]:
    table = read_table(params.paths.raw)
    contract = load_or_profile(table, params.paths.contract)
    start = time.perf_counter()
    report = validate_table(table, contract, params.validate, params.data.target, params.paths.data_docs)
    log.info("%d expectations on %d rows in %.1f s; Data Docs: %s", report.evaluated_expectations, report.rows, time.perf_counter() - start, report.page)
    if not report.success:
        # The accepted report stays as it was: DVC still sees the last accepted batch as current.
        rejected = failed_report_path(params.paths.validation)
        write_json(report.as_dict(), rejected)
        raise ValidationFailed(f"{report.summary()}\nFull report: {rejected}")
    write_json(report.as_dict(), params.paths.validation)
    return {"rows": report.rows, "expectations": report.evaluated_expectations, "out": params.paths.validation}


if __name__ == "__main__":
    main(run)
