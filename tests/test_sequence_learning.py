"""The model must learn what the sequences hold (issue: beat a no-sequence model).

A small seeded synthetic world, the real trainer on real Parquet files: the `tiny` DHEN
with its sequence encoders must beat the same model with every sequence feature dropped by
a clear margin in next-day ROC-AUC. It fails if the sequence path stops carrying the
candidate-matched, recency-weighted signal the world puts in it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from dhen_cvr.data.synth import WorldConfig, synthesize
from dhen_cvr.pipeline import train_and_evaluate
from train_world import tiny_config

WORLD = WorldConfig(days=5, users=1500, impressions_per_day=40_000, max_seq_len=16, seed=3)
SERVED = ["checkout", "add_to_cart", "signup"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seq-world") / "data"
    synthesize(path, WORLD)
    return path


def _served_auc(data: Path, out: Path, *overrides: str) -> tuple[float, float]:
    config = tiny_config("train.batch_size=128", "train.threads=2", *overrides)
    result = train_and_evaluate(config, data, "1-3", out, eval_days="4-5", show_progress=False)
    assert result.eval is not None
    mean = result.eval.mean
    model = statistics.mean(mean[h]["roc_auc"] for h in SERVED)
    oracle = statistics.mean(mean[h]["oracle_roc_auc"] for h in SERVED)
    return model, oracle


@pytest.mark.slow
def test_sequences_beat_no_sequences(world: Path, tmp_path: Path) -> None:
    with_seq, oracle = _served_auc(world, tmp_path / "seq")
    without, _ = _served_auc(
        world, tmp_path / "noseq", "model.drop_categories=[sequence]", "loss.ssl.objective=none"
    )
    print(f"served ROC-AUC: sequences {with_seq:.4f}, none {without:.4f}, oracle {oracle:.4f}")
    # measured: 0.697 vs 0.607 (the softmax-only encoder of before: 0.661)
    assert with_seq > without + 0.06, (with_seq, without)
    assert with_seq < oracle
