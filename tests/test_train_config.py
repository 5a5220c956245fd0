"""Experiment configs: sections, presets, --set overrides, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dhen_cvr.config import ExperimentConfig, apply_overrides, load_experiment_config
from dhen_cvr.config.train import TrainConfig
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.train.optim import build_optimizer, learning_rate, set_learning_rate

CONFIG = {
    "model": {"dim": 8, "dhen": {"layers": [{"modules": [{"name": "mlp"}]}]}},
    "loss": {"ssl": {"objective": "nal", "weights": {"org": 0.5}}},
    "train": {"batch_size": 64, "lr": 0.01},
}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_load_and_round_trip(config_file: Path) -> None:
    cfg = load_experiment_config(config_file)
    assert cfg.train.batch_size == 64 and cfg.train.lr == 0.01
    assert cfg.loss.ssl.weights == {"org": 0.5}
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_overrides_parse_yaml_values(config_file: Path) -> None:
    cfg = load_experiment_config(
        config_file,
        [
            "train.lr=3e-4",
            "train.precision=bf16",
            "loss.ssl.objective=none",
            "model.dhen.layers.0.modules=[{name: mlp}, {name: dcn_v2}]",
        ],
    )
    assert math.isclose(cfg.train.lr, 3e-4) and cfg.train.precision == "bf16"
    assert cfg.loss.ssl.objective == "none"
    assert [m.name for m in cfg.model.dhen.layers[0].modules] == ["mlp", "dcn_v2"]


def test_apply_overrides_copies() -> None:
    data = {"train": {"lr": 1.0}}
    out = apply_overrides(data, ["train.epochs=3", "extra.a.b=1"])
    assert out == {"train": {"lr": 1.0, "epochs": 3}, "extra": {"a": {"b": 1}}}
    assert data == {"train": {"lr": 1.0}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lr"], "must look like section.key=value"),
        (["train.lr=-1"], r"train\.lr: Input should be greater than 0"),
        (["train.lrr=1"], r"train\.lrr: Extra inputs are not permitted"),
        (["train.lr.x=1"], r"train\.lr is not a section"),
        (["optimizer.lr=1"], r"optimizer: Extra inputs are not permitted"),
        # JSON whose quotes a shell stripped: named, not a pydantic "Field required"
        (
            ["model.dhen.layers=[{modules:[{name:mlp,hidden:[16]}]}]"],
            r"'name:mlp' was read as one key with no value .*'name: mlp'",
        ),
    ],
)
def test_bad_overrides(config_file: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(DhenCvrError, match=message):
        load_experiment_config(config_file, overrides)


def test_missing_config_names_search_places(tmp_path: Path) -> None:
    with pytest.raises(DhenCvrError, match=r"config nope not found .*nope\.yaml"):
        load_experiment_config("nope")


def test_learning_rate_schedule() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert learning_rate(0, 110, cfg) == pytest.approx(0.1)
    assert learning_rate(9, 110, cfg) == pytest.approx(1.0)
    assert learning_rate(10, 110, cfg) == pytest.approx(1.0)
    assert learning_rate(60, 110, cfg) == pytest.approx(0.55)  # half way: mean of 1 and 0.1
    assert learning_rate(110, 110, cfg) == pytest.approx(0.1)
    assert learning_rate(500, 110, cfg) == pytest.approx(0.1)
    linear = cfg.model_copy(update={"decay": "linear"})
    assert learning_rate(35, 110, linear) == pytest.approx(1.0 - 0.25 * 0.9)
    flat = cfg.model_copy(update={"decay": "none", "warmup_steps": 0})
    assert learning_rate(0, 110, flat) == learning_rate(99, 110, flat) == 1.0


def test_embedding_lr_scale_multiplies_only_the_tables_rate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 1))

    def first_step_sizes(scale: float) -> tuple[float, float]:
        m = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 1))
        m.load_state_dict(model.state_dict())
        opt = build_optimizer(m, TrainConfig(lr=0.01, embedding_lr_scale=scale))
        set_learning_rate(opt, 0.01)
        before = [p.detach().clone() for p in (m[0].weight, m[1].weight)]
        m(torch.tensor([[1, 2]])).sum().backward()
        opt.step()
        # Adam's first step moves every parameter with a gradient by lr (sign of its gradient).
        return tuple(  # type: ignore[return-value]
            float((p - b).abs().max())
            for p, b in zip((m[0].weight, m[1].weight), before, strict=True)
        )

    plain, scaled = first_step_sizes(1.0), first_step_sizes(30.0)
    assert plain == pytest.approx((0.01, 0.01), rel=1e-3)
    assert scaled == pytest.approx((0.3, 0.01), rel=1e-3)
    # At scale 1 the tables share the matrices' group: two groups, as in older checkpoints.
    assert len(build_optimizer(model, TrainConfig()).param_groups) == 2
    assert len(build_optimizer(model, TrainConfig(embedding_lr_scale=3.0)).param_groups) == 3


@pytest.mark.parametrize(
    ("objective", "causal", "message"),
    [
        ("nal", False, "nal needs model.sequence.causal: true"),
        ("mlm", True, "mlm needs model.sequence.causal: false"),
    ],
)
def test_ssl_objective_must_match_the_attention(
    config_file: Path, objective: str, causal: bool, message: str
) -> None:
    """NAL with bidirectional attention leaks the item to predict (the loss falls to ~0)."""
    overrides = [f"loss.ssl.objective={objective}", f"model.sequence.causal={str(causal).lower()}"]
    with pytest.raises(DhenCvrError, match=message):
        load_experiment_config(config_file, overrides)
    # with the SSL term off any attention is fine
    load_experiment_config(config_file, [*overrides, "loss.ssl.objective=none"])
