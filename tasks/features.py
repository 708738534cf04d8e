"""features: derive the label, fit the preprocessor and encode every row with it.

The preprocessor's statistics (vocabularies, fill values, scales) use feature columns only,
never the label, so the holdout contributes no label information.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

from data2model.params import Params
from data2model.preprocess import LABEL, TIME, Preprocessor, derive_label, fit_preprocessor
from data2model.stage import main
from data2model.tables import read_table, write_table

log = logging.getLogger("data2model.features")


def build_features(raw: pa.Table, params: Params) -> tuple[pa.Table, Preprocessor]:
    """The encoded feature table (features, label, and the split's time column) and its preprocessor."""
    labelled, classes = derive_label(raw, params.data)
    dropped = raw.num_rows - labelled.num_rows
    if dropped:
        log.info("dropped %d rows with no %s", dropped, params.data.target)
    pre = fit_preprocessor(labelled, params.data, params.features, classes)
    table = pre.transform(labelled).append_column(LABEL, labelled[LABEL])
    time_column = params.split.time_column
    if time_column and time_column in labelled.column_names:
        table = table.append_column(TIME, labelled[time_column])
    return table, pre


def run(params: Params) -> dict[str, Any]:
    table, pre = build_features(read_table(params.paths.validated), params)
    write_table(table, params.paths.features)
    pre.save(params.paths.preprocessor)
    return {"rows": table.num_rows, "numeric": len(pre.numeric), "categorical": len(pre.categorical)}


if __name__ == "__main__":
    main(run)
