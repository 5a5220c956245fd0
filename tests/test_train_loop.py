"""The training loop end to end on a tiny world: logs, checkpoints, evaluation, options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dhen_cvr.cli import app
from dhen_cvr.data.reader import ParquetBatchStream, make_loader, num_rows
from dhen_cvr.days import select_days
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.model.probabilities import esmm_probabilities
from dhen_cvr.pipeline import train_and_evaluate
from dhen_cvr.runtime.checkpoint import load_checkpoint, load_trained_model
from dhen_cvr.train import train
from dhen_cvr.train.optim import learning_rate
from train_world import make_world, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("loop") / "world")


def test_train_logs_checkpoints_and_evaluates(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train_and_evaluate(
        tiny_config("train.tensorboard=true"), data, "1", run, eval_days="2", show_progress=False
    )
    rows = num_rows(select_days(data, "1"))
    assert result.progress.step == math.ceil(rows / 64)
    assert result.progress.examples_seen == rows and result.progress.epoch == 1
    assert result.checkpoint == run / "checkpoints" / f"step-{result.progress.step:08d}"

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = result.progress.step  # every log_every=2 steps, and the partial last window
    assert [r["step"] for r in records] == sorted({*range(2, steps + 1, 2), steps})
    heads = ["click", "checkout", "add_to_cart", "signup"]
    for key in [
        "loss",
        "loss/supervised",
        "loss/ssl",
        "ssl/org",
        "ssl/ads",
        "lr",
        "examples_per_s",
        *(f"loss/{h}" for h in heads),
    ]:
        assert all(math.isfinite(r[key]) for r in records), key
    # loss = supervised + any-keep-label BCE + SSL, supervised = the sum of the head BCEs
    r = records[-1]
    total = r["loss/supervised"] + r["loss/keep"] + r["loss/ssl"]
    assert r["loss"] == pytest.approx(total, rel=1e-5)
    assert r["loss/supervised"] == pytest.approx(sum(r[f"loss/{h}"] for h in heads), rel=1e-5)
    assert records[-1]["loss/supervised"] < records[0]["loss/supervised"]
    cfg = tiny_config().train  # a record's lr is that of its window's last step
    total = result.progress.step
    assert [r["lr"] for r in records] == [learning_rate(r["step"] - 1, total, cfg) for r in records]
    assert list((run / "tb").glob("events.out.tfevents.*"))

    report = json.loads((run / "eval.json").read_text())
    assert report["days"] == [select_days(data, "2")[0].name.split("=")[1]]
    assert set(report["mean"]) == set(heads) and report["served"]["click"] is False
    assert result.eval is not None and result.eval.mean["checkout"]["count"] > 0

    # config, spec and fitted statistics travel with the checkpoint
    ckpt = load_checkpoint(run)
    assert ckpt.config == tiny_config("train.tensorboard=true").to_dict()
    assert ckpt.dense_stats["names"] == [f.name for f in ckpt.spec.dense]


def test_existing_run_is_refused_and_a_finished_run_resumes_as_is(
    data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    first = train(tiny_config(), data, "1", run, show_progress=False)
    with pytest.raises(DhenCvrError, match="exists and is not empty; pass --resume"):
        train(tiny_config(), data, "1", run, show_progress=False)
    with pytest.raises(DhenCvrError, match="different config"):
        train(tiny_config("train.lr=0.1"), None, None, run, resume=True, show_progress=False)
    with pytest.raises(DhenCvrError, match="other training days"):
        train(None, None, "1-2", run, resume=True, show_progress=False)
    again = train(None, None, None, run, resume=True, show_progress=False)
    assert again.progress == first.progress and again.checkpoint == first.checkpoint
    # another CPU thread count is not another config (a study restarted with other --jobs)
    threads = train(
        tiny_config("train.threads=1"), None, None, run, resume=True, show_progress=False
    )
    assert threads.progress == first.progress


@pytest.mark.parametrize(
    "settings",
    [
        ("train.precision=bf16",),
        ("loss.ssl.objective=mlm", "model.sequence.causal=false", "loss.ssl.num_positives=3"),
        ("loss.formulation=esmm", "loss.ssl.objective=none", "loss.head_weights={click: 2.0}"),
    ],
    ids=["bf16", "mlm", "esmm-no-ssl"],
)
def test_training_variants(data: Path, tmp_path: Path, settings: tuple[str, ...]) -> None:
    result = train_and_evaluate(
        tiny_config(*settings), data, "1", tmp_path / "run", eval_days="2", show_progress=False
    )
    assert math.isfinite(result.train_loss)
    assert result.eval is not None
    assert all(0 <= m["roc_auc"] <= 1 for m in result.eval.mean.values())


@pytest.mark.parametrize(
    "settings",
    [
        (),
        ("loss.formulation=esmm",),
        ("train.ema_decay=0.9",),
        ("loss.ssl.objective=mlm", "model.sequence.causal=false", "loss.ssl.num_positives=3"),
    ],
    ids=["independent", "esmm", "ema", "mlm"],
)
def test_recalibrated_heads_match_their_training_labels(
    data: Path, tmp_path: Path, settings: tuple[str, ...]
) -> None:
    """After the intercept refit, sum p = sum y per head and for the any-keep head on the
    training day, p in the run's formulation (ESMM: pCTR * pCVR; a refit of the CVR logit
    alone put it ~10x low), whichever weights the run saves (EMA: the average) and
    whichever pass trained the heads (MLM: masked)."""
    run = tmp_path / "run"
    config = tiny_config(*settings)
    train(config, data, "1", run, show_progress=False)
    trained = load_trained_model(run)
    model, heads = trained.model.eval(), list(trained.model.head_names)
    esmm = config.loss.formulation == "esmm"
    p_sum, y_sum = np.zeros(len(heads) + 1), np.zeros(len(heads) + 1)
    stream = ParquetBatchStream(select_days(data, "1"), trained.spec, batch_size=256, shuffle=False)
    with torch.no_grad():
        for batch in make_loader(stream):
            out = model.encode(
                batch.dense, batch.pretrained, batch.categorical, batch.sequences, ssl=False
            )
            logits = out.logits.double()
            p = esmm_probabilities(logits, heads, "click") if esmm else torch.sigmoid(logits)
            keep = model.keep_target(batch.labels, batch.label_mask)
            assert out.keep_logit is not None and keep is not None
            p = torch.cat([p, torch.sigmoid(out.keep_logit.double())[:, None]], 1)
            y = torch.cat([batch.labels, keep[:, None]], 1).double()
            w = torch.cat([batch.label_mask, torch.ones_like(keep[:, None])], 1)
            w = (w * batch.weight[:, None]).double()
            p_sum += (w * p).sum(0).numpy()
            y_sum += (w * y).sum(0).numpy()
    np.testing.assert_allclose(p_sum, y_sum, rtol=1e-4)


def test_warm_start_needs_the_same_model(data: Path, tmp_path: Path) -> None:
    train(tiny_config(), data, "1", tmp_path / "a", show_progress=False)
    with pytest.raises(DhenCvrError, match="different model config"):
        train(
            tiny_config("model.dim=8"),
            data,
            "2",
            tmp_path / "b",
            init_from=tmp_path / "a",
            show_progress=False,
        )
    assert not (tmp_path / "b").exists()


def test_cli_train_and_its_errors(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "train",
        "--config",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "train.batch_size=128",
        "--set",
        "train.tensorboard=false",
        "--quiet",
    ]
    bad = runner.invoke(app, [*args, "--train-days", "9"])
    assert isinstance(bad.exception, DhenCvrError) and "day 9 does not exist" in str(bad.exception)
    bad = runner.invoke(app, [*args, "--train-days", "1", "--set", "train.nope=1"])
    assert "train.nope: Extra inputs are not permitted" in str(bad.exception)
    done = runner.invoke(app, [*args, "--train-days", "1", "--eval-days", "2"])
    assert done.exit_code == 0, done.output
    assert "trained 4 steps" in done.output or "trained" in done.output
    assert "click (not served)" in done.output and "oracle" in done.output


def test_threads_setting_limits_torch_threads(data: Path, tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train(tiny_config("train.threads=1"), data, "1", tmp_path / "run", show_progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_evaluation_days_may_not_be_training_days(data: Path, tmp_path: Path) -> None:
    with pytest.raises(DhenCvrError, match="in-sample"):
        train_and_evaluate(
            tiny_config(), data, "1-2", tmp_path / "a", eval_days="2", show_progress=False
        )
    assert not (tmp_path / "a").exists()  # refused before anything was written
    result = train_and_evaluate(
        tiny_config(),
        data,
        "1-2",
        tmp_path / "b",
        eval_days="2",
        show_progress=False,
        allow_in_sample_eval=True,
    )
    assert result.eval is not None and "in_sample" in result.eval.notes


def test_mlm_heads_train_on_the_clean_pass(data: Path) -> None:
    """With the MLM objective the supervised loss is that of the unmasked inputs."""
    import torch

    from dhen_cvr.data.reader import ParquetBatchStream
    from dhen_cvr.data.spec import load_spec
    from dhen_cvr.model.cvr_model import CVRModel
    from dhen_cvr.train.losses import MultiTaskBCELoss, build_ssl_loss
    from dhen_cvr.train.trainer import TrainingObjective

    config = tiny_config(
        "loss.ssl.objective=mlm", "model.sequence.causal=false", "loss.ssl.mlm_mask_prob=0.5"
    )
    spec = load_spec(data / "_spec.yaml")
    torch.manual_seed(0)
    model = CVRModel(spec, config.model).eval()
    supervised = MultiTaskBCELoss.from_config(config.loss, spec.label_names)
    objective = TrainingObjective(model, supervised, build_ssl_loss(config.loss.ssl))
    batch = next(iter(ParquetBatchStream(select_days(data, "1"), spec, batch_size=64)))
    heads = len(spec.label_names)
    share = torch.ones(heads), torch.tensor(1.0)
    _, logged = objective(batch, torch.Generator().manual_seed(0), *share)
    terms = objective.named_terms(logged)
    clean = model(batch).logits
    expected, _ = supervised(clean, batch.labels, batch.label_mask, batch.weight)
    torch.testing.assert_close(terms["loss/supervised"], expected)
    assert terms["loss/ssl"] > 0
