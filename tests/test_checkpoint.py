"""Checkpoints: complete round trip, weights_only loading, atomic writes, pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dhen_cvr.data.synth.config import WorldConfig, world_spec
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.runtime.checkpoint import (
    TrainProgress,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

SPEC = world_spec(
    WorldConfig(users=10, n_topics=2, n_advertisers=2, n_ads=4, n_pins=4, n_queries=4)
)
STATS = {"names": ["a"], "minimum": [0.0], "maximum": [2.0], "log1p": [False]}
CONFIG = {"train": {"lr": 0.1}}


def _state(seed: int = 0) -> dict[str, object]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": [{"torch": torch.get_rng_state(), "ssl": gen.get_state()}],
    }


def _save(run: Path, step: int, keep: int = 2, state: dict[str, object] | None = None) -> Path:
    return save_checkpoint(
        run,
        state=state if state is not None else _state(step),
        progress=TrainProgress(step=step, epoch=1, batches_in_epoch=step % 5, examples_seen=7),
        dense_stats=STATS,
        spec=SPEC,
        config=CONFIG,
        keep=keep,
    )


def test_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    state = _state(3)
    path = _save(tmp_path, 12, state=state)
    assert path == tmp_path / "checkpoints" / "step-00000012"
    # Everything in state.pt is tensors and plain containers.
    torch.load(path / "state.pt", weights_only=True)
    ckpt = load_checkpoint(tmp_path)  # a run folder resolves to its newest checkpoint
    assert ckpt.path == path
    assert ckpt.progress == TrainProgress(12, 1, 2, 7)
    assert ckpt.dense_stats == STATS and ckpt.config == CONFIG and ckpt.spec == SPEC
    for key, value in state["model"].items():  # type: ignore[attr-defined]
        torch.testing.assert_close(ckpt.model_state[key], value, rtol=0, atol=0)
    opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt.load_state_dict(ckpt.state["optimizer"])
    assert torch.equal(ckpt.state["rng"][0]["torch"], state["rng"][0]["torch"])  # type: ignore[index]


def test_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000003"


def test_failed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    good = _save(tmp_path, 1)
    with pytest.raises(Exception, match=r"pickle|Can't|lambda"):
        _save(tmp_path, 2, state={"model": {}, "bad": lambda: None})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]
    assert load_checkpoint(tmp_path).progress.step == 1


def test_a_killed_write_is_ignored_and_cleaned(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    stale = tmp_path / "checkpoints" / ".tmp-step-00000002-abc"
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"half a file")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000001"
    _save(tmp_path, 3)
    assert not stale.exists()


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    _save(tmp_path, 4)
    save_checkpoint(
        tmp_path,
        state=_state(4),
        progress=TrainProgress(step=4, epoch=2),
        dense_stats=STATS,
        spec=SPEC,
        config=CONFIG,
    )
    assert load_checkpoint(tmp_path).progress == TrainProgress(step=4, epoch=2)


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DhenCvrError, match="neither a checkpoint nor a run folder"):
        resolve_checkpoint(tmp_path)
    path = _save(tmp_path, 1)
    (path / "dense_stats.json").unlink()
    with pytest.raises(DhenCvrError, match=r"incomplete: missing \['dense_stats.json'\]"):
        load_checkpoint(path)
