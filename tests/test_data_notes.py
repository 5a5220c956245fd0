"""Train-start notes: every silent cut or default that changes what the model sees."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from byo_data import write_foreign_logs
from dhen_cvr.config import load_experiment_config
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.data.writer import day_dirs
from dhen_cvr.train.data_notes import report_data_notes

SPEC = {
    "request_time": "event_time",
    "user_id": "uid",
    "features": [
        {"name": "gender", "role": "categorical", "category": "demographic", "vocab_size": 3},
        {"name": "device", "role": "categorical", "category": "context", "vocab_size": 5},
        {"name": "item_id", "role": "categorical", "category": "candidate", "vocab_size": 100},
        {"name": "view", "role": "sequence", "max_len": 50, "timestamp": "view_ts",
         "fields": [{"name": "view_item", "vocab_size": 500}]},
    ],
    "labels": [{"name": "purchase"}],
}  # fmt: skip


def test_cuts_and_defaults_are_printed_and_stored(tmp_path: Path) -> None:
    data = write_foreign_logs(tmp_path / "logs", days=1, rows=300)
    spec = FeatureSpec.from_dict(SPEC)
    config = load_experiment_config("tiny", ["model.drop_categories=[context]"])
    said: list[str] = []
    run = tmp_path / "run"
    notes = report_data_notes(run, spec, config, day_dirs(data), say=said.append)
    by_kind = {n.kind: n for n in notes if n.kind != "oov"}
    oov = {n.name: n.message for n in notes if n.kind == "oov"}
    assert by_kind["max_len_cut"].message == (
        "sequence 'view': the spec keeps 50 newest items, the config's "
        "model.sequence.max_len_cap keeps 32"
    )
    assert by_kind["dropped_category"].message.endswith("removes 1 feature(s): device")
    unused = by_kind["unused_columns"].message
    assert "uid" not in unused and unused.endswith(
        "age, n_orders_30d, item_vec, view_cat, cart_ts, cart_item, debug, click"
    )
    assert set(oov) == {"gender", "item_id"}  # view_item (vocab 500) fits
    assert (
        "'gender': all 300 sampled values map to the out-of-vocabulary row: string ids"
        in oov["gender"]
    )
    items = pq.read_table(next(data.glob("dt=*/*.parquet")))["item_id"].to_numpy()
    share = f"{(items >= 100).mean():.0%} of 300 sampled values"
    assert share in oov["item_id"] and "ids at or above vocab_size" in oov["item_id"]
    assert said == [f"note: {n.message}" for n in notes]
    stored = json.loads((run / "data_notes.json").read_text())["notes"]
    assert [n["message"] for n in stored] == [n.message for n in notes]
