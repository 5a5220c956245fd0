"""Trainer overhead: the training loop's examples/s against the same model's bare
forward+backward on the same batches, interleaved (A B A B ...), one thread.

    python -m benchmarks.bench_trainer                  # configs/tiny.yaml, 3 rounds
    python -m benchmarks.bench_trainer --config paper --rows 3000 --seq-cap 32

A: :func:`dhen_cvr.train.train` on one synthetic day (its ``examples_per_s``: reading
Parquet, forward, losses, backward, clipping, AdamW, logging, the end-of-epoch
checkpoint). B: the model's training objective (forward, the same losses, backward; no
optimiser, no data reading) on the same day's batches held in memory. A / B is the share
of the pure model speed the trainer keeps; the rest is the trainer's own cost.

Two rates of A are printed: the whole ``train()`` call, which includes per-run costs
(building the stream and model, the end-of-epoch checkpoint: ~0.3-0.5 s whatever the
data size), and the loop's steady state, from the ``metrics.jsonl`` windows without the
first (start-up) and the last (it ends with the checkpoint): per step, what the trainer
costs on a day of any size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_peers import cpu_description

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _config(name: str, args: argparse.Namespace) -> object:
    from dhen_cvr.config import load_experiment_config

    return load_experiment_config(
        CONFIGS / f"{name}.yaml",
        [
            "train.tensorboard=false",
            "train.recalibrate=false",
            "train.threads=1",
            "train.device=cpu",
            "train.epochs=1",
            "train.precision=fp32",
            f"model.sequence.max_len_cap={args.seq_cap}",
            *(["train.compile=true"] if args.compile else []),
        ],
    )


def trainer_rate(config: object, data: Path, out: Path) -> tuple[float, float]:
    """(whole ``train()`` call, steady-state loop) examples/s."""
    from dhen_cvr.train import train

    whole = train(config, data, "1", out, show_progress=False).examples_per_s  # type: ignore[arg-type]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    inner = records[1:-1]
    if not inner:
        raise SystemExit("too few log windows for a steady state: raise --rows")
    examples = inner[-1]["examples_seen"] - records[0]["examples_seen"]
    seconds = sum(
        (r["examples_seen"] - prev["examples_seen"]) / r["examples_per_s"]
        for prev, r in zip(records, inner, strict=False)
    )
    return whole, examples / seconds


def model_rate(config: object, data: Path) -> float:
    """Forward + losses + backward of the trainer's objective on in-memory batches."""
    from dhen_cvr.config import ExperimentConfig
    from dhen_cvr.data.reader import ParquetBatchStream
    from dhen_cvr.data.spec import load_data_spec
    from dhen_cvr.data.stats import fit_minmax_stats
    from dhen_cvr.days import select_days
    from dhen_cvr.model.cvr_model import CVRModel
    from dhen_cvr.train.losses import MultiTaskBCELoss, build_ssl_loss
    from dhen_cvr.train.trainer import TrainingObjective

    assert isinstance(config, ExperimentConfig)
    spec = load_data_spec(data)
    days = select_days(data, "1")
    model = CVRModel(spec, config.model, fit_minmax_stats(days, spec))
    supervised = MultiTaskBCELoss.from_config(config.loss, model.head_names)
    objective = TrainingObjective(model, supervised, build_ssl_loss(config.loss.ssl)).train()
    stream = ParquetBatchStream(days, spec, batch_size=config.train.batch_size, shuffle=False)
    batches = list(stream)
    share = torch.ones(len(model.head_names)), torch.tensor(1.0)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for batch in batches:
        loss, _ = objective(batch, generator, *share)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny", choices=["tiny", "paper"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=16000, help="impressions in the day")
    parser.add_argument("--seq-cap", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="the trainer with compile")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from dhen_cvr.data.synth import WorldConfig, synthesize

    torch.set_num_threads(1)
    # dhen-cvr's Trainer retains freed CPU memory (train.retain_cpu_memory): so does every
    # side of the comparison, from the first round on.
    from dhen_cvr.runtime import retain_freed_cpu_memory

    retain_freed_cpu_memory()
    print(f"CPU: {cpu_description()}")
    config = _config(args.config, args)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        data = Path(tmp) / "world"
        world = WorldConfig(
            days=1,
            users=1000,
            impressions_per_day=args.rows,
            negative_rate=1.0,
            max_seq_len=args.seq_cap,
            history_days=10,
            seed=args.seed,
        )
        synthesize(data, world, overwrite=True)
        trainer_rate(config, data, Path(tmp) / "warm")  # imports, allocator, caches
        a: list[float] = []
        loop: list[float] = []
        b: list[float] = []
        for r in range(args.rounds):
            whole, steady = trainer_rate(config, data, Path(tmp) / f"run-{r}")
            a.append(whole)
            loop.append(steady)
            b.append(model_rate(config, data))
    print(f"\n{args.config}: examples/s, median [range] over {args.rounds} interleaved rounds")
    for name, rates in (("trainer (train())", a), ("trainer loop, steady", loop)):
        print(f"{name:24s} {statistics.median(rates):>8.0f} [{min(rates):.0f}-{max(rates):.0f}]")
    print(
        f"{'model forward+backward':24s} {statistics.median(b):>8.0f} [{min(b):.0f}-{max(b):.0f}]"
    )
    for name, rates in (("train()", a), ("loop, steady", loop)):
        ratios = [x / y for x, y in zip(rates, b, strict=True)]
        print(
            f"{name} / model: {statistics.median(ratios):.2f}x "
            f"[{min(ratios):.2f}-{max(ratios):.2f}] (per-round ratios)"
        )


if __name__ == "__main__":
    main()
