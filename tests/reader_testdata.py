"""Hand-made Parquet data sets with known content for the reader, stats and bad-input tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dhen_cvr.data.spec import FeatureSpec

MAX_LEN = 5
DAY0 = 1_700_000_000

SPEC = FeatureSpec.from_dict(
    {
        "name": "reader-test",
        "request_time": "ts",
        "user_id": "row_id",
        "features": [
            {"name": "age", "role": "dense", "category": "demographic"},
            {"name": "n_clicks", "role": "dense", "category": "counting", "log1p": True},
            {"name": "gender", "role": "categorical", "category": "demographic", "vocab_size": 3},
            {"name": "city", "role": "categorical", "category": "demographic", "hash_buckets": 50},
            {"name": "user_emb", "role": "pretrained", "category": "pretrained", "dim": 4},
            {
                "name": "ad_id",
                "role": "categorical",
                "category": "candidate",
                "vocab_size": 1000,
                "table": "item",
            },
            {
                "name": "clicks",
                "role": "sequence",
                "max_len": MAX_LEN,
                "timestamp": "clicks_ts",
                "fields": [
                    {"name": "clicks_item", "vocab_size": 1000, "table": "item"},
                    {"name": "clicks_action", "vocab_size": 4},
                ],
            },
        ],
        "labels": [{"name": "click", "serve": False}, {"name": "buy", "mask": "click"}],
        "sampling": {"negative_rate": 0.5, "inclusion_column": "incl"},
    }
)


def make_table(n: int, seed: int, first_id: int = 0, max_items: int = 9) -> pa.Table:
    """``n`` rows; ``row_id`` = first_id..; sequences of 0..max_items items (so some are
    empty and some longer than MAX_LEN), ascending timestamps before ``ts``."""
    rng = np.random.default_rng(seed)
    ts = DAY0 + rng.integers(0, 86_400, n)
    lengths = rng.integers(0, max_items + 1, n)
    seq_ts, seq_item, seq_action = [], [], []
    for i in range(n):
        k = int(lengths[i])
        gaps = rng.integers(1, 5_000, k)
        t = ts[i] - np.cumsum(gaps)[::-1]  # ascending, all < ts[i]
        seq_ts.append(t.tolist())
        seq_item.append(rng.integers(0, 1000, k).tolist())
        seq_action.append(rng.integers(0, 4, k).tolist())
    click = (rng.random(n) < 0.4).astype(np.int64)
    buy = np.where(click == 1, (rng.random(n) < 0.5).astype(np.float64), np.nan)
    return pa.table(
        {
            "row_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "ts": ts.astype(np.int64),
            "age": rng.uniform(18, 80, n),
            "n_clicks": rng.integers(0, 500, n).astype(np.int64),
            "gender": rng.integers(0, 3, n),
            "city": pa.array([f"city{c}" for c in rng.integers(0, 20, n)]),
            "user_emb": pa.array(
                rng.normal(size=(n, 4)).astype(np.float32).tolist(), pa.list_(pa.float32())
            ),
            "ad_id": rng.integers(0, 1000, n),
            "clicks_ts": pa.array(seq_ts, pa.list_(pa.int64())),
            "clicks_item": pa.array(seq_item, pa.list_(pa.int64())),
            "clicks_action": pa.array(seq_action, pa.list_(pa.int64())),
            "click": click,
            "buy": pa.array(buy, from_pandas=True),  # NaN -> null: undefined when no click
            "incl": np.where(click == 1, 1.0, 0.5),
            "oracle_click": rng.random(n),
        }
    )


def write_dataset(
    root: Path,
    files_per_day: tuple[int, ...] = (2, 1),
    rows_per_file: int = 130,
    row_group_size: int = 40,
) -> tuple[list[Path], pa.Table]:
    """Day folders under ``root`` and the concatenation of everything written."""
    days, tables = [], []
    next_id = 0
    for d, n_files in enumerate(files_per_day):
        folder = root / f"dt=2024-01-0{d + 1}"
        folder.mkdir(parents=True)
        days.append(folder)
        for f in range(n_files):
            t = make_table(rows_per_file, seed=100 * d + f, first_id=next_id)
            next_id += rows_per_file
            pq.write_table(t, folder / f"part-{f:05d}.parquet", row_group_size=row_group_size)
            tables.append(t)
    return days, pa.concat_tables(tables)
