"""CLI: ``baseline`` (a thin layer over :func:`dhen_cvr.baseline.gbdt.train_baseline`)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]

SPEC_HELP = "feature spec YAML (default: the data folder's _spec.yaml or spec.yaml)"
_DAYS_HELP = "days by 1-based index or date: '1-5', '6', '1-3,5', '2026-01-01..2026-01-05'"


def register(app: typer.Typer) -> None:
    """Add ``baseline`` to the top-level app."""

    @app.command("baseline")
    def baseline_command(
        data: Path = typer.Option(..., "--data", help="data folder with dt=*/ days"),
        train_days: str = typer.Option(..., "--train-days", help=_DAYS_HELP),
        eval_days: str = typer.Option(
            ..., "--eval-days", help=f"{_DAYS_HELP}; must not overlap --train-days"
        ),
        out: Path = typer.Option(..., "--out", help="run folder to create"),
        eval_data: Path | None = typer.Option(
            None,
            "--eval-data",
            help="read --eval-days from this folder (default --data), e.g. a full-traffic copy",
        ),
        spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="baseline config YAML (e.g. configs/baselines/gbdt.yaml)"
        ),
        seed: int | None = typer.Option(None, "--seed", help="LightGBM seed (overrides config)"),
        threads: int | None = typer.Option(
            None, "--threads", help="LightGBM threads (overrides config; default 1)"
        ),
        overrides: list[str] = typer.Option(
            [], "--set", help="override a config value, e.g. --set gbdt.num_leaves=63"
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="write into a non-empty --out folder"
        ),
        quiet: bool = typer.Option(False, "--quiet", help="only the report table"),
    ) -> None:
        """The GBDT yardstick: LightGBM per head on flat features plus spec-derived
        sequence aggregates; writes OUT/eval.json in the format of `evaluate`.

        Needs LightGBM: pip install 'dhen-cvr\\[baselines]'."""
        from dhen_cvr.baseline.gbdt import load_baseline_config, train_baseline
        from dhen_cvr.eval.report import format_report

        extra = [*overrides]
        if seed is not None:
            extra.append(f"seed={seed}")
        if threads is not None:
            extra.append(f"threads={threads}")
        cfg = load_baseline_config(config, extra)
        report = train_baseline(
            data,
            train_days,
            eval_days,
            out,
            cfg,
            overwrite=overwrite,
            log=None if quiet else typer.echo,
            spec=spec,
            eval_data=eval_data,
        )
        typer.echo(format_report(report))
