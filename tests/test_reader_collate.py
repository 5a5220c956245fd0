"""Collation: every tensor of a Batch equals an independent per-row recomputation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhen_cvr.data.batch import Batch
from dhen_cvr.data.mapping import map_ids
from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from reader_testdata import DAY0, MAX_LEN, SPEC, make_table, write_dataset


def _read_all(path: Path | list[Path], batch_size: int = 64, **kw: object) -> list[Batch]:
    stream = ParquetBatchStream(
        path if isinstance(path, list) else [path],
        SPEC,
        batch_size=batch_size,
        extra_columns=["row_id"],
        **kw,  # type: ignore[arg-type]
    )
    return list(make_loader(stream))


def _seq_table(seqs: list[list[int] | None], ts: list[int]) -> pa.Table:
    """Four rows with hand-written sequences; other columns from make_table."""
    base = make_table(len(seqs), seed=0)
    items = [None if s is None else [100 + k for k in range(len(s))] for s in seqs]
    actions = [None if s is None else [k % 4 for k in range(len(s))] for s in seqs]
    base = base.set_column(base.schema.get_field_index("ts"), "ts", pa.array(ts, pa.int64()))
    for name, col in (("clicks_ts", seqs), ("clicks_item", items), ("clicks_action", actions)):
        base = base.set_column(
            base.schema.get_field_index(name), name, pa.array(col, pa.list_(pa.int64()))
        )
    return base


def test_padding_masks_truncation_and_time_features(tmp_path: Path) -> None:
    t0 = DAY0
    long = [t0 + 10 * k * k for k in range(8)]  # 8 items > MAX_LEN = 5, uneven gaps
    seqs: list[list[int] | None] = [[], None, [t0, t0 + 7, t0 + 7], long]
    request = [t0 + 5, t0 + 5, t0 + 100, t0 + 1000]
    path = tmp_path / "seq.parquet"
    pq.write_table(_seq_table(seqs, request), path)
    (batch,) = _read_all(path, shuffle=False)
    s = batch.sequences["clicks"]
    assert s.mask.shape == (4, MAX_LEN) and s.time.shape == (4, MAX_LEN, 2)
    np.testing.assert_array_equal(s.lengths.numpy(), [0, 0, 3, MAX_LEN])
    np.testing.assert_array_equal(
        s.mask.numpy(), np.arange(MAX_LEN) < np.array([[0], [0], [3], [5]])
    )
    # The newest MAX_LEN items are kept, oldest first; vocab ids map to id + 1; padding is 0.
    np.testing.assert_array_equal(s.ids["clicks_item"][3].numpy(), [104, 105, 106, 107, 108])
    np.testing.assert_array_equal(s.ids["clicks_item"][2].numpy(), [101, 102, 103, 0, 0])
    np.testing.assert_array_equal(s.ids["clicks_action"][3].numpy(), [4, 1, 2, 3, 4])
    assert not s.ids["clicks_item"][:2].any() and not s.time[:2].any()
    # Time features, float64 reference: gap to the previous item (also for the first kept
    # item of a cut sequence), 0 for a sequence's first item; age at the request.
    for row, seq in ((2, seqs[2]), (3, long)):
        assert seq is not None
        kept = range(len(seq) - min(len(seq), MAX_LEN), len(seq))
        gaps = [math.log(seq[i] - seq[i - 1] + 1) if i else 0.0 for i in kept]
        ages = [math.log(request[row] - seq[i] + 1) for i in kept]
        n = len(gaps)
        np.testing.assert_allclose(s.time[row, :n, 0].numpy(), gaps, rtol=1e-6)
        np.testing.assert_allclose(s.time[row, :n, 1].numpy(), ages, rtol=1e-6)
        assert not s.time[row, n:].any()


def test_all_empty_sequences_give_width_one(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pq.write_table(_seq_table([[], None], [DAY0, DAY0]), path)
    (batch,) = _read_all(path)
    s = batch.sequences["clicks"]
    assert s.ids["clicks_item"].shape == (2, 1) and s.time.shape == (2, 1, 2)
    assert not s.mask.any() and not s.lengths.any()


def test_every_tensor_matches_its_source_row(tmp_path: Path) -> None:
    days, table = write_dataset(tmp_path, files_per_day=(2,), rows_per_file=90, row_group_size=25)
    src = table.to_pydict()
    batches = _read_all(days, batch_size=32, shuffle_buffer=60, seed=1)
    assert sum(len(b) for b in batches) == table.num_rows
    for batch in batches:
        rows = batch.extras["row_id"].numpy()
        assert batch.dense.dtype.is_floating_point and batch.dense.shape == (len(rows), 2)
        np.testing.assert_allclose(batch.dense[:, 0].numpy(), np.array(src["age"])[rows], rtol=1e-6)
        np.testing.assert_array_equal(batch.dense[:, 1].numpy(), np.array(src["n_clicks"])[rows])
        np.testing.assert_array_equal(
            batch.categorical["gender"].numpy(), np.array(src["gender"])[rows] + 1
        )
        city = SPEC.categorical[1]
        np.testing.assert_array_equal(
            batch.categorical["city"].numpy(),
            map_ids(pa.array([src["city"][r] for r in rows]), city),
        )
        np.testing.assert_allclose(
            batch.pretrained["user_emb"].numpy(), np.array(src["user_emb"])[rows], rtol=1e-6
        )
        click = np.array(src["click"])[rows]
        buy = [src["buy"][r] for r in rows]
        np.testing.assert_array_equal(batch.labels[:, 0].numpy(), click)
        np.testing.assert_array_equal(batch.labels[:, 1].numpy(), [b or 0.0 for b in buy])
        np.testing.assert_array_equal(batch.label_mask[:, 0].numpy(), np.ones(len(rows)))
        np.testing.assert_array_equal(batch.label_mask[:, 1].numpy(), [b is not None for b in buy])
        np.testing.assert_array_equal(batch.inclusion_prob.numpy(), np.where(click == 1, 1.0, 0.5))
        np.testing.assert_array_equal(batch.weight.numpy(), np.ones(len(rows)))
        assert batch.oracle is not None
        np.testing.assert_allclose(
            batch.oracle[:, 0].numpy(), np.array(src["oracle_click"])[rows], rtol=1e-6
        )
        assert batch.oracle[:, 1].isnan().all()  # no oracle_buy column
        s = batch.sequences["clicks"]
        assert s.ids["clicks_item"].shape[1] == max(1, int(s.lengths.max()))
        for b, r in enumerate(rows):
            ts, items = src["clicks_ts"][r], src["clicks_item"][r]
            keep = min(len(ts), MAX_LEN)
            assert int(s.lengths[b]) == keep
            np.testing.assert_array_equal(
                s.ids["clicks_item"][b, :keep].numpy(), np.array(items[len(ts) - keep :]) + 1
            )
            ages = [math.log(src["ts"][r] - t + 1) for t in ts[len(ts) - keep :]]
            np.testing.assert_allclose(s.time[b, :keep, 1].numpy(), ages, rtol=1e-6)


def test_no_oracle_column_gives_none_and_weights_are_read(tmp_path: Path) -> None:
    table = make_table(20, seed=3).drop_columns(["oracle_click"])
    table = table.append_column("w", pa.array(np.linspace(0.5, 2.0, 20)))
    pq.write_table(table, tmp_path / "a.parquet")
    spec = SPEC.model_copy(update={"weight_column": "w"})
    stream = ParquetBatchStream([tmp_path], spec, batch_size=50, shuffle=False)
    (batch,) = list(stream)
    assert batch.oracle is None
    np.testing.assert_allclose(batch.weight.numpy(), np.linspace(0.5, 2.0, 20), rtol=1e-6)


@pytest.mark.skipif(
    not Path(__file__).parent.parent.joinpath("src/dhen_cvr/data/synth").exists(),
    reason="the synthetic world is not in this tree",
)
def test_reads_the_synthetic_world(tmp_path: Path) -> None:
    synth = pytest.importorskip("dhen_cvr.data.synth")
    from dhen_cvr.data.spec import load_spec

    if not hasattr(synth, "synthesize") or not hasattr(synth, "WorldConfig"):
        pytest.skip("dhen_cvr.data.synth has no synthesize/WorldConfig yet")
    out = tmp_path / "world"
    synth.synthesize(
        out, synth.WorldConfig(days=2, users=200, impressions_per_day=2000, seed=0, max_seq_len=20)
    )
    spec = load_spec(out / "_spec.yaml")
    from dhen_cvr.data.writer import day_dirs

    stream = ParquetBatchStream(day_dirs(out), spec, batch_size=256)
    batches = list(make_loader(stream))
    assert sum(len(b) for b in batches) == stream.num_rows > 0
    assert batches[0].oracle is not None and not batches[0].oracle.isnan().all()
