"""A tiny synthetic world and fast configs shared by the training/evaluation tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch

from dhen_cvr.config import ExperimentConfig, load_experiment_config
from dhen_cvr.data.batch import Batch
from dhen_cvr.data.synth import WorldConfig, synthesize
from dhen_cvr.data.writer import day_dirs

# ~300 users, 4 days of ~450 rows (after keeping 5% of non-converting impressions).
TINY_WORLD = WorldConfig(
    days=4,
    users=300,
    impressions_per_day=8000,
    max_seq_len=16,
    n_ads=400,
    n_advertisers=50,
    n_pins=2000,
    n_queries=300,
    history_days=10,
)

# Small and quick: no TensorBoard, frequent logs, no shuffling unless a test asks.
FAST = [
    "train.batch_size=64",
    "train.tensorboard=false",
    "train.log_every=2",
    "train.warmup_steps=2",
    "model.sequence.max_len_cap=16",
]


def make_world(path: Path, world: WorldConfig = TINY_WORLD) -> Path:
    synthesize(path, world)
    return path


def tiny_config(*overrides: str) -> ExperimentConfig:
    return load_experiment_config(
        Path(__file__).parents[1] / "configs" / "tiny.yaml", [*FAST, *overrides]
    )


def cli_overrides(*overrides: str) -> list[str]:
    """``--set`` arguments for the same settings as :func:`tiny_config`."""
    return [arg for o in [*FAST, *overrides] for arg in ("--set", o)]


def align_row_groups(src: Path, dst: Path, rows_per_group: int, *, odd_over_days: int = 0) -> Path:
    """Copy a world with every row group exactly ``rows_per_group`` rows (each day cut
    to a multiple of it), so K ranks reading every K-th row group see, step by step,
    exactly the rows one process reads with a K times larger batch. With
    ``odd_over_days = n`` the first day loses one group if the first n days' total is
    even (an odd total leaves one rank without a batch at the last step)."""
    days = day_dirs(src)
    tables = [pq.read_table(day) for day in days]
    groups = [len(t) // rows_per_group for t in tables]
    if odd_over_days and sum(groups[:odd_over_days]) % 2 == 0:
        groups[0] -= 1
    dst.mkdir(parents=True)
    shutil.copy(src / "_spec.yaml", dst / "_spec.yaml")
    for day, table, n in zip(days, tables, groups, strict=True):
        (dst / day.name).mkdir()
        pq.write_table(
            table.slice(0, n * rows_per_group),
            dst / day.name / "part-00000.parquet",
            row_group_size=rows_per_group,
        )
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_train(
    nproc: int, data: Path, out: Path, settings: tuple[str, ...], timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node nproc -m dhen_cvr.cli train`` on days 1-3 of ``data``
    (tiny config + ``settings``), evaluated on day 4, into ``out``."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "dhen_cvr.cli",
        "train",
        "--config",
        "tiny",
        "--data",
        str(data),
        "--train-days",
        "1-3",
        "--eval-days",
        "4",
        "--out",
        str(out),
        "--quiet",
        *cli_overrides(*settings),
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parents[1]
    )


class RowRecorder:
    """An ``on_batch`` hook for :func:`dhen_cvr.train.train`: appends
    ``{"epoch", "step", "rows": [[user_id, ts], ...]}`` per trained batch to a
    JSON-lines file (pass ``extra_columns=RowRecorder.COLUMNS``)."""

    COLUMNS = ("user_id", "ts")  # the synthetic world's user id and request time

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, epoch: int, step: int, batch: Batch) -> None:
        ids = torch.stack([batch.extras[c].long() for c in self.COLUMNS], dim=1)
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": epoch, "step": step, "rows": ids.tolist()}) + "\n")


if __name__ == "__main__":  # the resume test's subprocess: DATA OUT TRACE SETTING...
    import time

    from dhen_cvr.train import train

    data_arg, out_arg, trace_arg, *settings = sys.argv[1:]
    recorder = RowRecorder(Path(trace_arg))

    def paced(epoch: int, step: int, batch: Batch) -> None:
        """Record, and slow the second epoch so the test's kill lands mid-epoch even on a
        loaded machine (the math is untouched)."""
        recorder(epoch, step, batch)
        if epoch >= 1:
            time.sleep(0.1)

    train(
        tiny_config(*settings),
        data_arg,
        "1-2",
        out_arg,
        show_progress=False,
        on_batch=paced,
        extra_columns=RowRecorder.COLUMNS,
    )
