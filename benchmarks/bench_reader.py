"""Reader throughput vs a bare ``pyarrow.parquet.read_table`` of the same files.

    python -m benchmarks.bench_reader --max-seq-len 50

Generates (or reuses, with ``--data DIR``) a synthetic world, then measures, in the same
run and on the same files:

* generator rows/s (when it generates);
* bare pyarrow: ``pq.read_table`` of every file, the columns the reader needs;
* the reader: :class:`ParquetBatchStream` batches fully collated to tensors
  (``batch_size`` 1024, ``num_workers`` 0), with and without shuffling (and, with
  ``--workers 2``, through DataLoader worker processes);

interleaved over ``--repeat`` rounds so that every candidate sees the same machine load,
and prints rows/s and the reader/pyarrow ratio (goal: >= 0.5) by wall-clock time and by
this process's CPU time (pyarrow's reading threads included; steadier on a shared
machine). ``--profile`` prints the reader's
top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from dhen_cvr.data.decode import parquet_files
from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.spec import FeatureSpec, load_data_spec
from dhen_cvr.data.writer import day_dirs


def _generate(out: Path, args: argparse.Namespace) -> float:
    """Write the synthetic world to ``out``; returns generator rows/s."""
    from dhen_cvr.data.synth import WorldConfig, synthesize

    config = WorldConfig(
        days=args.days,
        users=args.users,
        impressions_per_day=args.impressions_per_day,
        seed=args.seed,
        max_seq_len=args.max_seq_len,
        negative_rate=args.negative_rate,
    )
    start = time.perf_counter()
    summary = synthesize(out, config, overwrite=True)
    seconds = time.perf_counter() - start
    return sum(d.rows for d in summary.days) / seconds


@dataclass
class _Timing:
    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # this process only
    rows: int = 0


def _measure(runs: list[tuple[str, Callable[[], int]]], repeat: int) -> list[_Timing]:
    """Run every candidate once per round, ``repeat`` rounds, so each round's candidates
    see the same machine load (ratios are then taken round by round)."""
    timings = [_Timing(name) for name, _ in runs]
    for _ in range(repeat):
        for timing, (_, fn) in zip(timings, runs, strict=True):
            start, start_cpu = time.perf_counter(), time.process_time()
            timing.rows = fn()
            timing.wall.append(time.perf_counter() - start)
            timing.cpu.append(time.process_time() - start_cpu)
    return timings


def _reader_columns(spec: FeatureSpec, path: Path) -> list[str]:
    names = set(pq.ParquetFile(path).schema_arrow.names)
    oracle = [spec.oracle_prefix + h for h in spec.label_names if spec.oracle_prefix + h in names]
    return spec.source_columns() + oracle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--data", type=Path, help="reuse (or create) the world in this folder")
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--impressions-per-day", type=int, default=60_000)
    parser.add_argument(
        "--negative-rate", type=float, default=1.0, help="keep-rate of non-converting rows"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[],
        help="also time these DataLoader worker counts",
    )
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="bench-reader-")
    root = args.data or Path(tmp.name) / "world"
    gen_rate = None
    if not day_dirs(root):
        gen_rate = _generate(root, args)
    spec = load_data_spec(root)
    days = day_dirs(root)
    files = parquet_files(days)
    columns = _reader_columns(spec, files[0])

    def bare() -> int:
        return sum(pq.read_table(f, columns=columns).num_rows for f in files)

    def reader(shuffle: bool, num_workers: int = 0) -> Callable[[], int]:
        def run() -> int:
            stream = ParquetBatchStream(days, spec, batch_size=args.batch_size, shuffle=shuffle)
            return sum(len(b) for b in make_loader(stream, num_workers=num_workers))

        return run

    runs = [
        ("pyarrow read_table (baseline)", bare),
        ("reader -> Batch, shuffle=False", reader(False)),
        ("reader -> Batch, shuffle=True", reader(True)),
    ]
    runs += [(f"reader, shuffle, {w} workers", reader(True, w)) for w in args.workers]
    timings = _measure(runs, args.repeat)
    base = timings[0]
    rows = base.rows
    assert all(t.rows == rows for t in timings), [t.rows for t in timings]

    seq_cols = sum(1 + len(s.fields) for s in spec.sequences)
    print(
        f"data: {len(files)} file(s), {rows} rows, {len(spec.sequences)} sequences "
        f"({seq_cols} list columns), max_len {args.max_seq_len}, batch {args.batch_size}, "
        f"{args.repeat} interleaved rounds"
    )
    if gen_rate is not None:
        print(f"generator: {gen_rate:,.0f} rows/s (stored rows)")
    print(
        "rows/s: best round. ratio: median over rounds of (pyarrow time / reader time) by "
        "wall clock and by\nthis process's CPU time (steadier on a shared machine; n/a with "
        "DataLoader worker processes)."
    )
    print(f"{'what':<32} {'rows/s':>10} {'wall ratio':>11} {'rows/CPU-s':>11} {'CPU ratio':>10}")
    for t in timings:
        wall_ratio = statistics.median(b / r for b, r in zip(base.wall, t.wall, strict=True))
        cpu_ratio = statistics.median(b / r for b, r in zip(base.cpu, t.cpu, strict=True))
        workers = "workers" in t.name
        print(
            f"{t.name:<32} {rows / min(t.wall):>10,.0f} {wall_ratio:>10.2f}x "
            + (
                f"{'n/a':>11} {'n/a':>10}"
                if workers
                else f"{rows / min(t.cpu):>11,.0f} {cpu_ratio:>9.2f}x"
            )
        )

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        reader(True)()
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    tmp.cleanup()


if __name__ == "__main__":
    main()
