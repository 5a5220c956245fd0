"""Every data folder the project writes opens in other Parquet readers (its metadata
files are ``_``-prefixed, which pyarrow.dataset, DuckDB and Spark skip), and one
resolver finds a data folder's spec (``--spec``, ``_spec.yaml``, legacy ``spec.yaml``)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dhen_cvr.data.prepare import EventMapping, TableMapping, prepare_events, prepare_table
from dhen_cvr.data.spec import SPEC_FILE, SpecError, load_data_spec, resolve_spec_path
from dhen_cvr.data.synth import WorldConfig, synthesize
from dhen_cvr.data.writer import day_dirs

T0 = 1_700_000_000


def write_synth(out: Path) -> Path:
    synthesize(out, WorldConfig(users=60, days=2, impressions_per_day=1500, max_seq_len=8))
    return out


def write_prepared_events(out: Path) -> Path:
    log = out.parent / "events.csv"
    with log.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "event", "ts"])
        for u in range(6):
            for k in range(8):
                t = T0 + u * 7 + k * 5000
                w.writerow([u, (u + k) % 5, "pv", t])
                if k % 3 == 0:
                    w.writerow([u, (u + k) % 5, "buy", t + 60])
    mapping = EventMapping.model_validate(
        {
            "columns": {"user": "user", "item": "item", "event": "event", "timestamp": "ts"},
            "event_types": ["pv", "buy"],
            "exposure": "pv",
            "labels": [{"name": "buy", "events": ["buy"], "window": "1h"}],
            "sequences": [{"name": "org", "events": ["pv"], "max_len": 3, "fields": ["item"]}],
        }
    )
    prepare_events(log, mapping, out)
    return out


def write_prepared_table(out: Path) -> Path:
    path = out.parent / "table.csv"
    path.write_text("clk,buy,ad,age\n1,1,a,3\n0,0,b,4.5\n1,0,c,7\n")
    mapping = TableMapping.model_validate(
        {
            "kind": "table",
            "click": "clk",
            "conversion": "buy",
            "categorical": [{"column": "ad", "category": "candidate"}],
            "dense": [{"column": "age", "category": "demographic"}],
        }
    )
    prepare_table(path, mapping, out)
    return out


@pytest.mark.parametrize("writer", [write_synth, write_prepared_events, write_prepared_table])
def test_project_data_folders_open_in_pyarrow_and_duckdb(writer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = writer(tmp_path / "data")
    metadata = sorted(p.name for p in out.iterdir() if p.is_file())
    assert metadata and all(name.startswith(("_", ".")) for name in metadata), metadata
    assert (out / SPEC_FILE).is_file()
    rows = sum(pq.read_metadata(f).num_rows for f in out.glob("dt=*/*.parquet"))
    dataset = ds.dataset(out, format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == rows > 0
    assert set(table["dt"].to_pylist()) == {d.name.split("=")[1] for d in day_dirs(out)}
    con = duckdb.connect()
    glob = str(out / "**" / "*.parquet")
    count, days = con.execute(
        f"SELECT count(*), count(DISTINCT dt) FROM read_parquet('{glob}', hive_partitioning=true)"
    ).fetchone()  # type: ignore[misc]
    assert (count, days) == (rows, len(day_dirs(out)))


def test_spec_resolution_order_and_messages(tmp_path: Path) -> None:
    data = write_synth(tmp_path / "world")
    assert resolve_spec_path(data) == data / "_spec.yaml"
    legacy = tmp_path / "legacy"
    shutil.copytree(data, legacy)
    (legacy / "_spec.yaml").rename(legacy / "spec.yaml")
    (legacy / "_world.json").rename(legacy / "world.json")
    assert resolve_spec_path(legacy) == legacy / "spec.yaml"
    assert load_data_spec(legacy) == load_data_spec(data)
    elsewhere = tmp_path / "specs" / "mine.yaml"
    elsewhere.parent.mkdir()
    (legacy / "spec.yaml").rename(elsewhere)
    assert resolve_spec_path(legacy, elsewhere) == elsewhere
    with pytest.raises(SpecError, match=r"is a folder without _spec\.yaml or spec\.yaml"):
        resolve_spec_path(legacy, elsewhere.parent)
    with pytest.raises(SpecError, match=r"legacy has no _spec\.yaml .*--spec PATH.*init-spec"):
        resolve_spec_path(legacy)
    with pytest.raises(SpecError, match=r"feature spec .*nope\.yaml does not exist"):
        resolve_spec_path(legacy, tmp_path / "nope.yaml")
