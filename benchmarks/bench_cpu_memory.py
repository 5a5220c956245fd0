"""CPU step time and peak memory with and without :func:`retain_freed_cpu_memory`.

    python -m benchmarks.bench_cpu_memory [--rounds 3] [--cases tiny:128 tiny:2048 paper:256]

glibc's ``mallopt`` is process-wide and cannot be undone, so every measurement runs in a
fresh subprocess (1 thread): the training step of ``benchmarks.bench_model`` (forward,
losses, backward; full sequences of ``--seq-len`` items) for a config at a batch size,
once with glibc's defaults and once with freed memory retained, interleaved
(A B A B ...). Printed: median ms per step and its range, the median speed-up, the peak
resident memory of each, and the kernel (``sys``) CPU time per step, which is where the
page faults of freshly mapped memory show up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.bench_model import build_model, full_batch, synthetic_spec, train_step
from dhen_cvr.runtime import retain_freed_cpu_memory

DEFAULT_CASES = ["tiny:128", "tiny:2048", "paper:256"]
VARIANTS = {"glibc default": False, "retained": True}


def measure(config: str, batch_size: int, seq_len: int, retain: bool, steps: int) -> dict:
    """One process's numbers: median seconds per step, sys seconds per step, peak RSS."""
    applied = retain_freed_cpu_memory() if retain else False
    torch.set_num_threads(1)
    device = torch.device("cpu")
    model = build_model(config, synthetic_spec(seq_len), seq_len, device)
    batch = full_batch(model, batch_size, device)
    for _ in range(2):
        train_step(model, batch, device, torch.float32)
    times, sys_before = [], os.times().system
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, batch, device, torch.float32)
        times.append(time.perf_counter() - start)
    return {
        "applied": applied,
        "step_s": statistics.median(times),
        "sys_s": (os.times().system - sys_before) / steps,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def steps_for(config: str, batch_size: int) -> int:
    """Enough steps for a stable median in about 10 s."""
    return max(3, min(30, 2_500 // batch_size)) if config == "tiny" else 4


def run_case(config: str, batch_size: int, args: argparse.Namespace) -> None:
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, retain in VARIANTS.items():
            cmd = [sys.executable, "-m", "benchmarks.bench_cpu_memory", "--worker",
                   f"{config}:{batch_size}", "--seq-len", str(args.seq_len),
                   "--retain", str(int(retain)), "--steps", str(steps_for(config, batch_size))]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"\n{config}, batch {batch_size}, {args.seq_len} items, fwd+bwd, 1 thread, "
          f"{args.rounds} rounds interleaved")  # fmt: skip
    for name, runs in results.items():
        ms = [r["step_s"] * 1e3 for r in runs]
        print(f"  {name:<14} {statistics.median(ms):8.1f} ms/step [{min(ms):.1f}-{max(ms):.1f}]"
              f"  sys {statistics.median(r['sys_s'] for r in runs) * 1e3:6.1f} ms/step"
              f"  peak RSS {statistics.median(r['max_rss_mb'] for r in runs):7.0f} MB"
              + ("" if name == "glibc default" or runs[0]["applied"] else "  (not applied)"))  # fmt: skip
    base, tuned = (results[name] for name in VARIANTS)
    speed = [b["step_s"] / t["step_s"] for b, t in zip(base, tuned, strict=True)]
    rss = statistics.median(
        t["max_rss_mb"] / b["max_rss_mb"] for b, t in zip(base, tuned, strict=True)
    )
    print(f"  retained / default: {statistics.median(speed):.2f}x speed "
          f"[{min(speed):.2f}-{max(speed):.2f}], {rss:.2f}x peak RSS")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="config:batch_size")
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--retain", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        config, batch_size = args.worker.split(":")
        numbers = measure(config, int(batch_size), args.seq_len, bool(args.retain), args.steps)
        print(json.dumps(numbers))
        return
    from benchmarks.bench_peers import cpu_description

    print(f"CPU: {cpu_description()}")
    for case in args.cases:
        config, batch_size = case.split(":")
        run_case(config, int(batch_size), args)


if __name__ == "__main__":
    main()
