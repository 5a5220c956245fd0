"""2-process DDP (gloo, torchrun) trains the single-process model and evaluates exactly.

Why the weights can match: ``train.batch_size`` is global, so each of the 2 ranks reads
half of every step's rows. The reader gives rank r every 2nd row group (from r); with
shuffling off and every row group exactly ``B/2`` rows, step j of the DDP run sees row
groups 2j and 2j+1 - the rows one process reads as its batch j. Each rank scales its
mean losses by its share of the global batch, BatchNorm statistics are global
(``SyncBatchNorm1d``), and an odd number of row groups makes the last step a
one-rank step (the other rank contributes zero through a placeholder batch). SSL is off
here: its negatives are drawn per rank, so with SSL the runs differ by sampling only.
The remaining difference is float summation order, amplified a little by Adam.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dhen_cvr.data.reader import num_rows
from dhen_cvr.days import select_days
from dhen_cvr.eval.evaluate import evaluate
from dhen_cvr.runtime.checkpoint import load_checkpoint
from dhen_cvr.train import train
from train_world import align_row_groups, make_world, tiny_config, torchrun_train

ROWS_PER_GROUP = 40  # the per-rank batch
SETTINGS = ("train.shuffle=false", "loss.ssl.objective=none", "train.batch_size=80")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    world = make_world(root / "world")
    return align_row_groups(world, root / "aligned", ROWS_PER_GROUP, odd_over_days=3)


def test_two_process_ddp_matches_one_process(data: Path, tmp_path: Path) -> None:
    single = train(tiny_config(*SETTINGS), data, "1-3", tmp_path / "single", show_progress=False)
    groups = num_rows(select_days(data, "1-3")) // ROWS_PER_GROUP
    assert groups % 2 == 1, "an odd number of row groups exercises the uneven last step"

    done = torchrun_train(2, data, tmp_path / "ddp", SETTINGS)
    assert done.returncode == 0, done.stderr[-3000:]

    ddp = load_checkpoint(tmp_path / "ddp")
    assert ddp.progress == single.progress  # same steps and examples, nothing dropped
    assert single.progress.step == (groups + 1) // 2
    ref = load_checkpoint(single.checkpoint).model_state
    for name, value in ddp.model_state.items():
        torch.testing.assert_close(value, ref[name], rtol=0, atol=2e-4, msg=name)

    # Metrics are gathered, not averaged per rank: the DDP run's eval.json equals a
    # single-process evaluation of the same checkpoint.
    ddp_eval = json.loads((tmp_path / "ddp" / "eval.json").read_text())
    again = evaluate(tmp_path / "ddp", data, "4", save=False)
    # Scores agree to ~1e-9 (batches differ between the runs, so float sums do); that can
    # flip the order of a near-tied pair, which moves a ranking metric by 1/(P N) ~ 1e-4
    # here. Per-rank averaging instead of gathering would move it by ~1e-2.
    ranking = {"roc_auc", "pr_auc"}
    for head in again.heads:
        for metric in ("roc_auc", "pr_auc", "log_loss", "calibration", "calibration_se", "count"):
            tolerance = {"abs": 1e-3} if metric in ranking else {"rel": 1e-6, "abs": 1e-9}
            assert ddp_eval["mean"][head][metric] == pytest.approx(
                again.mean[head][metric], **tolerance
            ), (head, metric)
