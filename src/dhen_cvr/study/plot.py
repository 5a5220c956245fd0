"""A study's lift plot, shaped like the paper's Figures 5 and 6 (bars of relative AUC lift
over the baseline): ours as bars with ± one std over seeds, the paper's number as a
hollow bar beside it, the GBDT yardstick as a dashed line."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dhen_cvr.study.report import METRIC_TITLES, LiftRow

__all__ = ["plot_lift"]


def plot_lift(
    path: str | Path, rows: list[LiftRow], baseline: str, metric: str, title: str | None = None
) -> Path:
    """Bars for every variant but the baseline; the oracle's lift goes in the caption."""
    bars = [r for r in rows if r.kind == "variant"]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(bars) + 2), 4))
    x = np.arange(len(bars))
    ours = [r.lift[0] for r in bars]
    errors = [r.lift[1] for r in bars]
    has_paper = any(r.paper is not None for r in bars)
    width = 0.38 if has_paper else 0.6
    ax.bar(
        x - (width / 2 if has_paper else 0),
        ours,
        width,
        yerr=errors,
        capsize=3,
        color="tab:blue",
        label="ours (mean ± std over seeds)",
    )
    if has_paper:
        paper = [np.nan if r.paper is None else r.paper for r in bars]
        ax.bar(
            x + width / 2, paper, width, fill=False, edgecolor="tab:red", hatch="//", label="paper"
        )
    for r in rows:
        if r.kind == "gbdt" and r.lift[2]:
            ax.axhline(r.lift[0], color="tab:green", ls="--", lw=1, label=f"{r.name} (GBDT)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [r.name for r in bars], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"{METRIC_TITLES.get(metric, metric)} lift vs {baseline} (%)")
    oracle = [r for r in rows if r.kind == "oracle"]
    caption = f"oracle: {oracle[0].lift[0]:+.1f}%" if oracle and oracle[0].lift[2] else ""
    ax.set_title(f"{title or 'Study'}\n{caption}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
