"""A Parquet impression log the project did not write: hive-partitioned by pyarrow's own
``write_to_dataset`` (``dt=*/<uuid>-0.parquet``), other column names and types than the
synthetic world (string ids, int32, a timestamp-free struct column, ragged float lists),
two sequences as parallel list columns. Purchases depend on whether the candidate item
was viewed before, so there is something to learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC
N_ITEMS = 500
DAY = 86_400


def write_foreign_logs(root: Path, days: int = 4, rows: int = 600, seed: int = 0) -> Path:
    """Write ``root/dt=2026-01-0D/*.parquet`` and return ``root``."""
    rng = np.random.default_rng(seed)
    tables = []
    for d in range(days):
        t = T0 + d * DAY + np.sort(rng.integers(3600, DAY, rows))
        uid = rng.integers(0, 300, rows)
        item = rng.integers(0, N_ITEMS, rows)
        n_view = rng.integers(0, 9, rows)
        view_item, view_ts, view_cat, cart_item, cart_ts, seen = [], [], [], [], [], []
        for i in range(rows):
            ids = rng.integers(0, N_ITEMS, n_view[i])
            if rng.random() < 0.4 and n_view[i]:
                ids[-1] = item[i]
            view_item.append(ids.tolist())
            view_ts.append(np.sort(t[i] - rng.integers(60, 20 * DAY, n_view[i])).tolist())
            view_cat.append([f"c{x % 17}" for x in ids])
            k = int(rng.integers(0, 3))
            cart_item.append(rng.integers(0, N_ITEMS, k).tolist())
            cart_ts.append(np.sort(t[i] - rng.integers(60, 5 * DAY, k)).tolist())
            seen.append(item[i] in ids)
        seen_arr = np.asarray(seen)
        click = (rng.random(rows) < np.where(seen_arr, 0.5, 0.15)).astype(np.int8)
        purchase = (click & (rng.random(rows) < np.where(seen_arr, 0.6, 0.1))).astype(np.int8)
        vec = rng.normal(size=(rows, 4)).astype(np.float32)
        tables.append(
            pa.table(
                {
                    "event_time": pa.array(t, pa.int64()),
                    "request_id": pa.array(d * rows + np.arange(rows), pa.int64()),
                    "uid": pa.array(uid, pa.int64()),
                    "age": pa.array(rng.uniform(18, 70, rows), pa.float32()),
                    "n_orders_30d": pa.array(rng.poisson(2, rows).astype(np.float64)),
                    "gender": pa.array(rng.choice(["f", "m", "x"], rows)),
                    "device": pa.array(rng.integers(0, 5, rows), pa.int32()),
                    "item_id": pa.array(item, pa.int64()),
                    "item_vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), 4),
                    "view_ts": pa.array(view_ts, pa.list_(pa.int64())),
                    "view_item": pa.array(view_item, pa.list_(pa.int64())),
                    "view_cat": pa.array(view_cat, pa.list_(pa.string())),
                    "cart_ts": pa.array(cart_ts, pa.list_(pa.int64())),
                    "cart_item": pa.array(cart_item, pa.list_(pa.int64())),
                    "debug": pa.array([{"a": int(x)} for x in uid]),
                    "click": pa.array(click),
                    "purchase": pa.array(purchase),
                    "dt": pa.array([f"2026-01-0{d + 1}"] * rows),
                }
            )
        )
    pq.write_to_dataset(pa.concat_tables(tables), root, partition_cols=["dt"])
    return root
