"""validate: the great-expectations gate between ingest and features.

The contract is the profile of the first accepted data (paths.contract, committed to git)
plus the rules declared in params `validate`. A check of severity `error` that fails stops the
DAG with a report per failed check; a `warn` one is reported in validation.json and the log.
Per-column PSI against the profiled reference blocks above `validate.drift_threshold`. With
`on_row_failure: quarantine`, rows breaking a row-level rule go to paths.quarantine with their
reason and the rest continue. What passes is written to paths.validated, which features reads;
the Data Docs site under paths.data_docs shows every run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data2model.contract import describe_failure, expectations, failure_summary, profile, row_rules, to_pandas
from data2model.drift import drift
from data2model.errors import DataError, ValidationFailed
from data2model.params import Data, Params, Validate
from data2model.preprocess import LABEL, derive_label
from data2model.quarantine import no_rows, split_rows
from data2model.stage import main
from data2model.tables import read_json, read_table, write_json, write_table

log = logging.getLogger("data2model.validate")

SITE = "data2model"


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of one validation; `as_dict` is deterministic because DVC hashes it.

    `failed` holds the checks that block (severity error), `warnings` those only reported.
    """

    success: bool
    rows: int
    evaluated_expectations: int
    failed: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    drift: dict[str, float]
    data_docs: str
    quarantine: dict[str, Any] | None = None
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
    checks = [
        describe_failure(r.expectation_config.type, r.expectation_config.kwargs, r.result, r.exception_info)
        for r in sorted(result.results, key=lambda r: position[r.expectation_config.id])
        if not r.success
    ]
    psi = drift(table, contract)
    checks += [drift_failure(column, value, declared.drift_threshold) for column, value in psi.items() if value > declared.drift_threshold]
    for check in checks:
        check["severity"] = declared.severity_of(check["check"], check["column"])
    failed = [c for c in checks if c["severity"] == "error"]
    pages = context.get_docs_sites_urls(resource_identifier=key, site_names=[SITE])
    return ValidationReport(
        success=not failed,
        rows=table.num_rows,
        evaluated_expectations=result.statistics["evaluated_expectations"],
        failed=failed,
        warnings=[c for c in checks if c["severity"] == "warn"],
        drift=psi,
        data_docs=str(data_docs_dir / "index.html"),
        page=pages[0]["site_url"] if pages else None,
    )


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
    """(report, rows that continue, quarantined rows). With `on_row_failure: quarantine`, rows that
    break a blocking row-level rule are set aside and the rest is validated; too many set aside
    blocks the batch."""
    if declared.on_row_failure == "fail":
        return validate_table(table, contract, declared, target, data_docs_dir), table, no_rows(table)
    rules = [r for r in row_rules(contract, declared, target, table.column_names) if declared.severity_of(r.check, r.column) == "error"]
    clean, quarantined, reasons = split_rows(table, rules)
    report = validate_table(clean, contract, declared, target, data_docs_dir)
    fraction = round(quarantined.num_rows / table.num_rows, 6) if table.num_rows else 0.0
    limit = declared.max_quarantine_fraction
    summary = {"rows": quarantined.num_rows, "fraction": fraction, "max_fraction": limit, "reasons": reasons}
    failed = report.failed
    if fraction > limit:
        counts = "; ".join(f"{reason} ({n} rows)" for reason, n in reasons.items())
        message = f"{quarantined.num_rows} of {table.num_rows} rows ({100 * fraction:.2f}%) break row-level rules, more than the {100 * limit:g}% that may be quarantined: {counts}"
        failed = [{"check": "quarantine", "expectation": "max_quarantine_fraction", "column": None, "observed": fraction, "sample_values": [], "message": message, "severity": "error"}, *failed]
    return replace(report, success=not failed, failed=failed, quarantine=summary), clean, quarantined


def label_check(table: pa.Table, data: Data) -> dict[str, Any] | None:
    """With a label rule the target can vary while the label does not (every delay <= 15):
    the derived label needs both classes too."""
    if data.label_rule is None or data.target not in table.column_names:
        return None
    try:
        labelled, _ = derive_label(table, data)
    except DataError:  # an unusable target is already a failed check of the suite
        return None
    counts = np.bincount(labelled[LABEL].to_numpy(), minlength=2)
    if counts.min() > 0:
        return None
    seen = "true" if counts[1] else "false"
    return {
        "check": "target_classes", "expectation": "label_rule_gives_both_classes", "column": data.target,
        "observed": int(counts.max()), "sample_values": [],
        "message": f"`{data.target} {data.label_rule}` is {seen} in all {int(counts.max())} labelled rows: a model needs both classes",
    }


def with_check(report: ValidationReport, check: dict[str, Any], declared: Validate) -> ValidationReport:
    check = {**check, "severity": declared.severity_of(check["check"], check["column"])}
    if check["severity"] == "warn":
        return replace(report, warnings=[*report.warnings, check])
    return replace(report, success=False, failed=[*report.failed, check])


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
    paths = params.paths
    table = read_table(paths.raw)
    contract = load_or_profile(table, paths.contract)
    start = time.perf_counter()
    report, clean, quarantined = gate(table, contract, params.validate, params.data.target, paths.data_docs)
    label = label_check(clean, params.data)
    if label:
        report = with_check(report, label, params.validate)
    log.info("%d expectations and drift on %d rows in %.1f s; Data Docs: %s", report.evaluated_expectations, report.rows, time.perf_counter() - start, report.page)
    warnings = [f"{w['column'] or 'table'}: {w['message']}" for w in report.warnings]
    for warning in warnings:
        log.warning("data contract warning: %s", warning)
    if not report.success:
        # The accepted outputs stay as they were: DVC still sees the last accepted batch as current.
        rejected = failed_report_path(paths.validation)
        write_json(report.as_dict(), rejected)
        raise ValidationFailed(f"{report.summary()}\nFull report: {rejected}")
    write_table(quarantined, paths.quarantine)
    write_table(clean, paths.validated)
    write_json(report.as_dict(), paths.validation)
    return {"rows": report.rows, "quarantined": quarantined.num_rows, "expectations": report.evaluated_expectations, "warnings": warnings, "out": paths.validated}


if __name__ == "__main__":
    main(run)
