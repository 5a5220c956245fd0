"""Spec side tables (``lookups:``) and derived request-time features, decoded against a
plain-Python reference on a Parquet folder the project did not write."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from byo_data import N_ITEMS, write_foreign_logs
from dhen_cvr.cli import app
from dhen_cvr.data.decode import Location, decode_row_group
from dhen_cvr.data.spec import SpecError, load_spec
from dhen_cvr.errors import DataError

SPEC = """
name: with-lookups
request_time: event_time
lookups:
  - {name: items, path: side/items.parquet, key: item_id, columns: [topic, brand]}
features:
  - {name: item_id, role: categorical, category: candidate, vocab_size: 500, table: item}
  - {name: ad_topic, role: categorical, category: candidate, column: item_id,
     lookup: items.topic, vocab_size: 17, table: topic}
  - {name: ad_brand, role: categorical, category: candidate, column: item_id,
     lookup: items.brand, hash_buckets: 64, table: brand}
  - {name: hour, role: categorical, category: context, derive: hour_of_day}
  - {name: weekday, role: categorical, category: context, derive: day_of_week, utc_offset_hours: -5}
  - name: view
    role: sequence
    category: sequence
    max_len: 8
    timestamp: view_ts
    fields:
      - {name: view_item, vocab_size: 500, table: item}
      - {name: view_topic, column: view_item, lookup: items.topic, vocab_size: 17, table: topic}
labels:
  - {name: purchase}
"""


def topic_of(item: int) -> int:
    return (item * 7) % 17


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lookups")
    write_foreign_logs(root / "logs", days=2, rows=200)
    (root / "side").mkdir()
    known = np.arange(0, N_ITEMS - 50)  # the last 50 items are not in the side table
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array(known[::-1], pa.int32()),  # another order and int type
                "topic": pa.array([topic_of(int(i)) for i in known[::-1]], pa.int64()),
                "brand": pa.array([f"b{i % 9}" for i in known[::-1]]),
            }
        ),
        root / "side" / "items.parquet",
    )
    (root / "spec.yaml").write_text(SPEC)
    return root


def test_lookups_and_derived_features_match_a_reference(folder: Path) -> None:
    spec = load_spec(folder / "spec.yaml")
    assert spec.lookups[0].path == str((folder / "side" / "items.parquet").resolve())
    assert spec.source_columns() == ["event_time", "item_id", "view_ts", "view_item", "purchase"]
    part = next((folder / "logs").glob("dt=*/*.parquet"))
    table = pq.read_table(part)
    block = decode_row_group(table, spec, Location(str(part), 0))
    assert block is not None
    oov = 18
    items = table["item_id"].to_pylist()
    want = [topic_of(i) + 1 if i < N_ITEMS - 50 else oov for i in items]
    assert block.categorical["ad_topic"].tolist() == want
    brands = block.categorical["ad_brand"]
    missing = np.array([i >= N_ITEMS - 50 for i in items])
    assert (brands[missing] == 65).all() and (brands[~missing] <= 64).all()
    same_brand = [i % 9 for i in items]  # equal brands hash equally
    for b in range(9):
        rows = [r for r, i in enumerate(items) if same_brand[r] == b and not missing[r]]
        assert len(set(brands[rows].tolist())) <= 1
    times = table["event_time"].to_pylist()
    utc = [dt.datetime.fromtimestamp(t, dt.UTC) for t in times]
    assert block.categorical["hour"].tolist() == [u.hour + 1 for u in utc]
    shifted = [(u - dt.timedelta(hours=5)).weekday() + 1 for u in utc]
    assert block.categorical["weekday"].tolist() == shifted
    seq = block.sequences["view"]
    flat_items = [i for row in table["view_item"].to_pylist() for i in row[-8:]]
    topics = seq.ids[seq.fields.index("view_topic"), : seq.num_items].tolist()
    assert topics == [topic_of(i) + 1 if i < N_ITEMS - 50 else oov for i in flat_items]
    result = CliRunner().invoke(
        app, ["validate", str(folder / "logs"), "--spec", str(folder / "spec.yaml")]
    )
    assert result.exit_code == 0, result.output


def test_bad_lookups_are_named(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"lookup 'things.topic' names no entry of lookups"):
        load_spec_text(
            tmp_path,
            SPEC.replace(
                "lookup: items.topic, vocab_size: 17", "lookup: things.topic, vocab_size: 17"
            ),
        )
    with pytest.raises(SpecError, match=r"'colour' is not one of the columns"):
        load_spec_text(tmp_path, SPEC.replace("items.brand", "items.colour"))
    with pytest.raises(SpecError, match=r"derived feature .* drop column/lookup"):
        load_spec_text(
            tmp_path, SPEC.replace("derive: hour_of_day}", "derive: hour_of_day, column: x}")
        )
    part = next((folder / "logs").glob("dt=*/*.parquet"))
    table = pq.read_table(part)
    side = tmp_path / "side"
    side.mkdir()
    pq.write_table(
        pa.table({"item_id": [1, 2, 2], "topic": [0, 1, 1], "brand": ["a", "b", "b"]}),
        side / "items.parquet",
    )
    spec = load_spec_text(tmp_path, SPEC)
    with pytest.raises(DataError, match=r"items\.parquet, column 'item_id': key 2 appears more"):
        decode_row_group(table, spec, Location(str(part), 0))
    (side / "items.parquet").unlink()
    with pytest.raises(DataError, match=r"items\.parquet: lookup table does not exist"):
        decode_row_group(table, spec, Location(str(part), 0))


def load_spec_text(folder: Path, text: str):  # type: ignore[no-untyped-def]
    path = folder / "spec.yaml"
    path.write_text(text)
    return load_spec(path)


def test_train_and_evaluate_with_a_spec_outside_the_data_folder(
    folder: Path, tmp_path: Path
) -> None:
    """--spec on train and evaluate: the data folder holds only Parquet days."""
    data, spec, run = folder / "logs", folder / "spec.yaml", tmp_path / "run"
    assert not list(data.glob("*.yaml"))
    runner = CliRunner()
    train = runner.invoke(
        app,
        ["train", "--config", "tiny", "--data", str(data), "--spec", str(spec),
         "--train-days", "1", "--out", str(run), "--quiet",
         "--set", "loss.ssl.weights={view: 0.1}"],
    )  # fmt: skip
    assert train.exit_code == 0, (train.output, train.exception)
    assert json.loads((run / "run.json").read_text())["spec"] == str(spec.resolve())
    resumed = runner.invoke(app, ["train", "--resume", "--out", str(run), "--quiet"])
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)  # no --spec again
    args = ["evaluate", "--run", str(run), "--data", str(data), "--days", "2"]
    result = runner.invoke(app, [*args, "--spec", str(spec)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "purchase" in result.output
    missing = runner.invoke(app, ["train", "--config", "tiny", "--data", str(data),
                                  "--train-days", "1", "--out", str(tmp_path / "r2")])  # fmt: skip
    assert "has no _spec.yaml (or spec.yaml); pass --spec PATH" in str(missing.exception)


@pytest.mark.parametrize("scale", [1, 10**12, -1])  # dense keys, sparse keys, negative keys
def test_lookup_attribute_matches_a_dict(tmp_path: Path, scale: int) -> None:
    from dhen_cvr.data.lookup import lookup_attribute
    from dhen_cvr.data.spec import LookupSpec

    rng = np.random.default_rng(3)
    keys = rng.permutation(5000)[:3000] * scale
    attr = rng.integers(0, 50, len(keys))
    path = tmp_path / "side.parquet"
    pq.write_table(pa.table({"k": keys, "a": attr}), path)
    lookup = LookupSpec(name="t", path=str(path), key="k", columns=["a"])
    ids = [*rng.choice(keys, 200).tolist(), *(rng.integers(0, 5000, 50) * scale).tolist(),
           None, -7, 10**15]  # fmt: skip
    want = dict(zip(keys.tolist(), attr.tolist(), strict=True))
    got = lookup_attribute(pa.array(ids, pa.int64()), lookup, "a").to_pylist()
    assert got == [want.get(i) for i in ids]
    names = pa.array([str(k) for k in keys])
    pq.write_table(pa.table({"k": names, "a": attr}), path)
    asked = pa.array([str(i) if i is not None else None for i in ids])
    got = lookup_attribute(asked, lookup, "a").to_pylist()
    assert got == [want.get(i) for i in ids]
