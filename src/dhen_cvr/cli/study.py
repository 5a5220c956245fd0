"""CLI: ``study`` (a thin layer over :func:`dhen_cvr.study.run_study`)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]

SPEC_HELP = "feature spec YAML (default: the data folder's _spec.yaml or spec.yaml)"


def register(app: typer.Typer) -> None:
    """Add ``study`` to the top-level app."""

    @app.command("study")
    def study_command(
        study: Path = typer.Option(..., "--study", help="study YAML (base, seeds, variants)"),
        data: Path = typer.Option(..., "--data", help="data folder with dt=*/ days"),
        train_days: str = typer.Option(..., "--train-days", help="e.g. '1-5'"),
        eval_days: str = typer.Option(..., "--eval-days", help="e.g. '6'"),
        out: Path = typer.Option(..., "--out", help="study folder (finished runs are reused)"),
        spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
        overrides: list[str] = typer.Option([], "--set", help="override for every run"),
        only: list[str] = typer.Option([], "--only", help="run only these variants"),
        seeds: str | None = typer.Option(
            None, "--seeds", help="these seeds instead of the study's, e.g. '0-4' or '0,3'"
        ),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
        workers: int = typer.Option(
            1, "--workers", help="runs trained at once, one process each (threads split)"
        ),
        report: Path | None = typer.Option(
            None, "--report", help="also copy report.md, lift.png and summary.* here"
        ),
    ) -> None:
        """Train + evaluate each variant x seed of a study; print mean ± std vs the oracle
        (and, with `baseline:` in the study, the lift table and plot)."""
        from dhen_cvr.study.runner import copy_report, load_study, parse_seeds, run_study

        config = load_study(study)
        if seeds is not None:
            config = config.model_copy(update={"seeds": parse_seeds(seeds)})
        result = run_study(
            config,
            data,
            train_days,
            eval_days,
            out,
            extra_overrides=list(overrides),
            only=list(only) or None,
            show_progress=not quiet,
            spec=spec,
            workers=workers,
        )
        typer.echo(result.markdown)
        typer.echo(f"summary: {result.out / 'summary.md'}")
        if report is not None:
            typer.echo(f"report copied to {copy_report(result.out, report)}")
