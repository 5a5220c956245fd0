"""A study's headline table: each row's next-day AUC (mean of the served heads), its lift
over the study's declared baseline variant, and the paper's number beside ours.

Lift is paired by seed, ``(m_v,s - m_b,s) / m_b,s`` for the variant ``v`` and the baseline
``b`` trained with the same seed ``s``, then mean ± sample std over seeds (a GBDT row
uses its own seed's baseline the same way). The oracle row is the data's true
probabilities on the same days: the ceiling any row can reach. Paper numbers are data in
the study file (``paper:``), quoted as the paper reports them (a relative lift in %).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from dhen_cvr.eval.evaluate import EvalReport

__all__ = ["LiftRow", "lift_markdown", "lift_rows", "ordering_note"]

METRIC_TITLES = {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"}


@dataclass(frozen=True)
class LiftRow:
    """One row: ``value``/``lift`` as (mean, std, n) over seeds; lift in %."""

    name: str
    kind: str  # "variant" | "baseline" (the study's declared one) | "gbdt" | "oracle"
    roc_auc: tuple[float, float, int]
    pr_auc: tuple[float, float, int]
    lift: tuple[float, float, int]
    paper: float | None


def served_mean(report: EvalReport, metric: str) -> float:
    """The mean of ``metric`` over the served heads (the CTR head is not served)."""
    values = [
        report.mean[h].get(metric, math.nan) for h in report.heads if report.served.get(h, True)
    ]
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def _stat(values: list[float]) -> tuple[float, float, int]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan, 0)
    return (
        statistics.fmean(finite),
        statistics.stdev(finite) if len(finite) > 1 else 0.0,
        len(finite),
    )


def lift_rows(
    reports: dict[str, dict[int, EvalReport]],
    baseline: str,
    metric: str,
    *,
    gbdt: list[str],
    paper: dict[str, float | None],
) -> list[LiftRow]:
    """``reports[name][seed]``; rows in ``reports`` order, then the oracle."""
    base = reports.get(baseline, {})
    rows = []
    for name, per_seed in reports.items():
        lifts = [
            100
            * (served_mean(r, metric) - served_mean(base[s], metric))
            / served_mean(base[s], metric)
            for s, r in per_seed.items()
            if s in base
        ]
        kind = "baseline" if name == baseline else "gbdt" if name in gbdt else "variant"
        rows.append(
            LiftRow(
                name,
                kind,
                _stat([served_mean(r, "roc_auc") for r in per_seed.values()]),
                _stat([served_mean(r, "pr_auc") for r in per_seed.values()]),
                _stat(lifts),
                paper.get(name),
            )
        )
    if base:
        any_report = next(iter(base.values()))
        oracle = {m: served_mean(any_report, f"oracle_{m}") for m in ("roc_auc", "pr_auc")}
        lifts = [
            100 * (oracle[metric] - served_mean(r, metric)) / served_mean(r, metric)
            for r in base.values()
        ]
        rows.append(
            LiftRow(
                "oracle",
                "oracle",
                (oracle["roc_auc"], 0.0, 1),
                (oracle["pr_auc"], 0.0, 1),
                _stat(lifts),
                None,
            )
        )
    return rows


def _cell(stat: tuple[float, float, int], digits: int = 4, suffix: str = "") -> str:
    mean, std, n = stat
    if n == 0:
        return "n/a"
    return (
        f"{mean:+.{digits}f}{suffix} ± {std:.{digits}f}"
        if suffix
        else f"{mean:.{digits}f} ± {std:.{digits}f}"
    )


def ordering_note(rows: list[LiftRow]) -> str:
    """Plain words: does the paper's ordering of the rows it reports reproduce?"""
    paired = [r for r in rows if r.paper is not None and r.lift[2] > 0 and r.kind != "baseline"]
    if len(paired) < 1:
        ours = sorted(
            (r for r in rows if r.kind == "variant" and r.lift[2]), key=lambda r: -r.lift[0]
        )
        return (
            "The paper gives no number for these rows; our ordering (mean lift): "
            + " > ".join(f"{r.name} ({r.lift[0]:+.2f}% ± {r.lift[1]:.2f})" for r in ours)
            + "."
        )
    by_paper = sorted(paired, key=lambda r: -(r.paper or 0.0))
    by_ours = sorted(paired, key=lambda r: -r.lift[0])
    signs = [r for r in paired if (r.paper or 0.0) * r.lift[0] > 0]
    lines = [
        "Paper ordering (by its lift): "
        + " > ".join(f"{r.name} ({r.paper:+.2f}%)" for r in by_paper)
        + ".",
        "Our ordering (mean lift): "
        + " > ".join(f"{r.name} ({r.lift[0]:+.2f}% ± {r.lift[1]:.2f})" for r in by_ours)
        + ".",
        f"The ordering {'reproduces' if [r.name for r in by_paper] == [r.name for r in by_ours] else 'does not reproduce'}; "
        f"the sign of the lift agrees for {len(signs)} of {len(paired)} rows.",
    ]
    within = [r.name for r in paired if r.lift[2] > 1 and abs(r.lift[0]) < r.lift[1]]
    if within:
        lines.append(
            f"Within one std of zero (not distinguishable from the baseline): {', '.join(within)}."
        )
    return " ".join(lines)


def lift_markdown(
    rows: list[LiftRow],
    baseline: str,
    metric: str,
    days: list[str],
    seeds: list[int],
    *,
    title: str | None = None,
    paper_note: str | None = None,
) -> str:
    m = METRIC_TITLES.get(metric, metric)
    lines = []
    if title:
        lines.append(f"## {title}\n")
    lines += [
        f"Next day ({', '.join(days)}), mean of the served heads; mean ± std over seeds "
        f"{seeds}; lift = relative {m} lift vs `{baseline}`, paired by seed, in %.\n",
        f"| row | ROC-AUC | PR-AUC | {m} lift vs {baseline} | paper |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"{r.name} (baseline)" if r.kind == "baseline" else r.name
        if r.kind == "gbdt":
            name = f"{r.name} (GBDT yardstick)"
        paper = "" if r.paper is None else f"{r.paper:+.2f}%"
        roc = f"{r.roc_auc[0]:.4f}" if r.kind == "oracle" else _cell(r.roc_auc)
        pr = f"{r.pr_auc[0]:.4f}" if r.kind == "oracle" else _cell(r.pr_auc)
        lift = "0 (by definition)" if r.kind == "baseline" else _cell(r.lift, 2, "%")
        lines.append(f"| {name} | {roc} | {pr} | {lift} | {paper} |")
    lines += ["", ordering_note(rows)]
    if paper_note:
        lines += ["", f"Paper: {paper_note.strip()}"]
    return "\n".join(lines)


def load_reports(out: Path, names: list[str], seeds: list[int]) -> dict[str, dict[int, EvalReport]]:
    """Every finished ``OUT/<name>/seed<k>/eval.json``."""
    reports: dict[str, dict[int, EvalReport]] = {}
    for name in names:
        for seed in seeds:
            path = out / name / f"seed{seed}" / "eval.json"
            if path.is_file():
                reports.setdefault(name, {})[seed] = EvalReport.load(path)
    return reports
