"""Every benchmark with its default settings, one after the other (``make bench``).

Each prints its own table; speeds are reported as ratios against a baseline measured in
the same run (bare pyarrow, a plain matmul, one process, glibc's allocator defaults), since these machines are noisy.
"""

from __future__ import annotations

from benchmarks import (
    bench_cpu_memory,
    bench_export,
    bench_model,
    bench_reader,
    bench_request,
    bench_synth,
    bench_train,
)

STEPS = [
    ("generator", bench_synth.main, ["--max-seq-len", "50"]),
    ("reader", bench_reader.main, ["--max-seq-len", "50"]),
    ("model", bench_model.main, []),
    ("CPU memory reuse", bench_cpu_memory.main, []),
    ("training", bench_train.main, []),
    ("request scoring", bench_request.main, []),
    ("export", bench_export.main, []),
]


def main() -> None:
    for name, run, argv in STEPS:
        print(
            f"\n=== {name}: python -m benchmarks.{run.__module__.split('.')[-1]} {' '.join(argv)}"
        )
        run(argv)


if __name__ == "__main__":
    main()
