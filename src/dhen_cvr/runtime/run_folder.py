"""Run folders: what a training run writes beside its checkpoints, and reads back to
resume (DESIGN section 5)::

    RUN/config.yaml        the experiment config
    RUN/run.json           data folder, training days, warm start
    RUN/checkpoints/       see :mod:`dhen_cvr.runtime.checkpoint`
    RUN/metrics.jsonl, RUN/tb/, RUN/eval.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from dhen_cvr.config import ExperimentConfig
from dhen_cvr.errors import DhenCvrError

__all__ = ["RUN_FILE", "RunInfo", "check_new_run_folder", "read_run_folder", "write_run_folder"]

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunInfo:
    """What ``RUN/config.yaml`` and ``RUN/run.json`` record."""

    config: ExperimentConfig
    data: Path
    train_days: list[str]
    init_from: Path | None


def check_new_run_folder(run: Path) -> None:
    """Refuse to start a new run in a folder that already holds something."""
    if run.exists() and any(run.iterdir()):
        raise DhenCvrError(
            f"run folder {run} exists and is not empty; pass --resume to continue it "
            "or choose another --out"
        )


def write_run_folder(run: Path, info: RunInfo) -> None:
    """Create ``run`` with its ``config.yaml`` and ``run.json``: what a resume needs."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(info.config.to_dict(), sort_keys=False))
    record = {
        "data": str(info.data.resolve()),
        "train_days": info.train_days,
        "init_from": None if info.init_from is None else str(info.init_from.resolve()),
    }
    (run / RUN_FILE).write_text(json.dumps(record, indent=2))


def read_run_folder(run: Path) -> RunInfo | None:
    """The stored run description, or None when ``run`` was never started."""
    info_path = run / RUN_FILE
    if not info_path.is_file():
        if run.exists() and any(run.iterdir()):
            raise DhenCvrError(f"cannot resume: {run} is not a run folder (no {RUN_FILE})")
        return None
    record = json.loads(info_path.read_text())
    config = ExperimentConfig.from_dict(
        yaml.safe_load((run / "config.yaml").read_text()), str(run / "config.yaml")
    )
    init_from = record.get("init_from")
    return RunInfo(
        config, Path(record["data"]), list(record["train_days"]), init_from and Path(init_from)
    )
