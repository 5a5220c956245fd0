"""The ParetoNet predictive model (paper 3.3, steps 4-5): search dimensions -> AUC and
throughput, a scikit-learn random forest per target (throughput on a log scale).

It is validated before it is trusted: out-of-fold predictions (K-fold over the measured
trials, each trial predicted by a forest that never saw it) are compared with the
measured values by Spearman rank correlation, the question the search asks of it (which
configs are better, not by how much).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestRegressor
from sklearn.model_selection import KFold

from dhen_cvr.search.space import Candidate, SearchSpace
from dhen_cvr.search.store import TrialRecord

__all__ = ["Surrogate", "SurrogateValidation", "spearman"]

TARGETS = ("roc_auc", "log_throughput")


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation; NaN when undefined (fewer than 3 or a constant side)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


@dataclass(frozen=True)
class SurrogateValidation:
    """Out-of-fold predictions and their rank correlation with the measurements."""

    keys: list[str]
    measured: dict[str, list[float]]
    predicted: dict[str, list[float]]
    spearman: dict[str, float]
    folds: int


class Surrogate:
    """Two random forests over :meth:`SearchSpace.features`."""

    def __init__(self, space: SearchSpace, throughput: str = "serve", seed: int = 0) -> None:
        self.space, self.throughput, self.seed = space, throughput, seed
        self.models: dict[str, RandomForestRegressor] = {}

    def _targets(self, records: Sequence[TrialRecord]) -> dict[str, np.ndarray]:
        auc, eps = zip(*(r.objective(self.throughput) for r in records), strict=True)
        return {"roc_auc": np.array(auc), "log_throughput": np.log(np.array(eps))}

    def _forest(self) -> RandomForestRegressor:
        return RandomForestRegressor(
            n_estimators=self.space.surrogate.trees, random_state=self.seed, n_jobs=1
        )

    def features(self, candidates: Sequence[Candidate]) -> np.ndarray:
        return np.array([self.space.features(c) for c in candidates], dtype=float)

    def fit(self, records: Sequence[TrialRecord]) -> Surrogate:
        x = self.features([r.config for r in records])
        for name, y in self._targets(records).items():
            self.models[name] = self._forest().fit(x, y)
        return self

    def predict(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """``N x 2``: predicted (AUC, examples/s)."""
        x = self.features(candidates)
        auc = self.models["roc_auc"].predict(x)
        eps = np.exp(self.models["log_throughput"].predict(x))
        return np.stack([auc, eps], axis=1)

    def validate(self, records: Sequence[TrialRecord]) -> SurrogateValidation:
        """K-fold out-of-fold predictions of every record; Spearman per target."""
        records = list(records)
        folds = min(self.space.surrogate.folds, len(records))
        x = self.features([r.config for r in records])
        targets = self._targets(records)
        predicted = {name: np.full(len(records), np.nan) for name in TARGETS}
        if folds >= 2:
            split = KFold(n_splits=folds, shuffle=True, random_state=self.seed)
            for fit_idx, held_idx in split.split(x):
                for name, y in targets.items():
                    forest = self._forest().fit(x[fit_idx], y[fit_idx])
                    predicted[name][held_idx] = forest.predict(x[held_idx])
        return SurrogateValidation(
            keys=[r.key for r in records],
            measured={k: v.tolist() for k, v in targets.items()},
            predicted={k: v.tolist() for k, v in predicted.items()},
            spearman={k: spearman(targets[k], predicted[k]) for k in TARGETS},
            folds=folds,
        )
