"""prepare-events: hand-made logs checked against naive float64/Python references."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dhen_cvr.cli import app
from dhen_cvr.data.prepare import (
    EventMapping,
    MappingError,
    StreamingOptions,
    load_mapping,
    load_preset,
    prepare_events,
)
from dhen_cvr.data.spec import load_spec
from dhen_cvr.data.writer import day_dirs
from dhen_cvr.errors import DataError, DhenCvrError

TAOBAO = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "taobao" / "UserBehavior_sample.csv"
)
T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC
HOUR = 3600


def write_log(path: Path, rows: list[tuple[Any, ...]], header: bool = True) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(["user", "item", "cat", "event", "ts"])
        w.writerows(rows)
    return path


def mapping(**overrides: Any) -> EventMapping:
    base: dict[str, Any] = {
        "columns": {
            "user": "user",
            "item": "item",
            "event": "event",
            "timestamp": "ts",
            "item_attributes": {"cat": "cat"},
        },
        "event_types": ["pv", "cart", "buy"],
        "exposure": "pv",
        "labels": [{"name": "buy", "events": ["buy"], "window": "1h"}],
        "sequences": [
            {"name": "org", "events": ["pv"], "max_len": 3, "fields": ["item", "cat"]},
            {"name": "act", "events": ["cart", "buy"], "max_len": 4, "fields": ["item", "event"]},
        ],
    }
    base.update(overrides)
    return EventMapping.model_validate(base)


def read_rows(out: Path) -> list[dict[str, Any]]:
    tables = [pq.read_table(d) for d in day_dirs(out)]
    return pa.concat_tables(tables).to_pylist() if tables else []


def test_buy_one_second_after_window_is_negative(tmp_path: Path) -> None:
    rows = [
        ("u1", "a", "c1", "pv", T0),
        ("u1", "a", "c1", "buy", T0 + HOUR),  # exactly at the window's end: positive
        ("u2", "a", "c1", "pv", T0),
        ("u2", "a", "c1", "buy", T0 + HOUR + 1),  # one second after it closes: negative
        ("u3", "b", "c1", "pv", T0),
        ("u3", "b", "c1", "buy", T0),  # same second as the exposure: positive
        ("u4", "b", "c1", "pv", T0),
        ("u4", "c", "c1", "buy", T0 + 10),  # another item: negative
        ("u5", "b", "c1", "buy", T0 - 1),  # before the exposure: negative
        ("u5", "b", "c1", "pv", T0),
    ]
    out = tmp_path / "out"
    report = prepare_events(write_log(tmp_path / "log.csv", rows), mapping(), out)
    got = {(r["user_id"], r["item_id"]): r["buy"] for r in read_rows(out)}
    assert got == {("u1", "a"): 1, ("u2", "a"): 0, ("u3", "b"): 1, ("u4", "b"): 0, ("u5", "b"): 0}
    assert report.positives["buy"] == 2
    assert report.to_dict()["labels"]["buy"]["rate"] == pytest.approx(2 / 5)


def test_sequences_hold_only_events_strictly_before_the_exposure(tmp_path: Path) -> None:
    rows = [
        ("u1", "a", "c1", "pv", T0 + 10),
        ("u1", "b", "c2", "pv", T0 + 10),  # same second as the first pv: not in its sequence
        ("u1", "x", "c9", "cart", T0 + 5),
        ("u1", "c", "c3", "pv", T0 + 20),
        ("u1", "y", "c9", "buy", T0 + 20),  # same second as pv c: not in c's sequence
        ("u1", "d", "c4", "pv", T0 + 30),
        ("u1", "e", "c5", "pv", T0 + 40),
        ("u1", "f", "c6", "pv", T0 + 50),
        ("u2", "z", "c1", "pv", T0 + 1),  # another user's events never leak in
    ]
    out = tmp_path / "out"
    prepare_events(write_log(tmp_path / "log.csv", rows), mapping(), out)
    by_item = {r["item_id"]: r for r in read_rows(out)}
    for r in by_item.values():
        assert all(t < r["ts"] for t in r["org_ts"] + r["act_ts"])
        assert r["org_ts"] == sorted(r["org_ts"])
    assert by_item["a"]["org_item"] == [] and by_item["b"]["org_item"] == []
    assert by_item["a"]["act_item"] == ["x"] and by_item["a"]["act_event"] == [1]
    assert by_item["c"]["org_item"] == ["a", "b"] and by_item["c"]["act_item"] == ["x"]
    assert by_item["c"]["org_cat"] == ["c1", "c2"]
    assert by_item["d"]["act_item"] == ["x", "y"] and by_item["d"]["act_event"] == [1, 2]
    # max_len 3 keeps the newest three, oldest first
    assert by_item["f"]["org_item"] == ["c", "d", "e"]
    assert by_item["f"]["org_ts"] == [T0 + 20, T0 + 30, T0 + 40]
    assert by_item["z"]["org_item"] == [] and by_item["z"]["act_item"] == []


def test_dropped_rows_are_counted_exactly_per_reason(tmp_path: Path) -> None:
    m = mapping(time={"timezone": "UTC", "first_day": "2023-11-14", "last_day": "2023-11-15"})
    start = 1_699_920_000  # 2023-11-14 00:00 UTC
    end = start + 2 * 86400  # 2023-11-16 00:00 UTC, first second out of the window
    rows = [
        ("u1", "a", "c", "pv", start),  # kept (first second of the window)
        ("u1", "a", "c", "pv", end - 1),  # kept (last second of the window)
        ("", "a", "c", "pv", start + 5),  # missing_user
        ("", "", "c", "click", "junk"),  # missing_user (first reason wins)
        ("u1", "", "c", "pv", start + 5),  # missing_item
        ("u1", "a", "c", "click", start + 5),  # unknown_event_type
        ("u1", "a", "c", "", start + 5),  # unknown_event_type (empty)
        ("u1", "a", "c", "click", start - 5),  # unknown_event_type before out_of_window
        ("u1", "a", "c", "pv", "yesterday"),  # bad_timestamp
        ("u1", "a", "c", "pv", ""),  # bad_timestamp (missing)
        ("u1", "a", "c", "pv", -5),  # bad_timestamp (negative)
        ("u1", "a", "c", "pv", start - 1),  # out_of_window
        ("u1", "a", "c", "buy", end),  # out_of_window
        ("u2", "b", "", "pv", start + 7),  # kept: a missing attribute is an OOV id, not a drop
    ]
    report = prepare_events(write_log(tmp_path / "log.csv", rows), m, tmp_path / "out")
    assert report.rows_read == len(rows)
    assert report.dropped == {
        "missing_user": 2,
        "missing_item": 1,
        "unknown_event_type": 3,
        "bad_timestamp": 3,
        "out_of_window": 2,
    }
    assert report.examples == 3
    saved = json.loads((tmp_path / "out" / "_quality.json").read_text())
    assert saved["rows_dropped"]["unknown_event_type"] == 3
    assert saved["rows_dropped_total"] == 11
    assert "unknown_event_type 3" in (tmp_path / "out" / "_quality.txt").read_text()
    assert [d.name for d in day_dirs(tmp_path / "out")] == ["dt=2023-11-14", "dt=2023-11-15"]


def naive_examples(rows: list[tuple[Any, ...]], m: EventMapping) -> list[tuple[Any, ...]]:
    """Every exposure's canonical row, by plain Python loops over the events."""
    events = sorted(((r[0], r[4], i, r) for i, r in enumerate(rows)))
    by_user: dict[Any, list[tuple[Any, ...]]] = {}
    for e in events:
        by_user.setdefault(e[0], []).append(e)
    out = []
    for user, t, _, (_, item, cat, ev, _) in events:
        if ev != m.exposure:
            continue
        mine = by_user[user]
        labels = tuple(
            int(
                any(
                    e[3][1] == item and e[3][3] in lb.events and t <= e[1] <= t + lb.window
                    for e in mine
                )
            )
            for lb in m.labels
        )
        seqs = []
        for s in m.sequences:
            before = [e[3] for e in mine if e[3][3] in s.events and e[1] < t][-s.max_len :]
            with_event = "event" in s.fields
            seqs.append(tuple((e[4], e[1], e[3] if with_event else None) for e in before))
        counts = []
        for c in m.counts:
            hits = 0
            for e in mine:
                same = {"user": True, "item": e[3][1] == item}.get(c.scope, e[3][2] == cat)
                hits += int(same and e[3][3] in c.events and t - c.window <= e[1] < t)
            counts.append(float(hits))
        out.append((user, item, t, labels, tuple(seqs), tuple(counts)))
    return sorted(out)


def canonical(r: dict[str, Any], m: EventMapping) -> tuple[Any, ...]:
    labels = tuple(r[lb.name] for lb in m.labels)
    event_names = m.event_types
    seqs = []
    for s in m.sequences:
        items = r[f"{s.name}_item"]
        events = [event_names[c] for c in r[f"{s.name}_event"]] if "event" in s.fields else None
        seqs.append(
            tuple(
                (t, item, ev)
                for t, item, ev in zip(
                    r[f"{s.name}_ts"], items, events or [None] * len(items), strict=True
                )
            )
        )
    counts = tuple(r[c.name] for c in m.counts)
    return (r["user_id"], r["item_id"], r["ts"], labels, tuple(seqs), counts)


def random_log(n: int, seed: int, n_items: int = 12) -> list[tuple[Any, ...]]:
    """Events of 6 users on ``n_items`` items; an item's category is fixed."""
    rng = np.random.default_rng(seed)
    items = rng.integers(n_items, size=n)
    return [
        (
            f"u{rng.integers(6)}",
            f"i{items[k]}",
            f"c{items[k] % 3}",
            str(rng.choice(["pv", "pv", "cart", "buy"])),
            int(T0 + rng.integers(0, 3 * 86400)),
        )
        for k in range(n)
    ]


@pytest.mark.parametrize("buckets", [1, 3])
def test_examples_match_a_naive_reference(tmp_path: Path, buckets: int) -> None:
    m = mapping(
        sequences=[
            {"name": "org", "events": ["pv"], "max_len": 4, "fields": ["item"]},
            {"name": "act", "events": ["cart", "buy"], "max_len": 3, "fields": ["item", "event"]},
        ],
        labels=[
            {"name": "buy", "events": ["buy"], "window": "6h"},
            {"name": "cart", "events": ["cart"], "window": "1d"},
        ],
        counts=[
            {"name": "n_pv_1d", "events": ["pv"], "window": "1d", "scope": "user"},
            {"name": "n_pv_item_2d", "events": ["pv"], "window": "2d", "scope": "item"},
            {"name": "n_buy_cat_12h", "events": ["buy", "cart"], "window": "12h", "scope": "cat"},
        ],
    )
    rows = random_log(400, seed=buckets)
    out = tmp_path / "out"
    opts = StreamingOptions(buckets=buckets, chunk_rows=7, spill_rows=50, block_size=4096)
    report = prepare_events(write_log(tmp_path / "log.csv", rows), m, out, options=opts)
    got = sorted(canonical(r, m) for r in read_rows(out))
    assert got == naive_examples(rows, m)
    assert report.examples == sum(r[3] == "pv" for r in rows)
    assert sum(report.length_hist["org"]) == report.examples


def test_bucket_count_does_not_change_the_examples(tmp_path: Path) -> None:
    rows = random_log(300, seed=7)
    log = write_log(tmp_path / "log.csv", rows)
    m = mapping(counts=[{"name": "n", "events": ["pv"], "window": "1d", "scope": "cat"}])
    results = []
    for k in (1, 4):
        out = tmp_path / f"out{k}"
        prepare_events(log, m, out, options=StreamingOptions(buckets=k, chunk_rows=16))
        results.append(sorted(canonical(r, m) for r in read_rows(out)))
        assert load_spec(out / "_spec.yaml").label_names == ["buy"]
    assert results[0] == results[1]


def test_negative_sampling_and_downsampling(tmp_path: Path) -> None:
    m = mapping(
        labels=[
            {"name": "view", "exposure": True, "serve": False},
            {"name": "buy", "events": ["buy"], "window": "1d", "mask": "view"},
        ],
        negatives={"per_exposure": 2},
        downsample={"negative_rate": 0.5, "labels": ["buy"]},
        counts=[{"name": "n_cat", "events": ["pv"], "window": "3d", "scope": "cat"}],
    )
    rows = random_log(600, seed=3, n_items=300)
    out = tmp_path / "out"
    report = prepare_events(write_log(tmp_path / "log.csv", rows), m, out)
    touched = {(r[0], r[1]) for r in rows}
    got = read_rows(out)
    negatives = [r for r in got if r["view"] == 0]
    assert negatives, "some sampled negatives survive down-sampling"
    assert all((r["user_id"], r["item_id"]) not in touched for r in negatives)
    assert all(r["buy"] == 0 and r["sample_rate"] == 0.5 for r in negatives)
    positives = [r for r in got if r["buy"] == 1]
    assert positives and all(r["sample_rate"] == 1.0 for r in positives)
    exposures_with_buy = report.positives["buy"]
    assert exposures_with_buy == len(positives)  # no positive is ever down-sampled
    c = report.counters
    assert len(got) == c["exposures"] + c["sampled_negatives"] - c["downsampled_away"]
    assert c["sampled_negatives"] + c["negatives_rejected"] == 2 * c["exposures"]
    spec = load_spec(out / "_spec.yaml")
    assert spec.sampling.negative_rate == 0.5 and spec.sampling.inclusion_column == "sample_rate"
    assert spec.labels[1].mask == "view" and not spec.labels[0].serve
    # a sampled negative's category count is computed for its own category
    cat_of = {r[1]: r[2] for r in rows}
    for r in negatives[:20]:
        hits = sum(
            1
            for e in rows
            if e[0] == r["user_id"]
            and e[3] == "pv"
            and e[2] == cat_of[r["item_id"]]
            and r["ts"] - 3 * 86400 <= e[4] < r["ts"]
        )
        assert r["n_cat"] == hits


def test_parquet_input_with_string_times_and_a_dst_timezone(tmp_path: Path) -> None:
    # Europe/Berlin switches to summer time on 2024-03-31 at 02:00 local (01:00 UTC).
    table = pa.table(
        {
            "uid": pa.array([10, 10, 10, 11], pa.int64()),
            "sku": pa.array([1, 2, 2, 1], pa.int64()),
            "kind": ["view", "view", "order", "view"],
            "when": ["2024-03-30 23:59:59", "2024-03-31 00:00:00", "2024-03-31 03:30:00", "bad"],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    m = EventMapping.model_validate(
        {
            "columns": {"user": "uid", "item": "sku", "event": "kind", "timestamp": "when"},
            "time": {"format": "%Y-%m-%d %H:%M:%S", "timezone": "Europe/Berlin"},
            "event_types": ["view", "order"],
            "exposure": "view",
            "labels": [{"name": "order", "events": ["order"], "window": "3h"}],
            "sequences": [{"name": "hist", "events": ["view"], "max_len": 2}],
        }
    )
    out = tmp_path / "out"
    report = prepare_events(tmp_path / "*.parquet", m, out)
    assert report.dropped["bad_timestamp"] == 1
    assert [d.name for d in day_dirs(out)] == ["dt=2024-03-30", "dt=2024-03-31"]
    rows = sorted(read_rows(out), key=lambda r: r["ts"])
    assert [r["ts"] for r in rows] == [1711839599, 1711839600]  # 23:59:59 / 00:00 CET (+01:00)
    # 03:30 CEST (+02:00) = 01:30 UTC, 2.5 h after the second view: inside its 3 h window
    assert [r["order"] for r in rows] == [0, 1]
    assert rows[1]["hist_item"] == [1]


def test_cli_prepare_events_and_errors(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "log.csv",
        [("u", "a", "c", "pv", T0), ("u", "a", "c", "buy", T0 + 1)],
        header=False,
    )
    spec = tmp_path / "m.yaml"
    spec.write_text(
        """
kind: events
source: {column_names: [user, item, cat, event, ts]}
columns: {user: user, item: item, event: event, timestamp: ts}
event_types: [pv, buy]
exposure: pv
labels: [{name: buy, events: [buy], window: 24h}]
"""
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "prepare-events",
            "--events",
            str(log),
            "--mapping",
            str(spec),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "label buy: 1 positive (100.00%)" in result.output
    result = runner.invoke(
        app,
        [
            "prepare-events",
            "--events",
            str(log),
            "--preset",
            "aliccp",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert isinstance(result.exception, MappingError)


def test_mapping_errors_are_specific(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not in event_types"):
        mapping(labels=[{"name": "buy", "events": ["purchase"]}])
    with pytest.raises(ValueError, match=r"Extra inputs are not permitted"):
        mapping(windows=3)
    with pytest.raises(ValueError, match=r"scope 'shop'"):
        mapping(counts=[{"name": "n", "events": ["pv"], "window": "1d", "scope": "shop"}])
    with pytest.raises(ValueError, match=r"cannot read duration"):
        mapping(labels=[{"name": "buy", "events": ["buy"], "window": "1 week"}])
    with pytest.raises(ValueError, match=r"unless 'negatives'"):
        mapping(labels=[{"name": "v", "exposure": True}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: events\ncolumns: {user: u}\n")
    with pytest.raises(MappingError, match=r"invalid mapping .*bad.yaml") as err:
        load_mapping(bad)
    assert "columns.item" in str(err.value) and "exposure" in str(err.value)


def test_missing_column_and_empty_result_are_clear_errors(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user,item,event,ts\nu,a,pv,1\n")
    with pytest.raises(DataError, match=r"log.csv, column 'cat': column not found"):
        prepare_events(log, mapping(), tmp_path / "out")
    only_buys = write_log(tmp_path / "buys.csv", [("u", "a", "c", "buy", T0)])
    with pytest.raises(DhenCvrError, match=r"no examples"):
        prepare_events(only_buys, mapping(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.fixture(scope="module")
def taobao_rows() -> list[tuple[Any, ...]]:
    if not TAOBAO.is_file():
        pytest.skip(f"Taobao UserBehavior sample not found at {TAOBAO} (../shared/data is absent)")
    with TAOBAO.open(newline="") as f:
        return [(int(u), int(i), int(c), b, int(t)) for u, i, c, b, t in csv.reader(f)]


def test_taobao_preset_on_the_public_sample(
    tmp_path: Path, taobao_rows: list[tuple[Any, ...]]
) -> None:
    china = dt.timezone(dt.timedelta(hours=8))
    start = dt.datetime(2017, 11, 25, tzinfo=china).timestamp()
    end = dt.datetime(2017, 12, 4, tzinfo=china).timestamp()
    inside = [r for r in taobao_rows if start <= r[4] < end]
    m = load_preset("taobao")
    assert isinstance(m, EventMapping)
    out = tmp_path / "taobao"
    report = prepare_events(TAOBAO, m, out)
    assert report.rows_read == len(taobao_rows) == 4321
    assert report.dropped["out_of_window"] == len(taobao_rows) - len(inside) > 0
    assert sum(report.dropped.values()) == report.dropped["out_of_window"]
    assert report.examples == sum(r[3] == "pv" for r in inside)
    spec = load_spec(out / "_spec.yaml")
    assert spec.label_names == ["cart", "fav", "buy"]
    assert [s.name for s in spec.sequences] == ["org", "intent", "conv"]
    assert set(spec.source_columns()) <= set(
        pq.read_schema(next((out / "dt=2017-11-25").iterdir())).names
    )
    assert [d.name for d in day_dirs(out)] == [
        f"dt=2017-{d}"
        for d in ["11-25", "11-26", "11-27", "11-28", "11-29", "11-30", "12-01", "12-02", "12-03"]
    ]
    got = sorted(canonical(r, m) for r in read_rows(out))
    assert got == naive_examples(inside, m)
    quality = json.loads((out / "_quality.json").read_text())
    assert quality["rows_dropped"]["out_of_window"] == report.dropped["out_of_window"]
    assert quality["labels"]["buy"]["positives"] == report.positives["buy"] > 0


def test_example_mapping_and_presets_validate() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "mapping_taobao.yaml"
    m = load_mapping(example)
    assert isinstance(m, EventMapping) and m.exposure == "pv"
    taobao = load_preset("taobao")
    assert isinstance(taobao, EventMapping)
    assert [s.name for s in taobao.sequences] == ["org", "intent", "conv"]
    with pytest.raises(MappingError, match=r"unknown preset 'nope'.*aliccp.*taobao"):
        load_preset("nope")


def test_folder_of_parquet_files_with_ms_and_timestamp_columns(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    base = dict(uid=["a", "a"], sku=[1, 1], kind=["view", "order"])
    pq.write_table(  # unix milliseconds
        pa.table({**base, "when": pa.array([T0 * 1000, T0 * 1000 + 1500], pa.int64())}),
        logs / "part-1.parquet",
    )
    pq.write_table(  # a proper timestamp column (tz-aware)
        pa.table({**base, "when": pa.array([T0 + 100, T0 + 99], pa.timestamp("s", tz="UTC"))}),
        logs / "part-2.parquet",
    )
    m = EventMapping.model_validate(
        {
            "columns": {"user": "uid", "item": "sku", "event": "kind", "timestamp": "when"},
            "time": {"unit": "ms"},
            "event_types": ["view", "order"],
            "exposure": "view",
            "labels": [{"name": "order", "events": ["order"], "window": 60}],
            "sequences": [{"name": "hist", "events": ["view", "order"], "max_len": 5}],
        }
    )
    prepare_events(logs, m, tmp_path / "out")
    rows = sorted(read_rows(tmp_path / "out"), key=lambda r: r["ts"])
    assert [r["ts"] for r in rows] == [T0, T0 + 100]
    assert [r["order"] for r in rows] == [1, 0]  # the order at T0+99 precedes the 2nd view
    assert rows[1]["hist_ts"] == [T0, T0 + 1, T0 + 99]
