"""Prepared real data trains and evaluates with the project's own ``train`` / ``evaluate``."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dhen_cvr.config import load_experiment_config
from dhen_cvr.data.prepare import (
    EventMapping,
    TableMapping,
    load_preset,
    prepare_events,
    prepare_table,
)
from dhen_cvr.eval.evaluate import evaluate
from dhen_cvr.train import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TAOBAO = DATA / "taobao" / "UserBehavior_sample.csv"
ALI_CCP = [DATA / "ali_ccp" / f"ali_ccp_{s}_sample.csv" for s in ("train", "val", "test")]
FAST = [
    "train.batch_size=128",
    "train.warmup_steps=2",
    "train.tensorboard=false",
    "train.device=cpu",
    "model.sequence.max_len_cap=8",
]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Two OpenMP threads on a busy 2-core machine spin-wait; one thread is ~8x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_taobao_prepare_train_evaluate(tmp_path: Path) -> None:
    if not TAOBAO.is_file():
        pytest.skip(f"Taobao sample not found at {TAOBAO} (../shared/data is absent)")
    mapping = load_preset("taobao")
    assert isinstance(mapping, EventMapping)
    data = tmp_path / "taobao"
    prepared = prepare_events(TAOBAO, mapping, data)
    # the preset's sequences are org / intent / conv (tiny.yaml's SSL weights name org/ads)
    config = load_experiment_config("tiny", [*FAST, "loss.ssl.weights={org: 0.1, conv: 0.1}"])
    run = tmp_path / "run"
    result = train(config, data, "1-2", run, show_progress=False)
    assert result.progress.examples_seen == sum(
        prepared.days[d].examples for d in ("2017-11-25", "2017-11-26")
    )
    report = evaluate(run, data, "3")
    assert report.days == ["2017-11-27"] and report.heads == ["cart", "fav", "buy"]
    day = report.per_day["2017-11-27"]
    assert day["buy"]["count"] == prepared.days["2017-11-27"].examples
    assert math.isfinite(day["buy"]["log_loss"])
    assert (run / "eval-2017-11-27.json").is_file()  # evaluate keeps RUN/eval.json


def test_aliccp_prepare_train_evaluate(tmp_path: Path) -> None:
    if not all(f.is_file() for f in ALI_CCP):
        pytest.skip(f"Ali-CCP samples not found under {DATA / 'ali_ccp'}")
    mapping = load_preset("aliccp")
    assert isinstance(mapping, TableMapping)
    data = tmp_path / "ccp"
    prepare_table(ALI_CCP, mapping, data)
    config = load_experiment_config("tiny", [*FAST, "loss.ssl.weights={}"])
    run = tmp_path / "run"
    train(config, data, "1", run, show_progress=False)
    report = evaluate(run, data, "2-3")
    assert report.days == ["2024-01-02", "2024-01-03"]
    assert report.served == {"click": False, "purchase": True}
    for day, path in zip(report.days, ALI_CCP[1:], strict=True):
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        metrics = report.per_day[day]
        assert metrics["click"]["count"] == len(rows)
        # the purchase head is masked by click: scored on clicked rows only
        assert metrics["purchase"]["count"] == sum(r["click"] == "1" for r in rows)
