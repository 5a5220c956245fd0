"""ParetoNet search (paper 3.3): space, Pareto/hypervolume math, surrogate, a real search
on the tiny world, resume after ``kill -9`` (a real subprocess), and the comparison."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dhen_cvr.errors import DhenCvrError
from dhen_cvr.search import (
    TrialRecord,
    TrialStore,
    compare_searches,
    hypervolume,
    load_space,
    pareto_front,
    run_search,
)
from dhen_cvr.search.surrogate import Surrogate
from train_world import FAST, make_world

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("search") / "world")


def _space_file(tmp_path: Path, **extra: object) -> Path:
    """A small space: fast trials (one training day, 64-row batches, one thread)."""
    space = {
        "base": str(CONFIGS / "tiny.yaml"),
        "set": {
            **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in FAST)},
            "train.threads": 1,
            "train.keep_checkpoints": 1,
        },
        "dimensions": {
            "layers": [1, 2],
            "modules_per_layer": [1, 2],
            "modules": ["mlp", "dcn_v2"],
            "width": [8, 16],
            "dim": [8],
            "seq_len": [4, 8],
            "ssl_objective": ["nal", "none"],
            "ssl_positives": [2],
            "ssl_negatives": [5],
            "ssl_org_weight": [0.1],
            "ssl_ads_weight": [0.0, 0.1],
        },
        "surrogate": {"trees": 20, "folds": 3, "pool": 60, "front": 1},
        "throughput": {"batch_size": 64, "warmup": 1, "repeats": 2},
        **extra,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


# ---- the math ---------------------------------------------------------------------------


def _dominated(p: np.ndarray, q: np.ndarray) -> bool:
    return bool(np.all(q >= p) and np.any(q > p))


def _grid_hypervolume(points: np.ndarray, ref: tuple[float, float]) -> float:
    """Independent reference: sum the grid cells (between distinct coordinates) that some
    point dominates."""
    xs = np.unique(np.concatenate([[ref[0]], points[points[:, 0] > ref[0], 0]]))
    ys = np.unique(np.concatenate([[ref[1]], points[points[:, 1] > ref[1], 1]]))
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(itertools.pairwise(xs), itertools.pairwise(ys)):
        if np.any((points[:, 0] >= x1) & (points[:, 1] >= y1)):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_pareto_front_and_hypervolume_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 40):
        points = rng.random((n, 2)).round(2)  # rounding makes ties and duplicates
        front = pareto_front(points)
        brute = [
            i
            for i in range(n)
            if not any(_dominated(points[i], points[j]) for j in range(n))
            and not any(np.array_equal(points[i], points[j]) for j in range(i))
        ]
        assert sorted(front) == brute
        ref = (0.1, 0.05)
        assert hypervolume(points, ref) == pytest.approx(_grid_hypervolume(points, ref), abs=1e-12)
    # a point below the reference adds nothing; one point is its rectangle
    assert hypervolume([[0.5, 0.5], [0.9, -1.0]], (0.0, 0.0)) == pytest.approx(0.25)


# ---- the space --------------------------------------------------------------------------


def test_shipped_space_samples_valid_seeded_configs() -> None:
    space = load_space(CONFIGS / "search" / "space.yaml")
    d = space.dimensions
    first, again = space.sample_many(30, seed=3), space.sample_many(30, seed=3)
    assert [c.key for c in first] == [c.key for c in again]
    assert len({c.key for c in first}) == 30
    assert [c.key for c in space.sample_many(30, seed=4)] != [c.key for c in first]
    for c in first[:10]:
        config = space.experiment(c)  # every sampled point is a valid experiment
        layers = config.model.dhen.layers
        assert len(layers) == len(c.layers) and len(layers) in d.layers
        assert all(len(layer.modules) in d.modules_per_layer for layer in layers)
        assert config.model.dim == c.dim and config.model.sequence.max_len_cap == c.seq_len
        assert config.model.sequence.causal == (c.ssl_objective != "mlm")
        assert config.loss.ssl.num_positives == c.ssl_positives
        assert config.loss.ssl.weights == {"org": c.ssl_org_weight, "ads": c.ssl_ads_weight}
        assert len(space.features(c)) == len(space.feature_names())
    # all of a dimension's choices are reached
    many = space.sample_many(300, seed=0)
    assert {c.width for c in many} == set(d.width)
    assert {len(c.layers) for c in many} == set(d.layers)


def test_bad_space_files_fail_with_the_key(tmp_path: Path) -> None:
    with pytest.raises(DhenCvrError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    bad = yaml.safe_load(_space_file(tmp_path).read_text())
    bad["dimensions"]["modules"] = ["mlp", "nonsense"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(DhenCvrError, match="nonsense"):
        load_space(tmp_path / "bad.yaml")
    bad["dimensions"]["modules"] = ["mlp"]
    bad["dimensions"]["width"] = []
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(DhenCvrError, match="width"):
        load_space(tmp_path / "bad.yaml")


# ---- the surrogate ----------------------------------------------------------------------


def _record(space_candidate: object, auc: float, eps: float) -> TrialRecord:
    c = space_candidate
    return TrialRecord(
        key=c.key,  # type: ignore[attr-defined]
        candidate=c.model_dump(mode="json"),  # type: ignore[attr-defined]
        roc_auc=auc,
        pr_auc=auc / 10,
        train_examples_per_s=eps / 3,
        serve_examples_per_s=eps,
        loop_examples_per_s=eps / 4,
        wall_s=1.0,
    )


def test_surrogate_ranks_a_learnable_target_and_not_noise() -> None:
    space = load_space(CONFIGS / "search" / "space.yaml")
    space = space.model_copy(update={"surrogate": space.surrogate.model_copy(update={"trees": 30})})
    candidates = space.sample_many(60, seed=1)
    rng = np.random.default_rng(0)

    def truth(c: object) -> tuple[float, float]:
        modules = sum(len(layer) for layer in c.layers)  # type: ignore[attr-defined]
        auc = 0.6 + 0.01 * np.log2(c.width) + 0.005 * modules  # type: ignore[attr-defined]
        return auc, 1e5 / (modules * c.width * c.dim)  # type: ignore[attr-defined]

    learnable = [_record(c, *truth(c)) for c in candidates]
    val = Surrogate(space).validate(learnable)
    assert val.folds == 5 and len(val.keys) == 60
    assert val.spearman["roc_auc"] > 0.8 and val.spearman["log_throughput"] > 0.8
    noise = [_record(c, float(rng.random()), float(rng.random() * 1e4 + 1)) for c in candidates]
    val = Surrogate(space).validate(noise)
    assert abs(val.spearman["roc_auc"]) < 0.4
    fitted = Surrogate(space).fit(learnable).predict(candidates[:5])
    assert fitted.shape == (5, 2) and np.all(fitted[:, 1] > 0)


def test_store_skips_a_torn_last_line(tmp_path: Path) -> None:
    space = load_space(CONFIGS / "search" / "space.yaml")
    a, b = space.sample_many(2, seed=0)
    store = TrialStore(tmp_path / "trials.jsonl")
    store.append(_record(a, 0.6, 100.0))
    with open(store.path, "a") as f:
        f.write('{"key": "torn", "roc_')  # what a kill mid-write leaves
    assert list(store.load()) == [a.key]
    store.append(_record(b, 0.7, 50.0))
    assert list(store.load()) == [a.key, b.key]


# ---- real searches on the tiny world ----------------------------------------------------


def test_search_trains_trials_fits_and_trains_the_front(data: Path, tmp_path: Path) -> None:
    space = load_space(_space_file(tmp_path))
    out = tmp_path / "s"
    result = run_search(space, data, "1", "2", out, trials=3, seed=0, log=False)
    lines = (out / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 3 random + 1 front pick, all distinct
    assert len({json.loads(x)["key"] for x in lines}) == 4
    for r in [*result.trials, *result.front_trials]:
        assert 0.0 <= r.roc_auc <= 1.0 and r.serve_examples_per_s > 0
        assert r.serve_examples_per_s > r.train_examples_per_s  # a forward is cheaper
        assert (out / "runs" / r.key / "eval.json").is_file()
    assert result.front_trials[0].key not in {r.key for r in result.trials}
    assert result.proposal.picked_predicted.shape == (1, 2)
    assert set(result.validation.spearman) == {"roc_auc", "log_throughput"}
    assert (out / "pareto.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "predicted ROC-AUC" in report and "Spearman" in report
    points = [r.objective() for r in [*result.trials, *result.front_trials]]
    assert [r.key for r in result.measured_front] == [
        [*result.trials, *result.front_trials][i].key for i in pareto_front(points)
    ]
    # a rerun trains nothing: every trial comes from the store
    stamp = (out / "trials.jsonl").stat().st_mtime_ns
    again = run_search(space, data, "1", "2", out, trials=3, seed=0, log=False)
    assert (out / "trials.jsonl").stat().st_mtime_ns == stamp
    assert [r.key for r in again.front_trials] == [r.key for r in result.front_trials]


def test_search_resumes_after_kill_9_and_runs_parallel_workers(data: Path, tmp_path: Path) -> None:
    space_path, out = _space_file(tmp_path), tmp_path / "s"
    args = [sys.executable, "-m", "dhen_cvr.cli", "search", "--space", str(space_path)]
    args += ["--data", str(data), "--train-days", "1", "--eval-days", "2"]
    args += ["--trials", "3", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / "trials.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if store.is_file() and store.read_text().endswith("\n"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the search finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(x) for x in store.read_text().splitlines() if x.endswith("}")]
    assert 1 <= len(before) < 4

    space = load_space(space_path)
    result = run_search(space, data, "1", "2", out, trials=3, seed=0, workers=2, log=False)
    after = [json.loads(x) for x in store.read_text().splitlines()]
    # finished trials were kept as they were (not retrained), the rest were run once
    assert after[: len(before)] == before
    assert len(after) == 4 and len({r["key"] for r in after}) == 4
    assert {r.key for r in result.trials} == {c.key for c in space.sample_many(3, seed=0)}


def test_compare_paretonet_random_and_nsga2_at_equal_budget(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="nsga2 needs dhen-cvr[search]")
    space = load_space(_space_file(tmp_path))
    result = compare_searches(
        space,
        data,
        "1",
        "2",
        tmp_path / "c",
        budget=3,
        seeds=[0],
        methods=["paretonet", "random", "nsga2"],
        log=False,
    )
    assert set(result.curves) == {"paretonet", "random", "nsga2"}
    for per_seed in result.curves.values():
        (curve,) = per_seed
        assert len(curve) == 3
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in curve)
        assert all(b >= a for a, b in itertools.pairwise(curve))  # fronts only grow
    # paired design: ParetoNet's random phase is random search's first trials
    assert result.curves["paretonet"][0][:2] == result.curves["random"][0][:2]
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert len(saved["trials"]["nsga2"]["0"]) == 3
    assert result.trained == len(TrialStore(tmp_path / "c" / "trials.jsonl").load())
    assert (tmp_path / "c" / "hypervolume.png").is_file()
    assert "| paretonet |" in (tmp_path / "c" / "compare.md").read_text()
    with pytest.raises(DhenCvrError, match="unknown search method"):
        compare_searches(space, data, "1", "2", tmp_path / "c", budget=3, seeds=[0], methods=["x"])


def test_cli_bad_space_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dhen_cvr.cli import main

    bad = yaml.safe_load(_space_file(tmp_path).read_text())
    bad["dimensions"]["layers"] = [0, 1]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    argv = ["dhen-cvr", "search", "--space", str(tmp_path / "bad.yaml"), "--data", str(tmp_path)]
    argv += ["--train-days", "1", "--eval-days", "2", "--trials", "3", "--out", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "bad.yaml" in err and "layers" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
