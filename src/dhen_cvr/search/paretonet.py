"""ParetoNet (paper section 3.3), end to end:

1-3. sample ``trials`` configs at random from the space, train each briefly on the
     training days, score the next day (ROC-AUC, PR-AUC) and time it (examples/s);
4.   fit the surrogate (config features -> AUC, throughput) and validate it by Spearman
     rank correlation of out-of-fold predictions;
5.   score ``surrogate.pool`` more sampled configs with it;
6.   take the Pareto-efficient ones (AUC vs serving examples/s), train up to
     ``surrogate.front`` of them for real and compare the measurement with the prediction.

Writes ``OUT/trials.jsonl`` (every measured trial; a rerun resumes from it),
``OUT/search.json``, ``OUT/report.md`` and ``OUT/pareto.png`` (paper Figure 4).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dhen_cvr.errors import DhenCvrError
from dhen_cvr.search.pareto import pareto_front
from dhen_cvr.search.plot import plot_pareto
from dhen_cvr.search.runner import TrialRunner
from dhen_cvr.search.space import Candidate, SearchSpace
from dhen_cvr.search.store import TrialRecord
from dhen_cvr.search.surrogate import Surrogate, SurrogateValidation, spearman

__all__ = ["FrontProposal", "SearchResult", "propose_front", "run_search"]

POOL_SEED_OFFSET = 1_000_003  # the surrogate's pool is a different draw from the trials


@dataclass(frozen=True)
class FrontProposal:
    """The surrogate's view: the scored pool and the front configs chosen to train."""

    pool: list[Candidate]
    pool_predicted: np.ndarray  # N x 2 (AUC, examples/s)
    picked: list[Candidate]
    picked_predicted: np.ndarray  # K x 2


def propose_front(
    space: SearchSpace,
    records: list[TrialRecord],
    seed: int,
    k: int,
    *,
    throughput: str = "serve",
) -> FrontProposal:
    """Fit the surrogate on ``records``, score a fresh pool, and pick ``k`` unmeasured
    configs of its predicted Pareto front, spread evenly along it."""
    surrogate = Surrogate(space, throughput, seed).fit(records)
    measured = {r.key for r in records}
    pool = [
        c
        for c in space.sample_many(space.surrogate.pool, seed + POOL_SEED_OFFSET)
        if c.key not in measured
    ]
    predicted = surrogate.predict(pool) if pool else np.zeros((0, 2))
    front = pareto_front(predicted)
    if len(front) > k > 0:
        front = [front[round(float(i))] for i in np.linspace(0, len(front) - 1, k)]
    picked = front[:k]
    return FrontProposal(pool, predicted, [pool[i] for i in picked], predicted[picked])


@dataclass(frozen=True)
class SearchResult:
    out: Path
    trials: list[TrialRecord]
    validation: SurrogateValidation
    proposal: FrontProposal
    front_trials: list[TrialRecord]
    measured_front: list[TrialRecord]
    markdown: str


def run_search(
    space: SearchSpace,
    data: str | Path,
    train_days: str,
    eval_days: str,
    out: str | Path,
    *,
    trials: int,
    seed: int = 0,
    workers: int = 1,
    extra_overrides: list[str] | None = None,
    throughput: str = "serve",
    log: bool = True,
) -> SearchResult:
    """Run (or resume) a ParetoNet search into ``out``; see the module docstring."""
    if trials < 2:
        raise DhenCvrError(f"--trials must be at least 2 (the surrogate needs data), got {trials}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    candidates = space.sample_many(trials, seed)
    if len(candidates) < trials:
        raise DhenCvrError(
            f"the space holds only {len(candidates)} distinct configs, asked {trials}"
        )
    records = runner.run(candidates)
    surrogate = Surrogate(space, throughput, seed)
    validation = surrogate.validate(records)
    proposal = propose_front(space, records, seed, space.surrogate.front, throughput=throughput)
    front_trials = runner.run(proposal.picked)
    everything = records + front_trials
    points = np.array([r.objective(throughput) for r in everything])
    measured_front = [everything[i] for i in pareto_front(points)]

    front_measured = np.array([r.objective(throughput) for r in front_trials]).reshape(-1, 2)
    plot_pareto(
        out / "pareto.png",
        np.array([r.objective(throughput) for r in records]),
        proposal.pool_predicted,
        proposal.picked_predicted,
        front_measured,
        throughput_label=f"{throughput} examples/s (fixed batch of {space.throughput.batch_size})",
    )
    markdown = _markdown(
        space, records, validation, proposal, front_trials, measured_front, throughput
    )
    (out / "report.md").write_text(markdown + "\n")
    (out / "search.json").write_text(
        json.dumps(
            {
                "trials": [r.key for r in records],
                "front_trials": [r.key for r in front_trials],
                "front_predicted": proposal.picked_predicted.tolist(),
                "measured_front": [r.key for r in measured_front],
                "spearman_out_of_fold": validation.spearman,
                "folds": validation.folds,
                "pool": len(proposal.pool),
                "throughput": throughput,
                "seed": seed,
                "data": str(data),
                "train_days": train_days,
                "eval_days": eval_days,
            },
            indent=2,
            default=lambda x: None,
        )
        + "\n"
    )
    return SearchResult(out, records, validation, proposal, front_trials, measured_front, markdown)


def _f(value: float, digits: int = 4) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _markdown(
    space: SearchSpace,
    records: list[TrialRecord],
    validation: SurrogateValidation,
    proposal: FrontProposal,
    front_trials: list[TrialRecord],
    measured_front: list[TrialRecord],
    throughput: str,
) -> str:
    lines = [
        f"# ParetoNet search: {len(records)} random trials + {len(front_trials)} front trials\n",
        f"Surrogate (random forest, {validation.folds}-fold out-of-fold predictions on the "
        f"{len(records)} random trials), Spearman rank correlation with the measurement: "
        f"ROC-AUC {_f(validation.spearman['roc_auc'], 3)}, "
        f"log {throughput} examples/s {_f(validation.spearman['log_throughput'], 3)}.\n",
        "## Trials (measured)\n",
        "| # | config | ROC-AUC | PR-AUC | serve ex/s | train ex/s | on front |",
        "|---|---|---|---|---|---|---|",
    ]
    on_front = {r.key for r in measured_front}
    for i, r in enumerate([*records, *front_trials], 1):
        kind = "" if i <= len(records) else " (front pick)"
        lines.append(
            f"| {i}{kind} | `{r.config.label}` | {_f(r.roc_auc)} | {_f(r.pr_auc)} | "
            f"{r.serve_examples_per_s:,.0f} | {r.train_examples_per_s:,.0f} | "
            f"{'yes' if r.key in on_front else ''} |"
        )
    lines += [
        "",
        f"## The surrogate's front ({len(proposal.pool)} configs scored), trained for real\n",
        "| config | predicted ROC-AUC | measured ROC-AUC | predicted ex/s | measured ex/s |",
        "|---|---|---|---|---|",
    ]
    for r, (auc, eps) in zip(front_trials, proposal.picked_predicted, strict=True):
        m_auc, m_eps = r.objective(throughput)
        lines.append(
            f"| `{r.config.label}` | {_f(float(auc))} | {_f(m_auc)} | {eps:,.0f} | {m_eps:,.0f} |"
        )
    if front_trials:
        pred, meas = (
            proposal.picked_predicted,
            np.array([r.objective(throughput) for r in front_trials]),
        )
        auc_err = float(np.mean(np.abs(pred[:, 0] - meas[:, 0])))
        eps_err = float(np.mean(np.abs(np.log(pred[:, 1] / meas[:, 1]))))
        lines += [
            "",
            f"Front, predicted vs measured: mean |AUC error| {auc_err:.4f}, mean |log ex/s "
            f"error| {eps_err:.3f}; Spearman AUC {_f(spearman(pred[:, 0], meas[:, 0]), 3)}, "
            f"ex/s {_f(spearman(pred[:, 1], meas[:, 1]), 3)}.",
        ]
    lines += ["", "## Measured Pareto front (all trials)\n"]
    for r in sorted(measured_front, key=lambda r: -r.roc_auc):
        auc, eps = r.objective(throughput)
        lines.append(f"- `{r.config.label}`: ROC-AUC {_f(auc)}, {eps:,.0f} {throughput} ex/s")
    return "\n".join(lines)
