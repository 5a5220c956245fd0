"""Evaluation: exact streaming metrics, calibration, next-day reports.
Public surface: :func:`evaluate`, :func:`evaluate_model`, :class:`EvalReport`."""

from dhen_cvr.eval.evaluate import EvalReport, evaluate, evaluate_model

__all__ = ["EvalReport", "evaluate", "evaluate_model"]
