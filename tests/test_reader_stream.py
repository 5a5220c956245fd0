"""The streaming reader: sharding across ranks x workers, shuffling, determinism, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dhen_cvr.data.reader import ParquetBatchStream, make_loader, num_rows
from reader_testdata import SPEC, write_dataset


def _ids(stream: ParquetBatchStream, num_workers: int) -> list[np.ndarray]:
    return [b.extras["row_id"].numpy() for b in make_loader(stream, num_workers=num_workers)]


def _stream(days: list[Path], **kw: object) -> ParquetBatchStream:
    args: dict[str, object] = {"batch_size": 16, "shuffle_buffer": 100, "extra_columns": ["row_id"]}
    args.update(kw)
    return ParquetBatchStream(days, SPEC, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], int]:
    days, table = write_dataset(tmp_path_factory.mktemp("ds"))
    return days, table.num_rows


def test_two_ranks_two_workers_see_every_row_exactly_once(dataset: tuple[list[Path], int]) -> None:
    days, n = dataset
    assert num_rows(days) == n == 390
    for epoch in (0, 1):
        seen, per_rank = [], []
        for rank in (0, 1):
            stream = _stream(days, rank=rank, world_size=2)
            stream.set_epoch(epoch)
            batches = _ids(stream, num_workers=2)
            assert len(batches) == stream.num_batches(num_workers=2)
            assert sum(len(b) < 16 for b in batches) <= 2  # only each worker's last batch
            per_rank.append(np.concatenate(batches))
            seen.append(per_rank[-1])
        all_ids = np.concatenate(seen)
        assert len(all_ids) == n
        np.testing.assert_array_equal(np.sort(all_ids), np.arange(n))
        assert set(per_rank[0]).isdisjoint(per_rank[1])
        assert len(per_rank[0]) > 0 and len(per_rank[1]) > 0


def test_order_is_deterministic_and_depends_on_seed_and_epoch(
    dataset: tuple[list[Path], int],
) -> None:
    days, n = dataset
    first = np.concatenate(_ids(_stream(days, seed=3), 0))
    again = np.concatenate(_ids(_stream(days, seed=3), 0))
    np.testing.assert_array_equal(first, again)
    other_seed = np.concatenate(_ids(_stream(days, seed=4), 0))
    epoch1 = _stream(days, seed=3)
    epoch1.set_epoch(1)
    other_epoch = np.concatenate(_ids(epoch1, 0))
    for other in (other_seed, other_epoch):
        assert sorted(other.tolist()) == list(range(n)) and not np.array_equal(first, other)
    # Workers are deterministic too, and the rows are mixed across row groups of 40 rows.
    two = _stream(days, seed=3)
    np.testing.assert_array_equal(np.concatenate(_ids(two, 2)), np.concatenate(_ids(two, 2)))
    assert np.ptp(first[:16] // 40) > 1


def test_no_shuffle_reads_in_file_order_and_drop_last(dataset: tuple[list[Path], int]) -> None:
    days, n = dataset
    ordered = np.concatenate(_ids(_stream(days, shuffle=False), 0))
    np.testing.assert_array_equal(ordered, np.arange(n))
    dropped = _ids(_stream(days, shuffle=False, drop_last=True), 0)
    assert [len(b) for b in dropped] == [16] * (n // 16)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_skip_batches_resumes_exactly(dataset: tuple[list[Path], int], num_workers: int) -> None:
    days, _ = dataset
    stream = _stream(days, seed=7)
    stream.set_epoch(2)
    full = _ids(stream, num_workers)
    assert len(full) == stream.num_batches(num_workers)
    for skip in (1, 5, 8, len(full) - 1, len(full)):  # mid-buffer, refill boundaries, the end
        stream.set_epoch(2, skip_batches=skip)
        resumed = _ids(stream, num_workers)
        assert len(resumed) == len(full) - skip
        for want, got in zip(full[skip:], resumed, strict=True):
            np.testing.assert_array_equal(want, got)


def test_rank_batch_counts_come_from_metadata(dataset: tuple[list[Path], int]) -> None:
    """Every rank can compute every rank's batch count (to stop DDP at the minimum)."""
    days, _ = dataset
    rank0 = _stream(days, world_size=3, rank=0)
    for r in range(3):
        actual = len(_ids(_stream(days, world_size=3, rank=r), 2))
        assert rank0.num_batches(num_workers=2, rank=r) == actual > 0
