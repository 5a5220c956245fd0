"""Request-level scoring: one user against N candidates, user side once vs once per row.

    python -m benchmarks.bench_request [--configs tiny paper] [--candidates 1 100 500]

For ``configs/tiny.yaml`` and ``configs/paper.yaml`` on the synthetic world's spec (every
sequence full at its kept length, ``--seq-len`` at most), it times, interleaved,
``CVRModel.encode`` on the user's sequences repeated on each of the N rows (what a per-row
server does) and ``CVRModel.score_candidates`` (sequence encoders once, broadcast), in
eval mode under ``torch.no_grad``, and reports ms per request and the speed-up ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks.bench_model import build_model, full_batch, synthetic_spec
from dhen_cvr.data.batch import Batch


def _one_user(batch: Batch) -> Batch:
    """Every row gets row 0's sequences (the per-row server's input)."""
    index = torch.zeros(len(batch), dtype=torch.long)
    return Batch(
        dense=batch.dense,
        pretrained=batch.pretrained,
        categorical=batch.categorical,
        sequences=batch.select(index).sequences,
        labels=batch.labels,
        label_mask=batch.label_mask,
        inclusion_prob=batch.inclusion_prob,
        weight=batch.weight,
    )


def _time(fn: object, repeats: int) -> float:
    assert callable(fn)
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--candidates", nargs="+", type=int, default=[1, 100, 500])
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    print(f"{'config':8} {'N':>5} {'per-row ms':>11} {'request ms':>11} {'speed-up':>9}")
    spec = synthetic_spec(args.seq_len)
    for name in args.configs:
        model = build_model(name, spec, args.seq_len, torch.device("cpu")).eval()
        for n in args.candidates:
            batch = _one_user(full_batch(model, n, torch.device("cpu")))
            user = {k: v for k, v in batch.select(torch.tensor([0])).sequences.items()}
            parts = (batch.dense, batch.pretrained, batch.categorical)

            def per_row(parts=parts, batch=batch, model=model) -> None:
                with torch.no_grad():
                    model.encode(*parts, batch.sequences, ssl=False)

            def request(parts=parts, user=user, model=model) -> None:
                with torch.no_grad():
                    model.score_candidates(*parts, user)

            rows, req = [], []
            for _ in range(2):  # interleaved: per-row, request, per-row, request
                rows.append(_time(per_row, args.repeats))
                req.append(_time(request, args.repeats))
            a, b = statistics.median(rows), statistics.median(req)
            print(f"{name:8} {n:5d} {a:11.1f} {b:11.1f} {a / b:8.2f}x")


if __name__ == "__main__":
    main()
