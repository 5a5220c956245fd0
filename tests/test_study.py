"""Studies: a base config + variants x seeds, each an ordinary run; mean/std summary."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dhen_cvr.cli import app, main
from dhen_cvr.errors import DhenCvrError
from dhen_cvr.eval.evaluate import EvalReport
from dhen_cvr.study import load_study, run_study
from dhen_cvr.study.runner import parse_seeds
from train_world import FAST, make_world

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("study") / "world")


def _study_file(tmp_path: Path, **extra: object) -> Path:
    study = {
        "base": str(CONFIGS / "tiny.yaml"),
        "seeds": [0, 1],
        "set": {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in FAST)},
        "variants": {
            "dhen": {"loss.ssl.objective": "none"},
            "mlp": {
                "model.dhen.layers": [{"modules": [{"name": "mlp", "hidden": [16]}]}],
                "loss.ssl.objective": "none",
            },
        },
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_runs_every_variant_and_seed_and_summarises(data: Path, tmp_path: Path) -> None:
    study = load_study(_study_file(tmp_path))
    result = run_study(study, data, "1", "2", tmp_path / "out", show_progress=False)

    for variant in ("dhen", "mlp"):
        reports = [
            EvalReport.load(tmp_path / "out" / variant / f"seed{s}" / "eval.json") for s in (0, 1)
        ]
        aucs = [r.mean["checkout"]["roc_auc"] for r in reports]
        mean, std, n = result.summary[variant]["checkout"]["roc_auc"]
        assert n == 2
        assert mean == pytest.approx(statistics.fmean(aucs), abs=1e-12)
        assert std == pytest.approx(statistics.stdev(aucs), abs=1e-12)
        # the seed reached the run: two seeds, two different models
        assert aucs[0] != aucs[1]
    config = yaml.safe_load((tmp_path / "out" / "mlp" / "seed1" / "config.yaml").read_text())
    assert config["train"]["seed"] == 1
    assert [m["name"] for m in config["model"]["dhen"]["layers"][0]["modules"]] == ["mlp"]
    assert result.oracle["checkout"]["roc_auc"] > 0.5
    assert "| oracle |" in (tmp_path / "out" / "summary.md").read_text()

    # A second call reuses the finished runs (no retraining: files untouched).
    stamp = (tmp_path / "out" / "dhen" / "seed0" / "eval.json").stat().st_mtime_ns
    again = run_study(study, data, "1", "2", tmp_path / "out", show_progress=False)
    assert (tmp_path / "out" / "dhen" / "seed0" / "eval.json").stat().st_mtime_ns == stamp
    assert again.summary == result.summary

    # ... but never a finished run of another config or other days: that is an error.
    changed = load_study(
        _study_file(tmp_path, variants={"dhen": {"loss.ssl.objective": "none", "train.lr": 0.01}})
    )
    with pytest.raises(DhenCvrError, match=r"another config \(train\.lr: 0\.003 there, 0\.01"):
        run_study(changed, data, "1", "2", tmp_path / "out", show_progress=False)
    with pytest.raises(DhenCvrError, match="other evaluation days"):
        run_study(study, data, "1", "3", tmp_path / "out", show_progress=False)
    assert (tmp_path / "out" / "dhen" / "seed0" / "eval.json").stat().st_mtime_ns == stamp


def test_bad_study_files_fail_before_training(data: Path, tmp_path: Path) -> None:
    with pytest.raises(DhenCvrError, match="variants"):
        load_study(_study_file(tmp_path, variants={}))
    bad = load_study(_study_file(tmp_path, variants={"x": {"train.lr": "fast"}}))
    with pytest.raises(DhenCvrError, match=r"train\.lr"):
        run_study(bad, data, "1-2", "3", tmp_path / "out", show_progress=False)
    assert not list((tmp_path / "out").glob("x/*"))
    with pytest.raises(DhenCvrError, match="day 9 does not exist"):
        run_study(load_study(_study_file(tmp_path)), data, "1", "9", tmp_path / "o3", workers=2)
    assert not (tmp_path / "o3").exists() or not list((tmp_path / "o3").glob("*/*"))
    with pytest.raises(DhenCvrError, match="unknown variants"):
        run_study(load_study(_study_file(tmp_path)), data, "1", "2", tmp_path / "o2", only=["nope"])


def test_shipped_study_configs_load() -> None:
    from dhen_cvr.config import load_experiment_config

    study = load_study(CONFIGS / "studies" / "cpu_baselines.yaml")
    for variant in study.variants:
        load_experiment_config(study.base, study.overrides(variant, 0))


def test_cli_study(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _study_file(tmp_path, seeds=[0], variants={"dhen": {"loss.ssl.objective": "none"}})
    args = ["study", "--study", str(path), "--data", str(data), "--train-days", "1"]
    args += ["--eval-days", "2", "--out", str(tmp_path / "cli"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ROC-AUC" in result.output and "| dhen |" in result.output
    # --seeds replaces the study's seeds; the finished seed-0 run is reused, not retrained
    first = (tmp_path / "cli" / "dhen" / "seed0" / "eval.json").stat().st_mtime_ns
    result = CliRunner().invoke(app, [*args, "--seeds", "0-1"])
    assert result.exit_code == 0, result.output
    assert "(2) |" in result.output and (tmp_path / "cli" / "dhen" / "seed1" / "eval.json").exists()
    assert (tmp_path / "cli" / "dhen" / "seed0" / "eval.json").stat().st_mtime_ns == first
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--seeds", "3-1"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0 and "--seeds: expected" in err
    assert not (tmp_path / "cli" / "dhen" / "seed3").exists()


def test_parse_seeds() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0, 3,7-8,3") == [0, 3, 7, 8]
    for bad in ("", "a", "-1", "2-", "1-2-3"):
        with pytest.raises(DhenCvrError, match="--seeds"):
            parse_seeds(bad)


def test_study_lists_a_gbdt_baseline_beside_the_variants(data: Path, tmp_path: Path) -> None:
    """A ``baselines:`` entry is trained per seed with the same days and summarised as a row."""
    pytest.importorskip("lightgbm", reason="the GBDT baseline needs dhen-cvr[baselines]")
    baselines = {"gbdt": {"gbdt.n_estimators": 30, "gbdt.early_stopping": "none"}}
    study = load_study(_study_file(tmp_path, baselines=baselines))
    assert study.names == ["dhen", "mlp", "gbdt"]
    result = run_study(study, data, "1-2", "3", tmp_path / "out", only=["gbdt"])
    assert list(result.summary) == ["gbdt"]
    for seed in (0, 1):
        report = EvalReport.load(tmp_path / "out" / "gbdt" / f"seed{seed}" / "eval.json")
        assert report.heads == result.heads and len(report.days) == 1
    assert result.summary["gbdt"]["checkout"]["roc_auc"][2] == 2  # both seeds
    assert "| gbdt |" in (tmp_path / "out" / "summary.md").read_text()
    # a finished baseline is reused as it is, but not under another config
    assert run_study(study, data, "1-2", "3", tmp_path / "out", only=["gbdt"]).summary == (
        result.summary
    )
    more = {"gbdt": {"gbdt.n_estimators": 40, "gbdt.early_stopping": "none"}}
    changed = load_study(_study_file(tmp_path, baselines=more))
    with pytest.raises(DhenCvrError, match=r"another config \(gbdt\.n_estimators: 30 there, 40"):
        run_study(changed, data, "1-2", "3", tmp_path / "out", only=["gbdt"])


def test_parallel_study_matches_the_sequential_one(data: Path, tmp_path: Path) -> None:
    """``workers=2`` runs two seeds at once in spawned processes and writes the same results."""
    study = load_study(_study_file(tmp_path, variants={"dhen": {"loss.ssl.objective": "none"}}))
    threads = ["train.threads=1"]
    one = run_study(
        study, data, "1", "2", tmp_path / "one", extra_overrides=threads, show_progress=False
    )
    two = run_study(
        study,
        data,
        "1",
        "2",
        tmp_path / "two",
        extra_overrides=threads,
        show_progress=False,
        workers=2,
    )
    assert two.summary == one.summary
    for seed in (0, 1):
        a, b = (
            EvalReport.load(tmp_path / o / "dhen" / f"seed{seed}" / "eval.json")
            for o in ("one", "two")
        )
        assert a.mean == b.mean
    with pytest.raises(DhenCvrError, match="--workers"):
        run_study(study, data, "1", "2", tmp_path / "three", workers=0)
