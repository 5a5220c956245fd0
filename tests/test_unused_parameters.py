"""``train.find_unused_parameters: auto`` decides from the config what one real training
step shows: whether some parameter gets no gradient (DDP must then look for it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dhen_cvr.data.reader import ParquetBatchStream
from dhen_cvr.data.spec import load_data_spec
from dhen_cvr.days import select_days
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.train.losses import MultiTaskBCELoss, build_ssl_loss
from dhen_cvr.train.trainer import TrainingObjective, needs_unused_parameters
from train_world import make_world, tiny_config

EVERY = "loss.ssl.weights={search: 0.1, org: 0.1, ads: 0.1, match: 0.1, conv: 0.1}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("unused") / "world")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ((EVERY,), False),  # NAL on every sequence: every parameter is used
        ((), True),  # tiny.yaml: SSL on org and ads only; the others' projections unused
        (("loss.ssl.objective=none",), True),
        ((EVERY, "loss.ssl.objective=mlm", "model.sequence.causal=false"), False),
        (("loss.ssl.objective=mlm", "model.sequence.causal=false"), True),
    ],
    ids=["nal-all", "tiny", "no-ssl", "mlm-all", "mlm-two"],
)
def test_auto_matches_the_parameters_a_step_leaves_without_gradient(
    data: Path, settings: tuple[str, ...], expected: bool
) -> None:
    config = tiny_config(*settings)
    spec = load_data_spec(data)
    torch.manual_seed(0)
    model = CVRModel(spec, config.model)
    supervised = MultiTaskBCELoss.from_config(config.loss, model.head_names)
    objective = TrainingObjective(model, supervised, build_ssl_loss(config.loss.ssl))
    batch = next(iter(ParquetBatchStream(select_days(data, "1"), spec, batch_size=64)))
    share = torch.ones(len(model.head_names)), torch.tensor(1.0)
    loss, _ = objective(batch, torch.Generator().manual_seed(0), *share)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert bool(unused) == expected, unused
    assert needs_unused_parameters(config, spec) == expected
