"""Is the surrogate worth it? ParetoNet vs random search vs NSGA-II (Optuna) at an equal
budget of real trainings, over several search seeds.

Per method and seed, ``budget`` configs are trained (through one shared trial store: a
config two methods both pick is trained once and counted by both):

- ``random``: the first ``budget`` distinct configs of the seed's random stream;
- ``paretonet``: the first ``budget - surrogate.front`` of that same stream (a paired
  design: its curve equals random search's until then), then the surrogate's predicted
  front (:func:`dhen_cvr.search.paretonet.propose_front`);
- ``nsga2``: Optuna's ``NSGAIISampler`` (seeded) over the same dimensions, asking
  ``workers`` configs at a time; needs ``pip install 'dhen-cvr[search]'``. A config it
  proposes twice costs a trial of its budget (the store answers the second).

The score after ``t`` trainings is the hypervolume of the measured front of a method's
first ``t`` trials, in normalised coordinates with a fixed reference point: AUC
``(auc - 0.5) / (best_auc - 0.5)`` and throughput ``eps / best_eps``, ``best_*`` the best
measured by any method in the comparison; the reference is (AUC 0.5, 0 examples/s).
Writes ``OUT/compare.json``, ``OUT/compare.md`` and ``OUT/hypervolume.png``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dhen_cvr.errors import DhenCvrError
from dhen_cvr.search.pareto import hypervolume, normalise
from dhen_cvr.search.paretonet import propose_front
from dhen_cvr.search.plot import plot_hypervolume
from dhen_cvr.search.runner import TrialRunner
from dhen_cvr.search.space import Candidate, SearchSpace
from dhen_cvr.search.store import TrialRecord

__all__ = ["METHODS", "CompareResult", "compare_searches", "hypervolume_curve"]

AUC_REFERENCE = 0.5
Strategy = Callable[[SearchSpace, TrialRunner, int, int, str], list[TrialRecord]]


def _random(
    space: SearchSpace, runner: TrialRunner, seed: int, budget: int, throughput: str
) -> list[TrialRecord]:
    return runner.run(space.sample_many(budget, seed))


def _paretonet(
    space: SearchSpace, runner: TrialRunner, seed: int, budget: int, throughput: str
) -> list[TrialRecord]:
    k = min(space.surrogate.front, budget - 2)
    if k < 1:
        raise DhenCvrError(f"--budget {budget} leaves ParetoNet no front trial (need >= 3)")
    stream = space.sample_many(budget * 4, seed)
    records = runner.run(stream[: budget - k])
    proposal = propose_front(space, records, seed, k, throughput=throughput)
    picked = list(proposal.picked)
    chosen = {c.key for c in picked} | {r.key for r in records}
    picked += [c for c in stream[budget - k :] if c.key not in chosen][: k - len(picked)]
    return records + runner.run(picked)


def _optuna_params(space: SearchSpace, trial: Any) -> Candidate:
    d = space.dimensions
    combos = ["+".join(c) for c in space.layer_choices()]
    n_layers = trial.suggest_categorical("layers", d.layers)
    # every layer slot is always suggested (a fixed space suits NSGA-II); unused ones idle
    slots = [trial.suggest_categorical(f"layer{i}", combos) for i in range(max(d.layers))]
    return Candidate(
        layers=[s.split("+") for s in slots[:n_layers]],
        width=trial.suggest_categorical("width", d.width),
        dim=trial.suggest_categorical("dim", d.dim),
        seq_len=trial.suggest_categorical("seq_len", d.seq_len),
        ssl_objective=trial.suggest_categorical("ssl_objective", d.ssl_objective),
        ssl_positives=trial.suggest_categorical("ssl_positives", d.ssl_positives),
        ssl_negatives=trial.suggest_categorical("ssl_negatives", d.ssl_negatives),
        ssl_org_weight=trial.suggest_categorical("ssl_org_weight", d.ssl_org_weight),
        ssl_ads_weight=trial.suggest_categorical("ssl_ads_weight", d.ssl_ads_weight),
    )


def _nsga2(
    space: SearchSpace, runner: TrialRunner, seed: int, budget: int, throughput: str
) -> list[TrialRecord]:
    try:
        import optuna
    except ImportError:
        raise DhenCvrError(
            "method nsga2 needs Optuna: pip install 'dhen-cvr[search]' (or leave out --method nsga2)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    population = max(2, min(budget // 2, 8))
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    records: list[TrialRecord] = []
    while len(records) < budget:
        asked = [study.ask() for _ in range(min(runner.workers, budget - len(records)))]
        candidates = [_optuna_params(space, t) for t in asked]
        for trial, record in zip(asked, runner.run(candidates), strict=True):
            auc, eps = record.objective(throughput)
            study.tell(trial, [auc, float(np.log(eps))])
            records.append(record)
    return records


METHODS: dict[str, Strategy] = {"paretonet": _paretonet, "random": _random, "nsga2": _nsga2}


def hypervolume_curve(
    records: list[TrialRecord], scale: tuple[float, float], throughput: str = "serve"
) -> list[float]:
    """Hypervolume of the first ``t`` records' front, ``t = 1..len(records)``."""
    points = normalise([r.objective(throughput) for r in records], (AUC_REFERENCE, 0.0), scale)
    return [hypervolume(points[:t], (0.0, 0.0)) for t in range(1, len(points) + 1)]


@dataclass(frozen=True)
class CompareResult:
    out: Path
    curves: dict[str, list[list[float]]]  # method -> per seed -> hypervolume after t trials
    scale: tuple[float, float]
    trained: int
    markdown: str


def compare_searches(
    space: SearchSpace,
    data: str | Path,
    train_days: str,
    eval_days: str,
    out: str | Path,
    *,
    budget: int,
    seeds: list[int],
    methods: list[str],
    workers: int = 1,
    extra_overrides: list[str] | None = None,
    throughput: str = "serve",
    log: bool = True,
) -> CompareResult:
    """Run every method x seed at ``budget`` real trainings; see the module docstring."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise DhenCvrError(f"unknown search method(s) {unknown}; known: {list(METHODS)}")
    if budget < 3 or not seeds:
        raise DhenCvrError(f"need --budget >= 3 and at least one --seed, got {budget}, {seeds}")
    out = Path(out)
    runner = TrialRunner(
        space,
        data,
        train_days,
        eval_days,
        out,
        workers=workers,
        extra_overrides=extra_overrides,
        log=log,
    )
    runs: dict[str, dict[int, list[TrialRecord]]] = {m: {} for m in methods}
    for seed in seeds:
        for method in methods:
            if log:
                print(f"[search-compare] {method} seed {seed}: {budget} trials", flush=True)
            runs[method][seed] = METHODS[method](space, runner, seed, budget, throughput)
    everything = [r for per_seed in runs.values() for rs in per_seed.values() for r in rs]
    objectives = np.array([r.objective(throughput) for r in everything])
    scale = (float(np.nanmax(objectives[:, 0])), float(np.nanmax(objectives[:, 1])))
    curves = {m: [hypervolume_curve(runs[m][s], scale, throughput) for s in seeds] for m in methods}
    plot_hypervolume(out / "hypervolume.png", curves)
    trained = len({r.key for r in everything})
    markdown = _markdown(curves, scale, seeds, budget, trained, throughput)
    (out / "compare.md").write_text(markdown + "\n")
    (out / "compare.json").write_text(
        json.dumps(
            {
                "budget": budget,
                "seeds": seeds,
                "throughput": throughput,
                "reference": [AUC_REFERENCE, 0.0],
                "scale": list(scale),
                "curves": curves,
                "trials": {
                    m: {str(s): [r.key for r in rs] for s, rs in runs[m].items()} for m in methods
                },
                "distinct_trainings": trained,
            },
            indent=2,
        )
        + "\n"
    )
    return CompareResult(out, curves, scale, trained, markdown)


def _markdown(
    curves: dict[str, list[list[float]]],
    scale: tuple[float, float],
    seeds: list[int],
    budget: int,
    trained: int,
    throughput: str,
) -> str:
    marks = sorted({max(1, budget // 2), budget})
    lines = [
        f"# Search comparison: {budget} real trainings per method, seeds {seeds}\n",
        f"Hypervolume of the measured front (AUC normalised as (auc - 0.5) / "
        f"({scale[0]:.4f} - 0.5), {throughput} examples/s as eps / {scale[1]:,.0f}; "
        f"reference point (0, 0)); mean ± std over seeds. {trained} distinct configs "
        "were trained in all.\n",
        "| method | " + " | ".join(f"after {t} trials" for t in marks) + " |",
        "|---" * (len(marks) + 1) + "|",
    ]
    for method, per_seed in curves.items():
        cells = []
        for t in marks:
            values = [c[t - 1] for c in per_seed]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.4f} ± {std:.4f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
