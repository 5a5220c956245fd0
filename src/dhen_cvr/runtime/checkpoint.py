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
a ``.tmp-*`` folder, which the next save removes. The newest ``keep`` are kept.
"""

from __future__ import annotations

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
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.model.cvr_model import CVRModel

__all__ = [
    "Checkpoint",
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
    for _, old in _step_dirs(Path(run))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    """Load a checkpoint (or a run folder's newest) with ``weights_only=True``."""
    folder = resolve_checkpoint(path)
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise DhenCvrError(f"checkpoint {folder} is incomplete: missing {missing}")
    state = torch.load(folder / "state.pt", map_location=map_location, weights_only=True)
    progress = TrainProgress(**json.loads((folder / "progress.json").read_text()))
    return Checkpoint(
        path=folder,
        state=state,
        progress=progress,
        dense_stats=json.loads((folder / "dense_stats.json").read_text()),
        spec=load_spec(folder / "spec.yaml"),
        config=yaml.safe_load((folder / "config.yaml").read_text()),
    )


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
