"""features: derive the label, fit the preprocessor and encode every row with it.

The preprocessor's statistics (vocabularies, fill values, scales) use feature columns only,
never the label, so the holdout contributes no label information.

The stage streams: the label's classes come from the target column alone, the preprocessor
is fitted on at most `features.fit_sample_rows` rows (a seeded uniform sample; every row when
the data is smaller, so at 1x the fit sees everything), and the rows are then encoded and
written one batch of `data.batch_rows` at a time. Memory is the sample plus one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from data2model.params import Params
from data2model.preprocess import LABEL, TIME, Preprocessor, derive_label, fit_preprocessor
from data2model.stage import main
from data2model.tables import parquet_file, read_table, thinned, write_batches

log = logging.getLogger("data2model.features")


def encode(labelled: pa.Table, pre: Preprocessor, time_column: str | None) -> pa.Table:
    """Encoded features, the label, and the split's time column when there is one."""
    table = pre.transform(labelled).append_column(LABEL, labelled[LABEL])
    if time_column and time_column in labelled.column_names:
        table = table.append_column(TIME, labelled[time_column])
    return table


def build_features(raw: pa.Table, params: Params) -> tuple[pa.Table, Preprocessor]:
    """The encoded feature table and its preprocessor, for a table in memory."""
    labelled, classes = derive_label(raw, params.data)
    pre = fit_preprocessor(labelled, params.data, params.features, classes)
    return encode(labelled, pre, params.split.time_column), pre


def fit_sample(batches: Iterator[pa.Table], total_rows: int, sample_rows: int, seed: int) -> pa.Table:
    """A uniform sample of about `sample_rows` rows from a stream of tables (all of them when
    there are fewer), the same for the same seed."""
    keep = min(1.0, sample_rows / max(total_rows, 1))
    rng = np.random.default_rng(seed)
    return pa.concat_tables([thinned(batch, keep, rng) for batch in batches])


def run(params: Params) -> dict[str, Any]:
    data, path = params.data, params.paths.validated
    _, classes = derive_label(read_table(path, columns=[data.target]), data)  # one column: the classes, and the all-null check
    source = parquet_file(path)
    rows = source.metadata.num_rows

    def labelled() -> Iterator[pa.Table]:
        for batch in source.iter_batches(batch_size=data.batch_rows):
            table, _ = derive_label(pa.Table.from_batches([batch]), data, classes)
            if table.num_rows:
                yield table

    sample = fit_sample(labelled(), rows, params.features.fit_sample_rows, params.split.seed)
    pre = fit_preprocessor(sample, data, params.features, classes)
    fitted_on = sample.num_rows
    del sample
    written = write_batches((encode(table, pre, params.split.time_column) for table in labelled()), params.paths.features)
    if rows > written:
        log.info("dropped %d rows with no %s", rows - written, data.target)
    pre.save(params.paths.preprocessor)
    return {"rows": written, "fitted_on_rows": fitted_on, "numeric": len(pre.numeric), "categorical": len(pre.categorical)}


if __name__ == "__main__":
    main(run)
