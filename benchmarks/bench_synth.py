"""Synthetic-world generator throughput vs bare Parquet writing of the same rows.

    python -m benchmarks.bench_synth --max-seq-len 50

Generates a world with :func:`dhen_cvr.data.synth.synthesize` and reports impressions/s
(the population simulated, before down-sampling) and rows/s (rows written after
sampling). The baseline, measured in the same run, is ``pq.write_table`` of the very same
tables (same row groups and codec): the I/O floor of writing that output. Each number is
the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from dhen_cvr.data.synth import WorldConfig, synthesize
from dhen_cvr.data.writer import day_dirs

__all__ = ["GeneratorResult", "benchmark_generator", "main"]


@dataclass(frozen=True)
class GeneratorResult:
    impressions: int  # simulated, before down-sampling
    rows: int  # written
    seconds: float  # best generator wall time
    cpu_seconds: float  # this process's CPU time of that run (steadier on a shared machine)
    write_seconds: float  # best bare pq.write_table time of the same tables

    @property
    def impressions_per_s(self) -> float:
        return self.impressions / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def write_rows_per_s(self) -> float:
        return self.rows / self.write_seconds


def benchmark_generator(config: WorldConfig, work_dir: Path, repeat: int = 1) -> GeneratorResult:
    """Time :func:`synthesize` of ``config`` into ``work_dir`` and the bare write baseline."""
    out = work_dir / "world"
    best = cpu = float("inf")
    impressions = rows = 0
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        summary = synthesize(out, config, overwrite=True)
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, time.process_time() - start_cpu
        impressions = sum(d.impressions for d in summary.days)
        rows = sum(d.rows for d in summary.days)
    tables = [pq.read_table(p) for day in day_dirs(out) for p in sorted(day.glob("*.parquet"))]
    write_best = float("inf")
    for _ in range(repeat):
        target = work_dir / "bare"
        target.mkdir(exist_ok=True)
        start = time.perf_counter()
        for i, table in enumerate(tables):
            pq.write_table(table, target / f"{i}.parquet", row_group_size=8192, compression="zstd")
        write_best = min(write_best, time.perf_counter() - start)
        shutil.rmtree(target)
    return GeneratorResult(impressions, rows, best, cpu, write_best)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--impressions-per-day", type=int, default=100_000)
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    config = WorldConfig(
        days=args.days,
        users=args.users,
        impressions_per_day=args.impressions_per_day,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        r = benchmark_generator(config, Path(tmp), repeat=args.repeat)
    print(
        f"world: {args.users} users, {args.days} days, {args.impressions_per_day} impressions/day,"
        f" max_seq_len {args.max_seq_len}"
    )
    print(f"{'':<28} {'seconds':>8} {'rows/s':>10} {'impressions/s':>14} {'CPU s':>7}")
    print(
        f"{'generator (synthesize)':<28} {r.seconds:8.2f} {r.rows_per_s:10.0f} {r.impressions_per_s:14.0f}"
    )
    print(f"{'bare pq.write_table':<28} {r.write_seconds:8.2f} {r.write_rows_per_s:10.0f} {'':>14}")
    print(
        f"{r.rows} rows written of {r.impressions} impressions; generator rows/s = "
        f"{r.rows_per_s / r.write_rows_per_s:.3f} x bare write"
    )


if __name__ == "__main__":
    main()
