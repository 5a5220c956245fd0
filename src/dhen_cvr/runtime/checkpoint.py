"""Checkpoints: one self-contained folder per save, written atomically (DESIGN section 5).

Layout of a run folder and of one checkpoint::

    RUN/checkpoints/step-00000420/
        state.pt          model weights, optimiser state, RNG states (tensors and plain
                          containers only, so it loads with ``torch.load(weights_only=True)``)
        progress.json     step, epoch, batches done in that epoch, examples seen
        dense_stats.json  min-max statistics fitted on the training days
        spec.yaml         the feature spec the model was built for
        config.yaml       the experiment config (model, loss, train)

Each checkpoint is written under a temporary name in the same folder and renamed into
place when complete, so a checkpoint that exists is whole; a killed run leaves at most
a ``.tmp-*`` folder, which the next save removes. The newest ``keep`` are kept. A save
that fails (a full disk) removes its half-written folder and raises
:class:`CheckpointWriteError`; the checkpoints before it are untouched.

Loading a run folder takes its newest checkpoint that loads: a damaged one (truncated,
empty or garbage ``state.pt``, unreadable metadata) is skipped with a warning naming it
and the one used instead; :class:`DamagedCheckpointError` when none loads.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from dhen_cvr.config import ExperimentConfig
from dhen_cvr.data.spec import FeatureSpec, load_spec
from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.errors import DhenCvrError, warn
from dhen_cvr.model.cvr_model import CVRModel

__all__ = [
    "Checkpoint",
    "CheckpointWriteError",
    "DamagedCheckpointError",
    "TrainProgress",
    "TrainedModel",
    "latest_checkpoint",
    "load_checkpoint",
    "load_trained_model",
    "resolve_checkpoint",
    "save_checkpoint",
]

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_FILES = ("state.pt", "progress.json", "dense_stats.json", "spec.yaml", "config.yaml")


class DamagedCheckpointError(DhenCvrError):
    """A checkpoint folder whose files cannot be read back."""


class CheckpointWriteError(DhenCvrError):
    """A checkpoint could not be written (e.g. the disk is full)."""


@dataclass(frozen=True)
class TrainProgress:
    """Where training stands. ``batches_in_epoch`` optimiser steps of epoch ``epoch`` are
    done (each rank consumed that many of its own batches), so a resumed run skips exactly
    them; after the last batch of an epoch the progress reads ``(epoch + 1, 0)``."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    examples_seen: int = 0


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``state`` holds ``model``, ``optimizer`` and ``rng`` (one
    dict of generator states per rank)."""

    path: Path
    state: dict[str, Any]
    progress: TrainProgress
    dense_stats: dict[str, Any]
    spec: FeatureSpec
    config: dict[str, Any]

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.state["model"]


def _fsync_write(path: Path, write: Any) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _step_dirs(run: Path) -> list[tuple[int, Path]]:
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def save_checkpoint(
    run: str | Path,
    *,
    state: dict[str, Any],
    progress: TrainProgress,
    dense_stats: dict[str, Any],
    spec: FeatureSpec,
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``RUN/checkpoints/step-<step>/`` atomically; keep the newest ``keep``."""
    folder = Path(run) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for previous in folder.glob(".previous-*"):  # a replaced copy (see below)
        original = folder / previous.name.removeprefix(".previous-").rsplit("-", 1)[0]
        if original.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:  # killed between the two renames: the old copy is the only one
            os.rename(previous, original)
    final = folder / f"step-{progress.step:08d}"
    newest = latest_checkpoint(run)
    try:
        _write_checkpoint(folder, final, state, progress, dense_stats, spec, config)
    except OSError as err:
        kept = f"the newest checkpoint {newest} is intact" if newest else "no checkpoint yet"
        raise CheckpointWriteError(
            f"cannot write checkpoint {final}: {err.strerror or err} "
            f"[{errno.errorcode.get(err.errno or 0, 'OSError')}]; nothing half-written was "
            f"left, {kept}; free some space and continue with --resume"
        ) from err
    for _, old in _step_dirs(Path(run))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(
    folder: Path,
    final: Path,
    state: dict[str, Any],
    progress: TrainProgress,
    dense_stats: dict[str, Any],
    spec: FeatureSpec,
    config: dict[str, Any],
) -> None:
    """Write ``final`` under a temporary name, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=folder))
    try:
        _fsync_write(tmp / "state.pt", lambda f: torch.save(state, f))
        texts = {
            "progress.json": json.dumps(asdict(progress), indent=2),
            "dense_stats.json": json.dumps(dense_stats, indent=2),
            "spec.yaml": spec.to_yaml(),
            "config.yaml": yaml.safe_dump(config, sort_keys=False),
        }
        for name, text in texts.items():
            _fsync_write(tmp / name, lambda f, text=text: f.write(text.encode()))
        replaced: Path | None = None
        if final.exists():  # the same step saved again (end of a resumed epoch, recalibration)
            replaced = folder / f".previous-{final.name}-{os.getpid()}"
            os.rename(final, replaced)  # two renames: the old copy exists until the new one does
        os.rename(tmp, final)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    dirs = _step_dirs(Path(run))
    return dirs[-1][1] if dirs else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (-> its newest checkpoint)."""
    p = Path(path)
    if (p / "state.pt").is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise DhenCvrError(f"{p} is neither a checkpoint nor a run folder with checkpoints")
    return latest


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder, or a run folder's newest checkpoint that loads (a damaged
    newer one is skipped with a warning), with ``weights_only=True``."""
    p = Path(path)
    if (p / "state.pt").is_file():
        return _load_one(p, map_location)
    candidates = [folder for _, folder in reversed(_step_dirs(p))]
    if not candidates:
        raise DhenCvrError(f"{p} is neither a checkpoint nor a run folder with checkpoints")
    damaged: list[str] = []
    for folder in candidates:
        try:
            checkpoint = _load_one(folder, map_location)
        except DamagedCheckpointError as err:
            damaged.append(str(err))
            continue
        for problem in damaged:
            warn(f"{problem}; using the previous checkpoint {folder}")
        return checkpoint
    raise DamagedCheckpointError(f"no checkpoint of {p} loads: " + "; ".join(damaged))


def _load_one(folder: Path, map_location: str | torch.device) -> Checkpoint:
    """One checkpoint folder; :class:`DamagedCheckpointError` names the file that fails."""
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise DamagedCheckpointError(f"checkpoint {folder} is incomplete: missing {missing}")
    name = "state.pt"
    try:
        state = torch.load(folder / name, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or not {"model", "optimizer", "rng"} <= state.keys():
            raise ValueError("not a dhen-cvr checkpoint state (no model/optimizer/rng)")
        name = "progress.json"
        progress = TrainProgress(**json.loads((folder / name).read_text()))
        name = "dense_stats.json"
        dense_stats = json.loads((folder / name).read_text())
        name = "spec.yaml"
        spec = load_spec(folder / name)
        name = "config.yaml"
        config = yaml.safe_load((folder / name).read_text())
        if not isinstance(config, dict):
            raise ValueError("not a mapping")
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # a damaged file fails in many ways (EOF, zip, pickle, JSON)
        size = (folder / name).stat().st_size
        reason = (str(err).strip().splitlines() or ["the file ends early"])[0]
        raise DamagedCheckpointError(
            f"checkpoint {folder} is damaged: {name} ({size} bytes) does not load: "
            f"{type(err).__name__}: {reason}"
        ) from None
    return Checkpoint(folder, state, progress, dense_stats, spec, config)


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what it was built from."""

    model: CVRModel
    spec: FeatureSpec
    config: ExperimentConfig
    checkpoint: Checkpoint


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model of a run folder's newest checkpoint (or of a checkpoint folder):
    its spec, config and fitted dense statistics, then its weights."""
    checkpoint = load_checkpoint(path, map_location=device)
    config = ExperimentConfig.from_dict(checkpoint.config, str(checkpoint.path / "config.yaml"))
    stats = MinMaxStats.from_dict(checkpoint.dense_stats)
    model = CVRModel(checkpoint.spec, config.model, stats)
    model.load_state_dict(checkpoint.model_state)
    model.to(device).eval()
    return TrainedModel(model, checkpoint.spec, config, checkpoint)
