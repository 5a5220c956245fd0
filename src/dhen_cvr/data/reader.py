"""Streaming Parquet reader: row groups -> shuffled, sharded, collated :class:`Batch` es.

Issue 2 item 4, DESIGN sections 2 and 5. Use it through a ``DataLoader`` with
``batch_size=None`` (batches are collated inside the stream, in the workers)::

    stream = ParquetBatchStream(day_dirs(root)[:-1], spec, batch_size=1024, seed=0)
    loader = make_loader(stream, num_workers=2)
    for epoch in range(n):
        stream.set_epoch(epoch)
        for batch in loader: ...

How an epoch is read
--------------------
* **Units** are the ``(file, row group)`` pairs of all sources, sorted by file then group;
  a whole day is never read at once.
* **Sharding.** Each epoch the unit list is permuted under ``(seed, epoch)`` (the same on
  every rank). Shard ``rank * num_workers + worker`` of ``world_size * num_workers``
  takes every ``world_size * num_workers``-th unit of that order: a partition, so every
  row is read exactly once per epoch, without duplicates or gaps. Ranks may get
  different numbers of batches; :meth:`ParquetBatchStream.num_batches` tells each rank
  the count of every rank (from metadata, no communication) so a DDP loop can stop at
  the minimum.
* **Shuffling** (bounded memory). Decoded row groups are gathered into a window until it
  holds ``shuffle_buffer`` rows; the window's rows are permuted and emitted as full
  batches; the few rows left over (fewer than a batch) open the next window. At most
  ``shuffle_buffer`` + one row group + one batch of rows are held. Batches are gathered
  straight from the window's row groups (nothing is concatenated), rows of the same row
  group adjacent within a batch. The permutations use an RNG seeded by
  ``(seed, epoch, shard, num_shards)``, so the order is deterministic for a given
  ``(world_size, num_workers)``. All batches are full except the shard's last one
  (dropped with ``drop_last``). ``shuffle=False`` reads units in file order and emits
  rows in file order.
* **Resuming** (``set_epoch(epoch, skip_batches=k)``): ``k`` counts the batches this
  *rank* already consumed from the ``DataLoader`` in this epoch. With ``w`` workers the
  ``DataLoader`` (``in_order=True``, the default) yields worker 0's first batch, worker
  1's first, ..., then every worker's second, and so on, dropping workers that ran out.
  Every worker's batch count is known from metadata, so each worker works out where the
  rank stream stopped and which shard-worker's stream it must continue (a fresh
  DataLoader restarts at worker 0, so roles rotate) and how many of its batches to skip.
  The shuffle plan depends only on row counts: skipped windows are not read at all,
  and only the leftover rows carried into the resume window are re-read. The
  remaining batches are identical to those of an uninterrupted run, for any
  ``num_workers`` (the same before and after the resume).

Collation (no per-row Python): ids are mapped and time features computed once per row
group on the flat Arrow buffers (:mod:`dhen_cvr.data.decode`), on a background thread
one row group ahead; a batch is then a few numpy gathers. ``T`` is the batch's longest
sequence (at least 1, at most ``max_len``). Time features of an item are
``[log(t[i] - t[i-1] + 1), log(request_time - t[i] + 1)]`` where ``t[i-1]`` is the
previous item of the *full* sequence, even when it was cut by ``max_len`` (0 only for a
sequence's very first item), so an item's features do not depend on ``max_len``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dhen_cvr.data.batch import Batch, SequenceBatch, combine_fields
from dhen_cvr.data.decode import (
    Location,
    RowBlock,
    SequenceColumns,
    check_schema,
    decode_row_group,
    open_parquet,
    parquet_files,
    ragged_arange,
    read_row_group,
)
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.errors import DataError

__all__ = [
    "BatchLoader",
    "ParquetBatchStream",
    "RowGroupUnit",
    "collate_rows",
    "make_loader",
    "num_rows",
]


@dataclass(frozen=True)
class RowGroupUnit:
    """One row group: the unit of reading and of sharding."""

    file: str
    index: int
    num_rows: int
    first_row: int  # row offset of this group within its file


def num_rows(sources: Sequence[str | Path] | str | Path) -> int:
    """Total rows of ``sources`` from Parquet metadata (reads no data)."""
    return sum(open_parquet(f).metadata.num_rows for f in parquet_files(_as_list(sources)))


def _as_list(sources: Sequence[str | Path] | str | Path) -> list[str | Path]:
    return [sources] if isinstance(sources, (str, Path)) else list(sources)


# ---- operations on decoded rows ---------------------------------------------------------
def _concat_sequences(parts: list[SequenceColumns]) -> SequenceColumns:
    sizes = np.array([p.num_items for p in parts], np.int64)
    shift = np.cumsum(sizes) - sizes
    pad_ids = np.zeros((parts[0].ids.shape[0], 1), np.int64)
    return SequenceColumns(
        fields=parts[0].fields,
        lengths=np.concatenate([p.lengths for p in parts]),
        starts=np.concatenate([p.starts + s for p, s in zip(parts, shift, strict=True)]),
        ids=np.concatenate([p.ids[:, :-1] for p in parts] + [pad_ids], axis=1),
        time=np.concatenate([p.time[:-1] for p in parts] + [np.zeros((1, 2), np.float32)]),
    )


def _take_sequence(seq: SequenceColumns, rows: np.ndarray) -> SequenceColumns:
    """Rows ``rows``, compacted so only their items (and the padding item) are kept."""
    lengths = seq.lengths[rows]
    idx = np.append(ragged_arange(seq.starts[rows], lengths), seq.num_items)
    return SequenceColumns(
        fields=seq.fields,
        lengths=lengths,
        starts=np.cumsum(lengths) - lengths,
        ids=np.take(seq.ids, idx, axis=1),
        time=np.take(seq.time, idx, axis=0),
    )


def _concat(blocks: list[RowBlock]) -> RowBlock:
    if len(blocks) == 1:
        return blocks[0]
    return combine_fields(blocks, np.concatenate, _concat_sequences, out=RowBlock)


def _take(block: RowBlock, rows: np.ndarray) -> RowBlock:
    def take_sequence(seqs: list[SequenceColumns]) -> SequenceColumns:
        return _take_sequence(seqs[0], rows)

    return combine_fields([block], lambda v: v[0][rows], take_sequence, out=RowBlock)


_Piece = tuple[RowBlock, np.ndarray]  # a decoded block and some of its row indices


def _rows(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))


def _pad_sequence(parts: list[tuple[SequenceColumns, np.ndarray]]) -> SequenceBatch:
    """Right-padded ``B x T`` tensors of the given rows, in order; ``T = max(1, longest)``.
    One gather per field and piece: padding positions point at the zero padding item."""
    lengths = np.concatenate([seq.lengths[rows] for seq, rows in parts])
    b, t = len(lengths), max(1, int(lengths.max(initial=0)))
    fields = parts[0][0].fields
    positions = np.arange(t)
    mask = positions < lengths[:, None]
    ids = np.empty((len(fields), b, t), np.int64)
    time = np.empty((b, t, 2), np.float32)
    lo = 0
    for seq, rows in parts:
        hi = lo + len(rows)
        idx = np.where(mask[lo:hi], seq.starts[rows][:, None] + positions, seq.num_items)
        for k in range(len(fields)):
            np.take(seq.ids[k], idx, out=ids[k, lo:hi], mode="clip")
        np.take(seq.time, idx, axis=0, out=time[lo:hi], mode="clip")
        lo = hi
    return SequenceBatch(
        ids={name: torch.from_numpy(ids[k]) for k, name in enumerate(fields)},
        time=torch.from_numpy(time),
        mask=torch.from_numpy(mask),
        lengths=torch.from_numpy(lengths),
    )


def _collate(pieces: list[_Piece]) -> Batch:
    """A :class:`Batch` of the pieces' rows, piece after piece."""
    blocks, rows = [blk for blk, _ in pieces], [r for _, r in pieces]

    def gather(values: list[np.ndarray]) -> torch.Tensor:
        return _rows([v[r] for v, r in zip(values, rows, strict=True)])

    def pad(seqs: list[SequenceColumns]) -> SequenceBatch:
        return _pad_sequence(list(zip(seqs, rows, strict=True)))

    return combine_fields(blocks, gather, pad, out=Batch)


def collate_rows(block: RowBlock, rows: np.ndarray | None = None) -> Batch:
    """A :class:`Batch` of rows ``rows`` (default: all) of a decoded block."""
    return _collate([(block, np.arange(len(block)) if rows is None else np.asarray(rows))])


class _Blocks:
    """Decoded blocks (the previous window's leftover rows, then new row groups) addressed
    as one range of rows, without concatenating them."""

    def __init__(self, blocks: list[RowBlock]) -> None:
        self.blocks = blocks
        sizes = np.array([len(b) for b in blocks], np.int64)
        self.ends = np.cumsum(sizes)
        self.starts = self.ends - sizes

    def pieces(self, rows: np.ndarray) -> list[_Piece]:
        """``rows`` grouped by block (stable), as block-local indices."""
        if len(self.blocks) == 1:
            return [(self.blocks[0], rows)]
        owner = np.searchsorted(self.ends, rows, side="right")
        order = np.argsort(owner, kind="stable")
        rows, owner = rows[order], owner[order]
        cuts = np.searchsorted(owner, np.arange(len(self.blocks) + 1))
        return [
            (blk, rows[cuts[i] : cuts[i + 1]] - self.starts[i])
            for i, blk in enumerate(self.blocks)
            if cuts[i + 1] > cuts[i]
        ]

    def collate(self, rows: np.ndarray) -> Batch:
        """The batch of ``rows``; rows from the same block are kept together (the batch's
        internal order does not matter to a loss)."""
        return _collate(self.pieces(rows))

    def take(self, rows: np.ndarray) -> RowBlock | None:
        if not len(rows):
            return None
        return _concat([_take(blk, r) for blk, r in self.pieces(rows)])


# ---- the shuffle plan (row counts only, no data) ------------------------------------------
@dataclass(frozen=True)
class _Window:
    """One shuffle window: the leftover rows of the previous window (shard row ids
    ``leftover_ids``) followed by the rows of ``new_units``. Batch k is the window positions
    ``order[ends[k-1]:ends[k]]``; the positions ``kept`` (fewer than a batch) carry over."""

    new_units: list[int]
    leftover_ids: np.ndarray
    order: np.ndarray
    ends: list[int]

    @property
    def kept(self) -> np.ndarray:
        return np.sort(self.order[self.ends[-1] if self.ends else 0 :])


def _plan(
    unit_rows: Sequence[int],
    batch_size: int,
    shuffle_buffer: int,
    drop_last: bool,
    rng: np.random.Generator | None,
) -> Iterator[_Window]:
    """The epoch's windows for one shard: row groups are gathered until the window holds
    ``shuffle_buffer`` rows (one row group without ``rng``), its rows are permuted, and all
    full batches are emitted."""
    starts = np.cumsum(unit_rows) - np.asarray(unit_rows, np.int64)
    fill_to = shuffle_buffer if rng is not None else 0
    leftover = np.zeros(0, np.int64)
    pending: list[int] = []
    total = 0
    for u in range(len(unit_rows)):
        pending.append(u)
        total += unit_rows[u]
        last = u == len(unit_rows) - 1
        if total < fill_to and not last:
            continue
        order = rng.permutation(total) if rng is not None else np.arange(total)
        ends = list(range(batch_size, total + 1, batch_size))
        if last and not drop_last and total % batch_size:
            ends.append(total)
        window = _Window(pending, leftover, order, ends)
        yield window
        ids = np.concatenate(
            [leftover, *(np.arange(starts[p], starts[p] + unit_rows[p]) for p in pending)]
        )
        leftover = ids[window.kept]
        pending = []
        total = len(leftover)


def _batches_of(rows: int, batch_size: int, drop_last: bool) -> int:
    return rows // batch_size if drop_last else -(-rows // batch_size)


def _resume_roles(skip: int, batches: Sequence[int]) -> list[tuple[int, int] | None]:
    """Per DataLoader worker: (the shard-worker whose stream it produces, batches of that
    stream to skip), so that the DataLoader's output equals the original rank stream
    without its first ``skip`` batches.

    The DataLoader takes one batch from each worker in turn (worker 0 first), dropping
    exhausted ones: round r yields worker v's batch r for each v with ``batches[v] > r``.
    Skipping ``skip`` batches stops inside round r at position j of its active workers A;
    a fresh DataLoader starts at worker 0 again, so worker p takes over the stream of
    ``A[(p + j) % len(A)]``: its order then continues exactly where the old one stopped.
    """
    remaining = skip
    for rnd in range(max(batches, default=0)):
        active = [v for v, n in enumerate(batches) if n > rnd]
        if remaining < len(active):
            j = remaining
            done = {v: rnd + (i < j) for i, v in enumerate(active)}
            roles: list[tuple[int, int] | None] = [None] * len(batches)
            for p in range(len(active)):
                v = active[(p + j) % len(active)]
                roles[p] = (v, done[v])
            return roles
        remaining -= len(active)
    return [None] * len(batches)  # everything was skipped


# ---- the stream -----------------------------------------------------------------------
class ParquetBatchStream(IterableDataset[Batch]):
    """An iterable of collated :class:`Batch` es over day folders / Parquet files.

    See the module docstring for sharding, shuffling and resuming. ``extra_columns`` are
    numeric columns returned in ``Batch.extras`` (e.g. a row id); oracle columns
    (``<oracle_prefix><label>``) are read where present. Files are opened and their
    schemas checked here (missing or wrongly typed columns, empty or corrupt files raise
    :class:`~dhen_cvr.errors.DataError`); values are checked while streaming.
    """

    def __init__(
        self,
        sources: Sequence[str | Path] | str | Path,
        spec: FeatureSpec,
        *,
        batch_size: int,
        shuffle: bool = True,
        shuffle_buffer: int = 20_000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        extra_columns: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if batch_size <= 0 or shuffle_buffer < 0 or seed < 0:
            raise ValueError(
                f"need batch_size > 0, shuffle_buffer >= 0 and seed >= 0; got {batch_size}, "
                f"{shuffle_buffer} and {seed}"
            )
        distributed = dist.is_available() and dist.is_initialized()
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        if world_size is None:
            world_size = dist.get_world_size() if distributed else 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.extra_columns = list(extra_columns)
        self.epoch = 0
        self.skip_batches = 0
        self.files = [str(f) for f in parquet_files(_as_list(sources))]
        self.units: list[RowGroupUnit] = []
        self._oracle_heads: dict[str, list[str]] = {}
        for path in self.files:
            pf = open_parquet(path)
            check_schema(pf.schema_arrow, spec, path, self.extra_columns)
            self._oracle_heads[path] = [
                lb.name
                for lb in spec.labels
                if pf.schema_arrow.get_field_index(spec.oracle_prefix + lb.name) >= 0
            ]
            first = 0
            for i in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                if n:
                    self.units.append(RowGroupUnit(path, i, n, first))
                first += n
        self.has_oracle = any(self._oracle_heads.values())
        self._columns = list(dict.fromkeys(spec.source_columns() + self.extra_columns))

    # ---- epoch control ----
    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch (unit order and shuffles) and how many of this rank's batches
        of it to skip (a resumed run passes the number it already trained on)."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    @property
    def num_rows(self) -> int:
        """Rows in all sources (every rank together)."""
        return sum(u.num_rows for u in self.units)

    def _shard_units(self, shard: int, num_shards: int) -> list[RowGroupUnit]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        else:
            order = np.arange(len(self.units))
        return [self.units[i] for i in order[shard::num_shards]]

    def _rank_worker_batches(self, rank: int, num_workers: int) -> list[int]:
        shards = range(rank * num_workers, (rank + 1) * num_workers)
        total = self.world_size * num_workers
        return [
            _batches_of(
                sum(u.num_rows for u in self._shard_units(s, total)),
                self.batch_size,
                self.drop_last,
            )
            for s in shards
        ]

    def num_batches(self, num_workers: int = 0, rank: int | None = None) -> int:
        """Batches that ``rank`` (default: this one) yields in the current epoch through a
        DataLoader with ``num_workers``, before ``skip_batches`` is applied."""
        return sum(
            self._rank_worker_batches(self.rank if rank is None else rank, max(1, num_workers))
        )

    # ---- iteration ----
    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = _resume_roles(self.skip_batches, self._rank_worker_batches(self.rank, num_workers))[
            worker
        ]
        if role is None:
            return
        virtual_worker, skip = role
        shard = self.rank * num_workers + virtual_worker
        num_shards = self.world_size * num_workers
        rng = (
            np.random.default_rng([self.seed, self.epoch, shard, num_shards])
            if self.shuffle
            else None
        )
        yield from self._iter_units(self._shard_units(shard, num_shards), rng, skip)

    def _iter_units(
        self, units: list[RowGroupUnit], rng: np.random.Generator | None, skip: int
    ) -> Iterator[Batch]:
        unit_rows = [u.num_rows for u in units]
        leftover: RowBlock | None = None
        in_sync = True  # False after skipping windows without reading them
        with _UnitReader(self, units) as reader:
            for plan in _plan(unit_rows, self.batch_size, self.shuffle_buffer, self.drop_last, rng):
                if skip and skip >= len(plan.ends):
                    skip -= len(plan.ends)
                    in_sync = False
                    continue
                if not in_sync:
                    leftover = reader.rows_of(plan.leftover_ids)
                    in_sync = True
                blocks = [leftover] if leftover is not None else []
                window = _Blocks(blocks + [reader.block(u) for u in plan.new_units])
                begin = 0
                for end in plan.ends:
                    if skip:
                        skip -= 1
                    else:
                        yield window.collate(plan.order[begin:end])
                    begin = end
                leftover = window.take(plan.kept)


class _UnitReader:
    """Reads and decodes a shard's row groups on one background thread, one row group
    ahead (pyarrow and numpy release the GIL, so reading overlaps collation). All file
    access happens on that thread; errors surface in the caller."""

    def __init__(self, stream: ParquetBatchStream, units: list[RowGroupUnit]) -> None:
        self.stream = stream
        self.units = units
        rows = np.array([u.num_rows for u in units], np.int64)
        self.starts = np.cumsum(rows) - rows
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dhen-cvr-reader")
        self._ahead: tuple[int, Future[RowBlock]] | None = None
        self._path: str | None = None
        self._file: pq.ParquetFile | None = None

    def __enter__(self) -> _UnitReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def block(self, u: int) -> RowBlock:
        """Unit ``u`` decoded; starts decoding unit ``u + 1``."""
        if self._ahead is not None and self._ahead[0] == u:
            future = self._ahead[1]
        else:
            future = self._pool.submit(self._read, self.units[u])
        self._ahead = None
        if u + 1 < len(self.units):
            self._ahead = (u + 1, self._pool.submit(self._read, self.units[u + 1]))
        return future.result()

    def _read(self, unit: RowGroupUnit) -> RowBlock:
        s = self.stream
        if unit.file != self._path:
            self._path, self._file = unit.file, open_parquet(unit.file)
        assert self._file is not None
        heads = s._oracle_heads[unit.file]
        columns = s._columns + [s.spec.oracle_prefix + h for h in heads]
        where = Location(unit.file, unit.index, unit.first_row)
        table = read_row_group(self._file, unit.index, columns, where)
        block = decode_row_group(
            table,
            s.spec,
            where,
            oracle_heads=heads if s.has_oracle else None,
            extra_columns=s.extra_columns,
        )
        assert block is not None
        return block

    def rows_of(self, ids: np.ndarray) -> RowBlock | None:
        """The shard rows ``ids`` (in that order), re-read from their row groups."""
        if not len(ids):
            return None
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        owner = np.searchsorted(self.starts, sorted_ids, side="right") - 1
        pieces = []
        for u in np.unique(owner):
            local = sorted_ids[owner == u] - self.starts[u]
            block = self._pool.submit(self._read, self.units[int(u)]).result()
            pieces.append(_take(block, local))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return _take(_concat(pieces), inverse)


class BatchLoader(DataLoader[Batch]):
    """A DataLoader over already-collated batches that re-raises a worker's
    :class:`DataError` with its original one-line message (the plain DataLoader prefixes
    the worker's traceback)."""

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as err:
                raise DataError(_original_message(str(err))) from None
            yield batch


def _original_message(text: str) -> str:
    """``Caught DataError in DataLoader worker ... dhen_cvr.errors.DataError: msg`` -> msg."""
    marker = f"{DataError.__module__}.{DataError.__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(marker)]
    return lines[-1][len(marker) :] if lines else text


def make_loader(
    stream: ParquetBatchStream, num_workers: int = 0, pin_memory: bool = False
) -> BatchLoader:
    """A loader over already-collated batches (``batch_size=None``). Workers are not
    persistent, so each ``iter(loader)`` sees the stream's current epoch."""
    return BatchLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
