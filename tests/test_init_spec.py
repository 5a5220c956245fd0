"""``dhen-cvr init-spec``: a drafted spec for a Parquet folder the project did not write,
the synthetic world's draft against its real spec, and init-spec -> validate -> train ->
evaluate in four CLI commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from byo_data import write_foreign_logs
from dhen_cvr.cli import app
from dhen_cvr.data.init_spec import draft_spec
from dhen_cvr.data.spec import (
    CategoricalFeature,
    DenseFeature,
    FeatureSpec,
    PretrainedFeature,
    load_data_spec,
)
from dhen_cvr.data.synth import WorldConfig, synthesize


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_foreign_logs(tmp_path_factory.mktemp("byo") / "logs")


def guessed_notes(text: str) -> dict[str, list[str]]:
    """name -> the ``# guessed:`` lines about it: the comments right above its entry,
    and ``# guessed: field NAME:`` lines of sequence fields."""
    notes: dict[str, list[str]] = {}
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# guessed:"):
            pending.append(line)
            if m := re.match(r"# guessed: field (\w+):", line):
                notes.setdefault(m[1], []).append(line)
            continue
        m = re.match(r"- (?:\{name: |name: )([\w]+)", line)
        if m:
            notes.setdefault(m[1], []).extend(pending)
        if not line.startswith("#"):
            pending = []
    return notes


def test_draft_of_a_foreign_parquet_folder(foreign: Path) -> None:
    draft = draft_spec(foreign)
    spec = draft.spec
    assert (spec.request_time, spec.user_id) == ("event_time", "uid")
    by_name = {f.name: f for f in spec.features}
    assert isinstance(by_name["age"], DenseFeature) and not by_name["age"].log1p
    orders = by_name["n_orders_30d"]
    assert isinstance(orders, DenseFeature) and orders.log1p and orders.category == "counting"
    gender, device, item = by_name["gender"], by_name["device"], by_name["item_id"]
    assert isinstance(gender, CategoricalFeature) and gender.hash_buckets == 1024
    assert isinstance(device, CategoricalFeature) and device.vocab_size == 5
    assert device.category == "context"
    largest = max(pq.read_table(foreign, columns=["item_id"])["item_id"].to_pylist())
    assert isinstance(item, CategoricalFeature) and item.category == "candidate"
    assert item.table == "item" and item.vocab_size >= largest + 1
    vec = by_name["item_vec"]
    assert isinstance(vec, PretrainedFeature) and vec.dim == 4
    view, cart = spec.sequences
    assert (view.name, view.timestamp, [f.name for f in view.fields]) == (
        "view",
        "view_ts",
        ["view_item", "view_cat"],
    )
    assert view.max_len == 8 and view.fields[1].hash_buckets is not None
    assert {view.fields[0].table, cart.fields[0].table} == {"item"}  # shared with item_id
    assert [(lb.name, lb.serve) for lb in spec.labels] == [("click", False), ("purchase", True)]
    assert [d.split(" ")[0] for d in draft.dropped] == ["request_id", "debug"]
    assert "request_id (looks like a per-row id" in draft.text
    notes = guessed_notes(draft.text)
    for name in [*by_name, "view_item", "view_cat", "cart_item", "click", "purchase"]:
        assert notes.get(name), f"no '# guessed:' comment on {name}"
    assert FeatureSpec.from_dict(yaml.safe_load(draft.text)) == spec  # what was parsed


def _vocab(f: object) -> int | None:
    return getattr(f, "vocab_size", None)


def test_drafted_spec_of_the_synthetic_world_matches_the_real_one(tmp_path: Path) -> None:
    out = tmp_path / "world"
    synthesize(out, WorldConfig(users=150, days=2, impressions_per_day=6000, max_seq_len=12))
    real = load_data_spec(out)
    draft = draft_spec(out)
    drafted, notes = draft.spec, guessed_notes(draft.text)
    assert (drafted.request_time, drafted.user_id) == (real.request_time, real.user_id)
    assert [(lb.name, lb.serve, lb.mask) for lb in drafted.labels] == [
        (lb.name, lb.serve, lb.mask) for lb in real.labels
    ]
    assert drafted.sampling.inclusion_column == real.sampling.inclusion_column
    assert drafted.sampling.negative_rate == pytest.approx(real.sampling.negative_rate)
    assert drafted.keep_label_names == real.keep_label_names
    want = {f.name: f for f in real.features}
    got = {f.name: f for f in drafted.features}
    assert set(got) == set(want)
    exact = mismatched = 0
    for name, f in want.items():
        g = got[name]
        assert (g.role, g.category) == (f.role, f.category), name
        pairs = [(g, f)]
        if f.role == "sequence":
            assert g.timestamp == f.timestamp and g.max_len <= f.max_len  # type: ignore[union-attr]
            assert [x.name for x in g.fields] == [x.name for x in f.fields]  # type: ignore[union-attr]
            pairs = list(zip(g.fields, f.fields, strict=True))  # type: ignore[union-attr,arg-type]
        if f.role == "pretrained":
            assert g.dim == f.dim  # type: ignore[union-attr]
        for gi, fi in pairs:
            if _vocab(fi) is None or _vocab(gi) == _vocab(fi):
                exact += _vocab(fi) is not None
                continue
            mismatched += 1
            why = " ".join(notes.get(gi.name, []))
            gv, fv = _vocab(gi), _vocab(fi)
            assert gv is not None and fv is not None, gi.name
            # Smaller: the data never showed the top ids; larger: a shared table's largest.
            reason = "largest id seen" if gv < fv else "shared with"
            assert reason in why and f"vocab_size {gv}" in why, (gi.name, gv, fv, why)
    assert exact >= 2 * mismatched, (exact, mismatched)


def test_problems_the_draft_cannot_fix_are_named(tmp_path: Path, foreign: Path) -> None:
    """A dense column with nulls and a folder with no label: the draft says so, and
    ``validate`` names what to change."""
    data = tmp_path / "nulls"
    table = pq.read_table(foreign, partitioning="hive")
    ages = table["age"].to_pylist()
    ages[3] = None
    table = table.set_column(
        table.schema.get_field_index("age"), "age", pa.array(ages, pa.float32())
    )
    pq.write_to_dataset(table, data, partition_cols=["dt"])
    no_labels = tmp_path / "no_labels"
    pq.write_to_dataset(table.drop_columns(["click", "purchase"]), no_labels, partition_cols=["dt"])
    runner = CliRunner()
    for folder in (data, no_labels):
        result = runner.invoke(app, ["init-spec", str(folder)])
        assert result.exit_code == 0, result.output
    text = (data / "_spec.yaml").read_text()
    assert "1 null value(s): validate will reject them" in guessed_notes(text)["age"][-1]
    result = runner.invoke(app, ["validate", str(data)])
    assert result.exit_code == 1
    assert "column 'age', row 3: null value in a dense feature" in result.output
    assert "no 0/1 column named like a label" in (no_labels / "_spec.yaml").read_text()
    result = runner.invoke(app, ["validate", str(no_labels)])
    assert result.exit_code == 1
    assert "column 'TODO_label_column': missing column" in result.output
    again = runner.invoke(app, ["init-spec", str(data)])
    assert again.exit_code != 0 and "exists" in str(again.exception)


def test_four_commands_from_a_foreign_parquet_folder(tmp_path: Path, foreign: Path) -> None:
    """init-spec -> validate -> train -> evaluate, as the README shows."""
    data, run = tmp_path / "logs", tmp_path / "run"
    pq.write_to_dataset(pq.read_table(foreign, partitioning="hive"), data, partition_cols=["dt"])
    runner = CliRunner()
    commands = [
        ["init-spec", str(data)],
        ["validate", str(data)],
        ["train", "--config", "tiny", "--data", str(data), "--train-days", "1-3",
         "--out", str(run), "--quiet", "--set", "loss.ssl.weights={view: 0.1}"],
        ["evaluate", "--run", str(run), "--data", str(data), "--days", "4"],
    ]  # fmt: skip
    outputs = []
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output, result.exception)
        outputs.append(result.output)
    assert "4 files, 4 row groups, 2400 rows: OK" in outputs[1]
    assert "are not in the spec and not read: request_id, debug" in outputs[2]
    assert "purchase" in outputs[3] and "day 2026-01-04" in outputs[3]
    notes = json.loads((run / "data_notes.json").read_text())["notes"]
    assert [n["kind"] for n in notes] == ["unused_columns"]
    # The spec file beside the days does not get in the way of other Parquet readers.
    assert ds.dataset(data, format="parquet", partitioning="hive").count_rows() == 2400
