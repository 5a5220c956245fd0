"""Batch + incremental training (paper 5.1-5.2): warm starts load yesterday's weights;
each day's model is evaluated on the next day and the evaluations are averaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dhen_cvr.data.reader import num_rows
from dhen_cvr.data.spec import load_spec
from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.days import day_name, select_days
from dhen_cvr.pipeline.incremental import train_incremental
from dhen_cvr.runtime.checkpoint import load_checkpoint
from dhen_cvr.runtime.distributed import init_distributed
from dhen_cvr.train import Trainer, train
from train_world import make_world, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("incremental") / "world")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]) -> float:
    return max((a[n].float() - b[n].float()).abs().max().item() for n in names)


def test_warm_start_loads_yesterdays_weights(data: Path, tmp_path: Path) -> None:
    yesterday = train(tiny_config(), data, "1", tmp_path / "day1", show_progress=False)
    ckpt = load_checkpoint(yesterday.checkpoint)

    # At load: exactly yesterday's weights, which training moved away from the init.
    trainer = Trainer(
        tiny_config(),
        load_spec(data / "_spec.yaml"),
        MinMaxStats.from_dict(ckpt.dense_stats),
        tmp_path / "x",
        init_distributed("cpu"),
    )
    params = [n for n, _ in trainer.model.named_parameters()]
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.load_weights(ckpt)
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], ckpt.model_state[k]) for k in loaded)
    assert _max_diff(init, ckpt.model_state, params) > 1e-3

    # Through train(): with a vanishing learning rate a warm-started run on day 2 ends
    # where yesterday ended, a cold one where the init was.
    frozen = tiny_config("train.lr=1e-12")
    warm = train(
        frozen, data, "2", tmp_path / "warm", init_from=tmp_path / "day1", show_progress=False
    )
    cold = train(frozen, data, "2", tmp_path / "cold", show_progress=False)
    assert _max_diff(load_checkpoint(warm.checkpoint).model_state, ckpt.model_state, params) < 1e-6
    assert _max_diff(load_checkpoint(cold.checkpoint).model_state, init, params) < 1e-6
    # The warm start reuses yesterday's fitted dense statistics instead of refitting.
    assert load_checkpoint(warm.checkpoint).dense_stats == ckpt.dense_stats
    info = json.loads((tmp_path / "warm" / "run.json").read_text())
    assert info["init_from"] == str(yesterday.checkpoint.resolve())


def test_train_incremental_evaluates_each_next_day(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "inc"
    result = train_incremental(tiny_config(), data, "1-2", "3-4", out, show_progress=False)
    days = [day_name(d) for d in select_days(data, "all")]
    assert [r.run.name for r in result.runs] == ["warmup", f"day-{days[2]}", f"day-{days[3]}"]
    # warm-up -> day 3; day 3's model -> day 4; day 4 is the last day: nothing to evaluate
    assert [r.eval.days if r.eval else None for r in result.runs] == [[days[2]], [days[3]], None]
    for previous, run in zip(result.runs, result.runs[1:], strict=False):
        info = json.loads((run.run / "run.json").read_text())
        assert info["init_from"] == str(previous.checkpoint.resolve())
        assert info["train_days"] == [run.run.name.removeprefix("day-")]
        assert run.progress.examples_seen == num_rows(select_days(data, info["train_days"][0]))
    summary = json.loads((out / "incremental.json").read_text())
    assert summary["days"] == [days[2], days[3]]
    assert [r["run"] for r in summary["runs"]] == [str(r.run) for r in result.runs]
    reports = [r.eval for r in result.runs if r.eval is not None]
    for head in reports[0].heads:
        for metric in ("roc_auc", "pr_auc", "log_loss"):
            expected = np.mean([rep.mean[head][metric] for rep in reports])
            assert summary["mean"][head][metric] == pytest.approx(expected, rel=1e-12)
