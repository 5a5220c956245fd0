"""Run folders: what a training run writes beside its checkpoints, and reads back to
resume (DESIGN section 5)::

    RUN/config.yaml        the experiment config
    RUN/run.json           data folder, training days, warm start
    RUN/checkpoints/       see :mod:`dhen_cvr.runtime.checkpoint`
    RUN/metrics.jsonl, RUN/tb/, RUN/eval.json, RUN/data_notes.json

A run folder without a checkpoint is a failed start (it stopped before its first save):
starting the same run there again is allowed, and replaces only the files a run writes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from dhen_cvr.config import ExperimentConfig
from dhen_cvr.errors import DhenCvrError, warn
from dhen_cvr.runtime.checkpoint import CHECKPOINTS, latest_checkpoint

__all__ = [
    "RUN_FILE",
    "RunInfo",
    "check_new_run_folder",
    "clear_failed_start",
    "is_failed_start",
    "read_run_folder",
    "write_run_folder",
]

RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunInfo:
    """What ``RUN/config.yaml`` and ``RUN/run.json`` record."""

    config: ExperimentConfig
    data: Path
    train_days: list[str]
    init_from: Path | None
    spec: Path | None = None  # a feature spec kept outside the data folder (``--spec``)


def is_failed_start(run: Path) -> bool:
    """``run`` is a run folder that never saved a checkpoint (nothing to continue)."""
    return (run / RUN_FILE).is_file() and latest_checkpoint(run) is None


def check_new_run_folder(run: Path) -> bool:
    """May a new run start in ``run``? Yes when it is missing or empty, or a failed start
    (returns True: :func:`clear_failed_start` it first); refused otherwise."""
    if not run.exists() or not any(run.iterdir()):
        return False
    if is_failed_start(run):
        return True
    if (run / RUN_FILE).is_file():
        raise DhenCvrError(
            f"run folder {run} exists and is not empty; pass --resume to continue it (from "
            f"{latest_checkpoint(run)}) or choose another --out"
        )
    raise DhenCvrError(
        f"run folder {run} exists and is not empty (and is not a dhen-cvr run folder: no "
        f"{RUN_FILE}); choose another --out"
    )


def clear_failed_start(run: Path) -> None:
    """Remove what a failed start wrote (logs, TensorBoard events, temporary checkpoint
    folders); files the run did not write are left alone."""
    warn(
        f"{run} holds a run that stopped before its first checkpoint; starting it again "
        "(its metrics.jsonl and TensorBoard events are replaced)"
    )
    for name in ("metrics.jsonl", "eval.json", "data_notes.json"):
        (run / name).unlink(missing_ok=True)
    for event in (run / "tb").glob("events.out.tfevents.*"):
        event.unlink()
    for tmp in (run / CHECKPOINTS).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def write_run_folder(run: Path, info: RunInfo) -> None:
    """Create ``run`` with its ``config.yaml`` and ``run.json``: what a resume needs."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(info.config.to_dict(), sort_keys=False))
    record = {
        "data": str(info.data.resolve()),
        "train_days": info.train_days,
        "init_from": None if info.init_from is None else str(info.init_from.resolve()),
        "spec": None if info.spec is None else str(info.spec.resolve()),
    }
    (run / RUN_FILE).write_text(json.dumps(record, indent=2))


def read_run_folder(run: Path) -> RunInfo | None:
    """The stored run description, or None when ``run`` was never started."""
    info_path = run / RUN_FILE
    if not info_path.is_file():
        if run.exists() and any(run.iterdir()):
            raise DhenCvrError(f"cannot resume: {run} is not a run folder (no {RUN_FILE})")
        return None
    try:
        record = json.loads(info_path.read_text())
        data, days, init_from = record["data"], list(record["train_days"]), record.get("init_from")
    except (ValueError, KeyError, TypeError) as err:
        raise DhenCvrError(f"{info_path} is damaged: {type(err).__name__}: {err}") from None
    config_path = run / "config.yaml"
    try:
        stored = yaml.safe_load(config_path.read_text())
    except (FileNotFoundError, yaml.YAMLError) as err:
        raise DhenCvrError(f"{config_path} is missing or damaged: {err}") from None
    config = ExperimentConfig.from_dict(stored, str(config_path))
    spec = record.get("spec")
    return RunInfo(config, Path(data), days, init_from and Path(init_from), spec and Path(spec))
