"""Next-day evaluation equals scikit-learn on the same predictions; lift, report, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from typer.testing import CliRunner

from dhen_cvr.cli import app
from dhen_cvr.data.reader import ParquetBatchStream
from dhen_cvr.days import day_name, select_days
from dhen_cvr.eval.evaluate import EvalReport, evaluate, evaluation_file
from dhen_cvr.eval.report import format_report, table_rows
from dhen_cvr.runtime.checkpoint import load_trained_model
from dhen_cvr.train import train
from train_world import TINY_WORLD, make_world, tiny_config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The data, a model trained on days 1-2, and a weaker baseline (day 1, no SSL)."""
    root = tmp_path_factory.mktemp("evaluate")
    data = make_world(root / "world")
    train(tiny_config(), data, "1-2", root / "model", show_progress=False)
    train(
        tiny_config("loss.ssl.objective=none", "train.seed=1"),
        data,
        "1",
        root / "baseline",
        show_progress=False,
    )
    return data, root / "model", root / "baseline"


def _score_day(run: Path, day: Path) -> dict[str, np.ndarray]:
    """Independent scoring: the model's plain forward, batch by batch, in float64."""
    trained = load_trained_model(run)
    keys = ("p", "a", "y", "m", "w", "pi", "oracle")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    stream = ParquetBatchStream([day], trained.spec, batch_size=2048, shuffle=False)
    with torch.no_grad():
        for batch in stream:
            out = trained.model(batch)
            assert out.keep_logit is not None  # the world is down-sampled
            parts["p"].append(torch.sigmoid(out.logits).double().numpy())
            parts["a"].append(torch.sigmoid(out.keep_logit).double().numpy())
            parts["y"].append(batch.labels.double().numpy())
            parts["m"].append(batch.label_mask.numpy() > 0)
            parts["w"].append(batch.weight.double().numpy())
            parts["pi"].append(batch.inclusion_prob.double().numpy())
            assert batch.oracle is not None
            parts["oracle"].append(batch.oracle.double().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_metrics_equal_sklearn(world: tuple[Path, Path, Path]) -> None:
    data, run, _ = world
    report = evaluate(run, data, "3-4")
    rate = load_trained_model(run).spec.sampling.negative_rate
    days = select_days(data, "3-4")
    assert report.days == [day_name(d) for d in days]
    for day in days:
        s = _score_day(run, day)
        for h, head in enumerate(report.heads):
            got = report.per_day[day_name(day)][head]
            rows = s["m"][:, h]
            y, p, w = s["y"][rows, h], s["p"][rows, h], s["w"][rows]
            assert got["count"] == rows.sum() and got["positives"] == y.sum()
            assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-9)
            assert got["pr_auc"] == pytest.approx(
                average_precision_score(y, p, sample_weight=w), abs=1e-9
            )
            assert got["log_loss"] == pytest.approx(
                log_loss(y, p, sample_weight=w, labels=[0, 1]), abs=1e-9
            )
            # undo the down-sampling: P(kept | x) = r / (1 - (1 - r) a_s), independently
            kept = rate / (1 - (1 - rate) * s["a"][rows])
            served = p * kept
            full = w / s["pi"][rows]  # each kept row stands for 1 / pi rows
            assert got["calibration"] == pytest.approx(
                np.sum(full * served) / np.sum(full * y), rel=1e-9
            )
            oracle = s["oracle"][rows, h]
            assert got["oracle_roc_auc"] == pytest.approx(
                roc_auc_score(y, oracle, sample_weight=w), abs=1e-9
            )
    for head in report.heads:
        for metric in ("roc_auc", "pr_auc", "log_loss", "calibration", "oracle_roc_auc"):
            per_day = [report.per_day[d][head][metric] for d in report.days]
            assert report.mean[head][metric] == pytest.approx(np.mean(per_day), rel=1e-12)
    # the oracle is the ceiling the synthetic world promises
    assert all(report.mean[h]["oracle_roc_auc"] > 0.7 for h in report.heads)


def test_full_traffic_day_is_served_at_the_training_rate(
    world: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """A day logged without down-sampling (the same world and seed, every impression kept):
    the served p still undoes the *training* data's rate, and calibration is then exact
    on the full population, sum(p) / sum(oracle p) over every row."""
    _, run, _ = world
    full = make_world(tmp_path / "full", TINY_WORLD.model_copy(update={"negative_rate": 1.0}))
    report = evaluate(run, full, "3", save=False)
    rate = load_trained_model(run).spec.sampling.negative_rate
    assert rate < 1 and report.negative_rate == rate
    assert (
        f"else at rate {rate} (the training data's; these data: 1.0)" in report.notes["calibration"]
    )
    s = _score_day(run, select_days(full, "3")[0])
    assert np.all(s["pi"] == 1) and len(s["pi"]) > 10 * report.mean["checkout"]["positives"]
    served = rate * s["p"] / (1 - (1 - rate) * s["a"][:, None])
    for h, head in enumerate(report.heads):
        got, m = report.per_day[report.days[0]][head], s["m"][:, h]
        assert got["calibration_vs_oracle"] == pytest.approx(
            served[m, h].sum() / s["oracle"][m, h].sum(), rel=1e-9
        )
    assert 0.5 < report.mean["checkout"]["calibration_vs_oracle"] < 2  # not 1 / r off


def test_baseline_lift_and_eval_json(world: tuple[Path, Path, Path]) -> None:
    data, run, baseline = world
    report = evaluate(run, data, "3", baseline=baseline)
    base = evaluate(baseline, data, "3", save=False)
    assert report.baseline == str(baseline) and report.baseline_mean == base.mean
    assert report.lift is not None
    for head in report.heads:
        for metric in ("roc_auc", "pr_auc"):
            mine, theirs = report.mean[head][metric], base.mean[head][metric]
            assert report.lift[head][metric] == pytest.approx((mine - theirs) / theirs)
    saved = EvalReport.load(evaluation_file(run, report.days))  # RUN/eval-<days>.json
    assert saved.days == report.days and saved.lift == report.lift
    assert saved.mean["click"]["roc_auc"] == report.mean["click"]["roc_auc"]
    assert not list(baseline.glob("eval*.json"))  # save=False


def test_report_json_handles_missing_values(tmp_path: Path) -> None:
    report = EvalReport(
        run="r",
        days=["d"],
        heads=["h"],
        served={"h": True},
        negative_rate=0.5,
        per_day={"d": {"h": {"roc_auc": math.nan, "count": 0}}},
        mean={"h": {"roc_auc": math.nan, "count": 0}},
    )
    report.save(tmp_path / "eval.json")
    assert '"roc_auc": null' in (tmp_path / "eval.json").read_text()  # strict JSON
    assert math.isnan(EvalReport.load(tmp_path / "eval.json").mean["h"]["roc_auc"])


def test_report_from_before_the_standard_error_still_prints(
    world: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """An eval.json written before ``calibration_se`` existed loads and prints ``-`` there."""
    data, run, _ = world
    report = evaluate(run, data, "3", save=False)
    assert all(0 < report.mean[h]["calibration_se"] < 1 for h in report.heads)
    for metrics in [report.mean, *report.per_day.values()]:
        for head in metrics.values():
            del head["calibration_se"]
    report.save(tmp_path / "old.json")
    old = EvalReport.load(tmp_path / "old.json")
    header, rows = table_rows(old, old.mean, with_lift=False)
    column = header.index("± se")
    assert all(row[column] == "-" for row in rows)
    assert "± se" in format_report(old)


def test_cli_evaluate(world: tuple[Path, Path, Path]) -> None:
    data, run, baseline = world
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--run",
            str(run),
            "--data",
            str(data),
            "--days",
            "3-4",
            "--baseline",
            str(baseline),
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "mean over 2 days (lift vs" in out and "click (not served)" in out
    assert out.count("checkout") == 3  # two days and the mean
    assert "lift AUC" in out
    bad = CliRunner().invoke(
        app, ["evaluate", "--run", str(run), "--data", str(data), "--days", "7"]
    )
    assert "day 7 does not exist" in str(bad.exception)
