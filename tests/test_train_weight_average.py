"""``train.ema_decay``: the model saved at the end of training is the bias-corrected
exponential moving average of the iterates (checked against the closed form in float64
over the iterates of the same run without it), and a run interrupted mid-way resumes to the
same average."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dhen_cvr.data.batch import Batch
from dhen_cvr.runtime.checkpoint import load_checkpoint
from dhen_cvr.train import train
from dhen_cvr.train.weight_average import bias_corrected_ema
from train_world import tiny_config

DECAY = 0.8


def test_bias_corrected_ema_matches_its_closed_form() -> None:
    decay, xs = 0.99, [torch.randn(7, dtype=torch.float64) for _ in range(30)]
    average = [xs[0].clone()]  # AveragedModel copies the first iterate
    update = bias_corrected_ema(decay)
    for n, x in enumerate(xs[1:], start=1):
        update(average, [x], n)
    t = len(xs)
    weights = [(1 - decay) * decay ** (t - i) / (1 - decay**t) for i in range(1, t + 1)]
    torch.testing.assert_close(average[0], sum(w * x for w, x in zip(weights, xs, strict=True)))
    # 30 steps at decay 0.99 is close to the uniform mean; a plain EMA would keep
    # 0.99 ** 29 = 75% of the first iterate
    assert max(weights) / min(weights) < 1.35
    with pytest.raises(ValueError, match="decay"):
        bias_corrected_ema(1.0)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("decay", [DECAY, 0.99])
def test_final_model_is_the_average_of_the_iterates(
    tiny_world: Path, tmp_path: Path, decay: float
) -> None:
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
        tiny_config(f"train.ema_decay={decay}", "train.recalibrate=false"),
        tiny_world,
        "1",
        tmp_path / "ema",
        show_progress=False,
    )
    assert averaged.progress == plain.progress

    names = [n for n, _ in averaged.model.named_parameters()]
    # iterate i of t weighs (1 - d) d^(t - i) / (1 - d^t) (train/weight_average.py)
    t = len(steps)
    expected = {n: torch.zeros((), dtype=torch.float64) for n in names}
    for i, step in enumerate(steps, start=1):
        state = load_checkpoint(step).model_state
        weight = (1 - decay) * decay ** (t - i) / (1 - decay**t)
        for n in names:
            expected[n] = expected[n] + weight * state[n].double()
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
