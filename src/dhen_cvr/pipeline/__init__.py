"""Pipelines over training and evaluation: train-then-evaluate, batch + incremental days
(paper 5.1-5.2), and the quickstart. This layer sits above ``train`` and ``eval`` so that
neither of those imports the other.

Public surface: :func:`train_and_evaluate`, :func:`train_incremental`, :func:`quickstart`.
"""

from dhen_cvr.pipeline.incremental import IncrementalResult, train_incremental
from dhen_cvr.pipeline.quickstart import QuickstartResult, quickstart
from dhen_cvr.pipeline.train_and_evaluate import RunResult, check_eval_days, train_and_evaluate

__all__ = [
    "IncrementalResult",
    "QuickstartResult",
    "RunResult",
    "check_eval_days",
    "quickstart",
    "train_and_evaluate",
    "train_incremental",
]
