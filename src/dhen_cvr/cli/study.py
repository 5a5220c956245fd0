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
        quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    ) -> None:
        """Train + evaluate each variant x seed of a study; print mean ± std vs the oracle."""
        from dhen_cvr.study.runner import load_study, run_study

        result = run_study(
            load_study(study),
            data,
            train_days,
            eval_days,
            out,
            extra_overrides=list(overrides),
            only=list(only) or None,
            show_progress=not quiet,
            spec=spec,
        )
        typer.echo(result.markdown)
        typer.echo(f"summary: {result.out / 'summary.md'}")
