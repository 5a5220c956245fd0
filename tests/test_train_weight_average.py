"""``train.ema_decay``: the model saved at the end of training is the exponential moving
average of the iterates (checked against a float64 loop over the iterates of the same
run without it), and a run interrupted mid-way resumes to the same average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dhen_cvr.data.batch import Batch
from dhen_cvr.runtime.checkpoint import load_checkpoint
from dhen_cvr.train import train
from train_world import tiny_config

DECAY = 0.8


@pytest.mark.usefixtures("one_thread")
def test_final_model_is_the_average_of_the_iterates(tiny_world: Path, tmp_path: Path) -> None:
    # Without averaging, a checkpoint after every step: the iterates of the same run.
    plain = train(
        tiny_config(
            "train.checkpoint_every_steps=1",
            "train.keep_checkpoints=1000",
            "train.recalibrate=false",
        ),
        tiny_world,
        "1",
        tmp_path / "plain",
        show_progress=False,
    )
    steps = sorted((tmp_path / "plain" / "checkpoints").glob("step-*"))
    assert len(steps) == plain.progress.step >= 5
    averaged = train(
        tiny_config(f"train.ema_decay={DECAY}", "train.recalibrate=false"),
        tiny_world,
        "1",
        tmp_path / "ema",
        show_progress=False,
    )
    assert averaged.progress == plain.progress

    names = [n for n, _ in averaged.model.named_parameters()]
    expected: dict[str, torch.Tensor] = {}
    for step in steps:
        state = load_checkpoint(step).model_state
        for n in names:
            w = state[n].double()
            expected[n] = w if n not in expected else DECAY * expected[n] + (1 - DECAY) * w
    final = load_checkpoint(averaged.checkpoint).model_state
    last = load_checkpoint(steps[-1]).model_state
    moved = 0
    for n in names:
        torch.testing.assert_close(final[n].double(), expected[n], rtol=0, atol=1e-6, msg=n)
        moved += int(not torch.equal(final[n], last[n]))
    assert moved > len(names) // 2  # the average is not the last iterate


class _Interrupt(Exception):
    pass


@pytest.mark.usefixtures("one_thread")
def test_resumed_run_continues_the_average(tiny_world: Path, tmp_path: Path) -> None:
    settings = (f"train.ema_decay={DECAY}", "train.epochs=2", "train.checkpoint_every_steps=3")
    reference = train(
        tiny_config(*settings), tiny_world, "1", tmp_path / "ref", show_progress=False
    )
    stop_at = reference.progress.step // 2 + 2  # mid-epoch 2, after a checkpoint

    def crash(epoch: int, step: int, batch: Batch) -> None:
        if step == stop_at:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(
            tiny_config(*settings),
            tiny_world,
            "1",
            tmp_path / "cut",
            show_progress=False,
            on_batch=crash,
        )
    resumed = train(None, None, None, tmp_path / "cut", resume=True, show_progress=False)
    assert resumed.progress == reference.progress
    want = load_checkpoint(reference.checkpoint).model_state
    for name, value in load_checkpoint(resumed.checkpoint).model_state.items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=0, msg=name)

    # Resuming the finished run trains nothing and keeps the averaged weights (its
    # intercepts are refitted, hence parameters only).
    again = train(None, None, None, tmp_path / "ref", resume=True, show_progress=False)
    assert again.progress == reference.progress
    state = load_checkpoint(again.checkpoint).model_state
    for name, _ in again.model.named_parameters():
        torch.testing.assert_close(state[name], want[name], rtol=0, atol=0, msg=name)
