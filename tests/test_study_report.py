"""A study's headline report: lift vs the declared baseline (paired by seed), the paper's
number beside ours, GBDT and oracle rows, and the PNG plot; the paper presets load."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml

from dhen_cvr.config import load_experiment_config
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.eval.evaluate import EvalReport
from dhen_cvr.study import load_study, run_study
from train_world import FAST, make_world

CONFIGS = Path(__file__).parents[1] / "configs"
PRESETS = ["fig5_modules", "table1_layers", "table3_ssl", "fig6_feature_categories"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("study_report") / "world")


def _study(tmp_path: Path, **extra: object) -> Path:
    study = {
        "title": "tiny: dhen vs mlp",
        "base": str(CONFIGS / "tiny.yaml"),
        "seeds": [0],
        "set": {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in FAST)},
        "baseline": "mlp",
        "lift_metric": "roc_auc",
        "variants": {
            "mlp": {
                "model.dhen.layers": [{"modules": [{"name": "mlp", "hidden": [16]}]}],
                "loss.ssl.objective": "none",
            },
            "dhen": {"loss.ssl.objective": "none"},
        },
        "paper": {"dhen": 0.31},
        "paper_note": "DHEN is the best by a large margin.",
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _served_mean(report: EvalReport, metric: str) -> float:
    return statistics.fmean(
        report.mean[h][metric] for h in report.heads if report.served.get(h, True)
    )


def test_report_has_lift_paper_gbdt_oracle_and_a_plot(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("lightgbm", reason="the GBDT row needs dhen-cvr[baselines]")
    baselines = {"gbdt": {"gbdt.n_estimators": 20, "gbdt.early_stopping": "none"}}
    study = load_study(_study(tmp_path, baselines=baselines))
    out = tmp_path / "out"
    result = run_study(study, data, "1", "2", out, show_progress=False)

    dhen = EvalReport.load(out / "dhen" / "seed0" / "eval.json")
    mlp = EvalReport.load(out / "mlp" / "seed0" / "eval.json")
    gbdt = EvalReport.load(out / "gbdt" / "seed0" / "eval.json")
    lift = (
        100
        * (_served_mean(dhen, "roc_auc") - _served_mean(mlp, "roc_auc"))
        / _served_mean(mlp, "roc_auc")
    )
    gbdt_lift = 100 * (_served_mean(gbdt, "roc_auc") / _served_mean(mlp, "roc_auc") - 1)
    oracle = _served_mean(mlp, "oracle_roc_auc")
    report = (out / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")
    }
    assert f"{lift:+.2f}%" in rows["dhen"] and "+0.31%" in rows["dhen"]
    assert f"{_served_mean(dhen, 'roc_auc'):.4f} ± 0.0000" in rows["dhen"]
    assert "0 (by definition)" in rows["mlp (baseline)"]
    assert f"{gbdt_lift:+.2f}%" in rows["gbdt (GBDT yardstick)"]
    assert f"{oracle:.4f}" in rows["oracle"]
    assert oracle > max(_served_mean(r, "roc_auc") for r in (dhen, mlp, gbdt))
    assert "Paper ordering" in report and "DHEN is the best" in report
    assert result.markdown.startswith("## tiny: dhen vs mlp")  # the CLI prints it first
    png = (out / "lift.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_lift_metric_pr_auc_and_the_ordering_note(data: Path, tmp_path: Path) -> None:
    study = load_study(_study(tmp_path, lift_metric="pr_auc", paper={"dhen": -5.0}))
    out = tmp_path / "out"
    run_study(study, data, "1", "2", out, show_progress=False)
    dhen = EvalReport.load(out / "dhen" / "seed0" / "eval.json")
    mlp = EvalReport.load(out / "mlp" / "seed0" / "eval.json")
    lift = 100 * (_served_mean(dhen, "pr_auc") / _served_mean(mlp, "pr_auc") - 1)
    report = (out / "report.md").read_text()
    assert "PR-AUC lift vs mlp" in report and f"{lift:+.2f}%" in report
    agrees = 1 if lift < 0 else 0
    assert f"the sign of the lift agrees for {agrees} of 1 rows" in report


def test_bad_baseline_or_paper_names_fail_at_load(tmp_path: Path) -> None:
    with pytest.raises(DhenCvrError, match="baseline 'nope'"):
        load_study(_study(tmp_path, baseline="nope"))
    with pytest.raises(DhenCvrError, match="paper names unknown variants"):
        load_study(_study(tmp_path, paper={"transformer": 1.0}))


@pytest.mark.parametrize("name", PRESETS)
def test_paper_study_presets_load(name: str) -> None:
    study = load_study(CONFIGS / "studies" / f"{name}.yaml")
    assert study.baseline in study.variants and "gbdt" in study.baselines
    for variant in study.variants:
        load_experiment_config(study.base, study.overrides(variant, 0))
