"""CLI: ``evaluate`` (a thin layer over :func:`dhen_cvr.eval.evaluate.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]

SPEC_HELP = "feature spec YAML (default: the data folder's _spec.yaml or spec.yaml)"


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the top-level app."""

    @app.command("evaluate")
    def evaluate_command(
        run: Path = typer.Option(..., "--run", help="run folder (or checkpoint folder)"),
        data: Path = typer.Option(..., "--data", help="data folder with dt=*/ days"),
        days: str = typer.Option(
            ..., "--days", help="days by index or date: '11', '11-12', '2026-01-11..2026-01-12'"
        ),
        baseline: Path | None = typer.Option(
            None, "--baseline", help="another run: adds its metrics and the relative lift"
        ),
        batch_size: int | None = typer.Option(None, "--batch-size", help="rows per batch"),
        spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
    ) -> None:
        """Per-head next-day metrics (ROC-AUC, PR-AUC, log loss, calibration, oracle).

        The report is printed, then saved as RUN/eval-<days>.json when --run is a run
        folder (the training-time RUN/eval.json is kept)."""
        from dhen_cvr.cli import describe_error
        from dhen_cvr.errors import DhenCvrError
        from dhen_cvr.eval.evaluate import evaluate, evaluation_file
        from dhen_cvr.eval.report import format_report
        from dhen_cvr.runtime.distributed import is_main_process
        from dhen_cvr.runtime.run_folder import RUN_FILE

        report = evaluate(
            run, data, days, baseline=baseline, batch_size=batch_size, save=False, spec=spec
        )
        if not is_main_process():
            return
        typer.echo(format_report(report))
        if not (run / RUN_FILE).is_file():  # a checkpoint folder: print only
            return
        path = evaluation_file(run, report.days)
        try:
            report.save(path)
        except OSError as err:
            raise DhenCvrError(f"the metrics above were not saved: {describe_error(err)}") from err
        typer.echo(f"wrote {path}")
