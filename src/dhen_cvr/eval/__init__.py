"""Evaluation: exact streaming metrics, calibration, next-day reports.
Public surface: :func:`evaluate`, :func:`evaluate_model`, :class:`EvalReport`,
:class:`ScoreAccumulator` (any model's scores -> the same report)."""

from dhen_cvr.eval.evaluate import EvalReport, ScoreAccumulator, evaluate, evaluate_model

__all__ = ["EvalReport", "ScoreAccumulator", "evaluate", "evaluate_model"]
