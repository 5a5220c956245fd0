"""Studies: one base config, named variants (config overrides) x seeds, aggregated.

A study file (``configs/studies/*.yaml`` with a ``variants:`` key) is the list of
configs behind a table such as paper Figure 5 or an SSL ablation; :func:`run_study` trains
and evaluates every (variant, seed) and writes the mean and std per head.
"""

from dhen_cvr.study.runner import StudyConfig, StudyResult, load_study, run_study

__all__ = ["StudyConfig", "StudyResult", "load_study", "run_study"]
