"""The GBDT yardstick (DESIGN 6b): LightGBM on flat features plus sequence aggregates
derived from the feature spec alone, one model per head, reported exactly like
``dhen-cvr evaluate`` so a DHEN run can be compared with it row by row.

Public surface: :class:`BaselineConfig` (features, LightGBM settings, seed, threads),
:func:`train_baseline` (fit on training days, evaluate on later days, write a run
folder), :class:`FeatureBuilder` / :func:`sequence_aggregates` (the features of a
:class:`~dhen_cvr.data.batch.Batch`). LightGBM is an optional dependency
(``pip install 'dhen-cvr[baselines]'``), imported only when a model is fitted.
"""

from dhen_cvr.baseline.aggregates import FeatureBuilder, FeatureConfig, sequence_aggregates
from dhen_cvr.baseline.gbdt import (
    BaselineConfig,
    GBDTConfig,
    load_baseline_config,
    missing_lightgbm_message,
    train_baseline,
)

__all__ = [
    "BaselineConfig",
    "FeatureBuilder",
    "FeatureConfig",
    "GBDTConfig",
    "load_baseline_config",
    "missing_lightgbm_message",
    "sequence_aggregates",
    "train_baseline",
]
