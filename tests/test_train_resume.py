"""kill -9 during training, then --resume: same steps, bitwise the same weights, and every
example of the interrupted epoch trained exactly once (recorded by an ``on_batch`` hook).

Every run here uses one CPU thread: multi-threaded CPU kernels may sum floats in a
different order from run to run, and Adam turns such noise in (near-)zero gradients into
visible weight differences; with one thread training is bitwise reproducible.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from dhen_cvr.runtime.checkpoint import latest_checkpoint, load_checkpoint
from dhen_cvr.train import train
from train_world import RowRecorder, tiny_config

# Two shuffled epochs with SSL on (its negatives draw from a generator that must resume
# too), a checkpoint every 3 steps.
SETTINGS = ("train.epochs=2", "train.checkpoint_every_steps=3", "train.shuffle_buffer=300")


def _trace(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(records: list[dict[str, object]]) -> Counter[tuple[int, int, int]]:
    """(epoch, user id, request time) of every trained row, with multiplicity."""
    return Counter(
        (int(r["epoch"]), int(u), int(t))  # type: ignore[call-overload]
        for r in records
        for u, t in r["rows"]  # type: ignore[attr-defined]
    )


@pytest.mark.usefixtures("one_thread")
def test_kill_and_resume_trains_every_row_once(tiny_world: Path, tmp_path: Path) -> None:
    reference = train(
        tiny_config(*SETTINGS),
        tiny_world,
        "1-2",
        tmp_path / "ref",
        show_progress=False,
        on_batch=RowRecorder(tmp_path / "uninterrupted.jsonl"),
        extra_columns=RowRecorder.COLUMNS,
    )
    steps_per_epoch = reference.progress.step // 2

    # The same run in a subprocess, killed with SIGKILL once a mid-epoch-2 checkpoint exists.
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("train_world.py")
    trace = tmp_path / "killed.jsonl"
    command = [sys.executable, str(script), str(tiny_world), str(killed), str(trace), *SETTINGS]
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=Path(__file__).parents[1],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        latest = latest_checkpoint(killed)
        try:
            step = -1 if latest is None else load_checkpoint(latest).progress.step
        except FileNotFoundError:  # pruned by the run between the listing and the read
            step = -1
        if step > steps_per_epoch + 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(killed).progress
    assert at_kill.epoch == 1 and 0 < at_kill.batches_in_epoch < steps_per_epoch

    resumed = train(
        None,
        None,
        None,
        killed,
        resume=True,
        show_progress=False,
        on_batch=RowRecorder(tmp_path / "resumed.jsonl"),
        extra_columns=RowRecorder.COLUMNS,
    )

    assert resumed.progress == reference.progress
    ref_state = load_checkpoint(reference.checkpoint).model_state
    for name, value in load_checkpoint(resumed.checkpoint).model_state.items():
        torch.testing.assert_close(value, ref_state[name], rtol=0, atol=0, msg=name)

    # Rows: the killed run up to its checkpoint, then the resumed run, is the reference,
    # step by step; nothing skipped or doubled in the interrupted epoch.
    before = [r for r in _trace(tmp_path / "killed.jsonl") if int(r["step"]) < at_kill.step]  # type: ignore[call-overload]
    after = _trace(tmp_path / "resumed.jsonl")
    assert int(after[0]["step"]) == at_kill.step  # type: ignore[call-overload]
    expected = _trace(tmp_path / "uninterrupted.jsonl")
    assert [r["rows"] for r in before + after] == [r["rows"] for r in expected]
    assert _rows(before + after) == _rows(expected)
    per_epoch = Counter(epoch for epoch, _, _ in _rows(expected).elements())
    assert per_epoch[0] == per_epoch[1] == resumed.progress.examples_seen // 2
