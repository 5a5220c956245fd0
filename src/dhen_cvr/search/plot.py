"""Plots of a search: the Pareto front (paper Figure 4) and hypervolume vs trials."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dhen_cvr.search.pareto import pareto_front

__all__ = ["plot_hypervolume", "plot_pareto"]


def _step_front(ax: plt.Axes, points: np.ndarray, **style: object) -> None:
    front = points[pareto_front(points)]
    if len(front):
        order = np.argsort(front[:, 1])
        ax.step(front[order, 1], front[order, 0], where="post", **style)  # type: ignore[arg-type]


def plot_pareto(
    path: str | Path,
    measured: np.ndarray,
    pool_predicted: np.ndarray,
    front_predicted: np.ndarray,
    front_measured: np.ndarray,
    *,
    throughput_label: str = "serving examples/s",
    title: str = "ParetoNet: ROC-AUC vs throughput",
) -> Path:
    """Rows are (AUC, examples/s). Grey dots: configs scored by the surrogate; circles:
    random trials; arrows: the predicted front's configs, predicted -> measured."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(pool_predicted):
        ax.scatter(
            pool_predicted[:, 1], pool_predicted[:, 0], s=4, c="0.8", label="surrogate-scored"
        )
        _step_front(ax, pool_predicted, color="0.5", ls="--", lw=1, label="predicted front")
    ax.scatter(measured[:, 1], measured[:, 0], s=25, c="tab:blue", label="random trials (measured)")
    if len(front_measured):
        ax.scatter(
            front_predicted[:, 1],
            front_predicted[:, 0],
            marker="x",
            c="tab:orange",
            label="front, predicted",
        )
        ax.scatter(
            front_measured[:, 1],
            front_measured[:, 0],
            marker="*",
            s=90,
            c="tab:red",
            label="front, measured",
        )
        for p, m in zip(front_predicted, front_measured, strict=True):
            ax.annotate(
                "",
                xy=(m[1], m[0]),
                xytext=(p[1], p[0]),
                arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 0.8},
            )
    everything = np.concatenate([measured, front_measured]) if len(front_measured) else measured
    _step_front(ax, everything, color="tab:red", lw=1.5, label="measured front")
    ax.set_xscale("log")
    ax.set_xlabel(throughput_label)
    ax.set_ylabel("next-day ROC-AUC (mean of served heads)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_hypervolume(
    path: str | Path,
    curves: Mapping[str, Sequence[Sequence[float]]],
    *,
    title: str = "Hypervolume of the measured front vs real trainings",
) -> Path:
    """``curves[method]`` = one hypervolume-per-trial list per search seed; the mean
    line with a band of +- one sample std over seeds."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per_seed in curves.items():
        values = np.asarray(per_seed, dtype=float)
        x = np.arange(1, values.shape[1] + 1)
        mean = values.mean(axis=0)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
        ax.plot(x, mean, marker="o", ms=3, label=f"{method} (n={len(values)} seeds)")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("real trainings")
    ax.set_ylabel("hypervolume (normalised AUC x throughput)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
