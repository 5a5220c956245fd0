"""Training on CUDA: one GPU computes what the CPU computes, and 2-GPU NCCL DDP trains
the one-process model (the NCCL twin of tests/test_ddp.py: same aligned world, same
uneven last step, collectives on CUDA tensors, metrics gathered over the gloo side group).

Skipped, with the reason, where torch sees no GPU (the 2-GPU test also where it sees one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dhen_cvr.data.reader import ParquetBatchStream
from dhen_cvr.data.spec import load_data_spec
from dhen_cvr.data.stats import fit_minmax_stats
from dhen_cvr.days import select_days
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.runtime.checkpoint import load_checkpoint
from dhen_cvr.train import train
from dhen_cvr.train.losses import MultiTaskBCELoss, build_ssl_loss
from dhen_cvr.train.trainer import TrainingObjective
from train_world import align_row_groups, make_world, tiny_config, torchrun_train

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.skipif(
    GPUS == 0,
    reason=f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)",
)
ROWS_PER_GROUP = 40
SETTINGS = ("train.shuffle=false", "loss.ssl.objective=none", "train.batch_size=80")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda")
    world = make_world(root / "world")
    return align_row_groups(world, root / "aligned", ROWS_PER_GROUP, odd_over_days=3)


def test_one_gpu_step_matches_the_cpu(data: Path) -> None:
    """The objective, the logged terms and every gradient of one step agree within
    float32 tolerance (SSL off: its negatives come from a per-device generator)."""
    config = tiny_config("loss.ssl.objective=none")
    spec = load_data_spec(data)
    days = select_days(data, "1")
    stats = fit_minmax_stats(days, spec)
    batch = next(iter(ParquetBatchStream(days, spec, batch_size=64)))
    results = {}
    for device in (torch.device("cpu"), torch.device("cuda", 0)):
        torch.manual_seed(0)
        model = CVRModel(spec, config.model, stats).to(device)
        supervised = MultiTaskBCELoss.from_config(config.loss, model.head_names)
        objective = TrainingObjective(model, supervised, build_ssl_loss(config.loss.ssl))
        objective.to(device)
        share = torch.ones(len(model.head_names), device=device), torch.tensor(1.0, device=device)
        generator = torch.Generator(device).manual_seed(0)
        loss, logged = objective(batch.to(device), generator, *share)
        loss.backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
        results[device.type] = (loss.detach().cpu(), logged.cpu(), grads)
    (cpu_loss, cpu_logged, cpu_grads), (gpu_loss, gpu_logged, gpu_grads) = results.values()
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gpu_logged, cpu_logged, rtol=1e-4, atol=1e-6)
    assert gpu_grads.keys() == cpu_grads.keys()
    for name, grad in gpu_grads.items():
        torch.testing.assert_close(grad, cpu_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_one_gpu_training_matches_the_cpu(data: Path, tmp_path: Path) -> None:
    """A few steps of the real loop on the GPU land where the CPU run lands."""
    runs = {}
    for device in ("cpu", "cuda"):
        config = tiny_config(*SETTINGS, f"train.device={device}")
        runs[device] = train(config, data, "1", tmp_path / device, show_progress=False)
    cpu, gpu = runs["cpu"], runs["cuda"]
    assert gpu.progress == cpu.progress
    ref = load_checkpoint(cpu.checkpoint).model_state
    for name, value in load_checkpoint(gpu.checkpoint).model_state.items():
        torch.testing.assert_close(value.cpu(), ref[name], rtol=0, atol=2e-3, msg=name)
    records = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (tmp_path / "cpu", tmp_path / "cuda")
    ]
    assert records[1][0]["loss"] == pytest.approx(records[0][0]["loss"], rel=1e-4)


@pytest.mark.skipif(GPUS < 2, reason=f"needs 2 CUDA devices, torch sees {GPUS}")
def test_two_gpu_nccl_ddp_matches_one_process(data: Path, tmp_path: Path) -> None:
    config = tiny_config(*SETTINGS, "train.device=cuda")
    single = train(config, data, "1-3", tmp_path / "one", show_progress=False)
    done = torchrun_train(2, data, tmp_path / "ddp", (*SETTINGS, "train.device=cuda"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = load_checkpoint(tmp_path / "ddp")
    assert ddp.progress == single.progress  # the uneven last step: nothing dropped
    ref = load_checkpoint(single.checkpoint).model_state
    for name, value in ddp.model_state.items():
        torch.testing.assert_close(value.cpu(), ref[name].cpu(), rtol=0, atol=1e-3, msg=name)
    report = json.loads((tmp_path / "ddp" / "eval.json").read_text())
    assert all(0 <= m["roc_auc"] <= 1 for m in report["mean"].values())
