"""Training throughput: one process vs ``torchrun`` DDP, for the tiny and paper configs.

    python -m benchmarks.bench_train                 # tiny and paper, 1 vs 2 processes
    python -m benchmarks.bench_train --configs tiny --nproc 2 4 --rounds 2

Generates a synthetic world (or uses ``--data DIR``), then, per config and per process
count, runs the real command (``dhen-cvr train`` in a fresh process; under
``python -m torch.distributed.run --nproc_per_node K`` for K > 1, gloo on CPU) on one
day with the same *global* batch, and reads the steady-state examples/s from the run's
``metrics.jsonl`` (every logged window after the first: total examples / total time).
One process uses all cores as intra-op threads; K processes use cores / K threads each.
The ``paper`` config (Appendix A) runs with sequences capped at ``--paper-seq-cap``
items and fp32, which is what a CPU can hold. Rounds are interleaved so every candidate
sees the same machine load; the table shows the median and the ratio to one process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "tiny": [],
    "paper": ["train.precision=fp32", "train.num_workers=0", "train.checkpoint_every_steps=0"],
}
COMMON = ["train.tensorboard=false", "train.epochs=1", "train.log_every=5", "train.shuffle=true"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _generate(out: Path, args: argparse.Namespace) -> None:
    from dhen_cvr.data.synth import WorldConfig, synthesize

    config = WorldConfig(
        days=2,
        users=args.users,
        impressions_per_day=args.impressions_per_day,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
    )
    synthesize(out, config, overwrite=True)


def _steady_rate(run: Path) -> float:
    """Examples/s over every logged window but the first (start-up, warm caches)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    windows = records[1:] or records
    examples = [r["examples_per_s"] for r in windows]
    return len(examples) / sum(1.0 / e for e in examples)  # equal-size windows


def _run(config: str, nproc: int, data: Path, out: Path, args: argparse.Namespace) -> float:
    overrides = [*COMMON, *CONFIGS[config], f"train.batch_size={args.batch_size}"]
    if config == "paper":
        overrides.append(f"model.sequence.max_len_cap={args.paper_seq_cap}")
    train_args = [
        "train",
        "--config",
        config,
        "--data",
        str(data),
        "--train-days",
        "1",
        "--out",
        str(out),
        "--quiet",
        *(a for o in overrides for a in ("--set", o)),
    ]
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        command = [sys.executable, "-m", "dhen_cvr.cli", *train_args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "dhen_cvr.cli",
            *train_args,
        ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return _steady_rate(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="an existing world (default: generate one)")
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"], choices=list(CONFIGS))
    parser.add_argument("--nproc", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=256, help="global batch")
    parser.add_argument("--paper-seq-cap", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--impressions-per-day", type=int, default=150_000)
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "world"
            started = time.perf_counter()
            _generate(data, args)
            print(f"generated {data} in {time.perf_counter() - started:.1f} s")
        from dhen_cvr.data.reader import num_rows
        from dhen_cvr.days import select_days

        rows = num_rows(select_days(data, "1"))
        print(f"{rows} training rows, global batch {args.batch_size}, {os.cpu_count()} cores")
        rates: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            for config in args.configs:
                for nproc in args.nproc:
                    out = Path(tmp) / f"{config}-{nproc}-{r}"
                    rates.setdefault((config, nproc), []).append(
                        _run(config, nproc, data, out, args)
                    )

    print(f"\n{'config':<8} {'processes':>9} {'threads':>7} {'examples/s':>11} {'vs 1 proc':>9}")
    for config in args.configs:
        base = statistics.median(rates[(config, args.nproc[0])])
        for nproc in args.nproc:
            rate = statistics.median(rates[(config, nproc)])
            threads = max(1, (os.cpu_count() or 1) // nproc)
            print(f"{config:<8} {nproc:>9} {threads:>7} {rate:>11.0f} {rate / base:>8.2f}x")


if __name__ == "__main__":
    main()
