"""CLI: ``train``, ``train-incremental`` and ``quickstart`` (thin layers over the API).

Distributed: run the same command under ``torchrun``, e.g.
``torchrun --nproc_per_node 2 -m dhen_cvr.cli train --config tiny ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dhen_cvr.errors import DhenCvrError

if TYPE_CHECKING:  # the heavy imports happen when a command runs, not at CLI start-up
    from dhen_cvr.config import ExperimentConfig

__all__ = ["register"]

_DAYS_HELP = "days by 1-based index or date: '1-10', '11', '1-3,5', '2026-01-01..2026-01-10'"
SPEC_HELP = "feature spec YAML (default: the data folder's _spec.yaml or spec.yaml)"
_SET_HELP = "override a config value, e.g. --set train.lr=3e-4 (repeatable)"


def _config(config: str | None, overrides: list[str]) -> ExperimentConfig | None:
    if config is None:
        if overrides:
            raise DhenCvrError("--set needs --config")
        return None
    from dhen_cvr.config import load_experiment_config

    return load_experiment_config(config, overrides)


def _echo_main(text: str) -> None:
    from dhen_cvr.runtime.distributed import is_main_process

    if is_main_process():
        typer.echo(text)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``train-incremental`` and ``quickstart`` to the top-level app."""

    @app.command("train")
    def train_command(
        out: Path = typer.Option(..., "--out", help="run folder to create (or resume)"),
        config: str | None = typer.Option(
            None, "--config", "-c", help="config file or preset name (tiny, paper)"
        ),
        data: Path | None = typer.Option(None, "--data", help="data folder with dt=*/ days"),
        train_days: str | None = typer.Option(None, "--train-days", help=_DAYS_HELP),
        eval_days: str | None = typer.Option(None, "--eval-days", help=_DAYS_HELP),
        spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
        init_from: Path | None = typer.Option(
            None, "--init-from", help="warm start from a run or checkpoint folder"
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="continue OUT from its newest checkpoint that loads (an error if OUT holds no run)",
        ),
        overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
        allow_in_sample_eval: bool = typer.Option(
            False,
            "--allow-in-sample-eval",
            help="allow --eval-days that were trained on (the report says so)",
        ),
    ) -> None:
        """Train on --train-days, then (optionally) evaluate on --eval-days."""
        from dhen_cvr.eval.report import format_report
        from dhen_cvr.pipeline import train_and_evaluate

        result = train_and_evaluate(
            _config(config, overrides),
            data,
            train_days,
            out,
            eval_days=eval_days,
            init_from=init_from,
            resume=resume,
            show_progress=not quiet,
            allow_in_sample_eval=allow_in_sample_eval,
            spec=spec,
        )
        p = result.progress
        _echo_main(
            f"trained {p.step} steps ({p.examples_seen} examples, "
            f"{result.examples_per_s:.0f} examples/s); checkpoint {result.checkpoint}"
        )
        if result.eval is not None:
            _echo_main(format_report(result.eval))
            _echo_main(f"wrote {out / 'eval.json'}")

    @app.command("train-incremental")
    def train_incremental_command(
        out: Path = typer.Option(..., "--out", help="folder for the warm-up and daily runs"),
        config: str = typer.Option(..., "--config", "-c", help="config file or preset name"),
        data: Path = typer.Option(..., "--data", help="data folder with dt=*/ days"),
        warmup_days: str = typer.Option(..., "--warmup-days", help=_DAYS_HELP),
        incremental_days: str = typer.Option(..., "--incremental-days", help=_DAYS_HELP),
        spec: Path | None = typer.Option(None, "--spec", help=SPEC_HELP),
        resume: bool = typer.Option(False, "--resume", help="continue unfinished steps"),
        overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    ) -> None:
        """Warm up, then train day by day from yesterday's checkpoint; evaluate each next day."""
        from dhen_cvr.config import load_experiment_config
        from dhen_cvr.eval.report import format_report
        from dhen_cvr.pipeline.incremental import train_incremental

        cfg = load_experiment_config(config, overrides)
        result = train_incremental(
            cfg,
            data,
            warmup_days,
            incremental_days,
            out,
            resume=resume,
            show_progress=not quiet,
            spec=spec,
        )
        for run in result.runs:
            if run.eval is not None:
                _echo_main(f"{run.run.name} -> next day {run.eval.days[0]}")
                _echo_main(format_report(run.eval))
        if result.summary is not None:
            _echo_main("average of the next-day evaluations")
            _echo_main(format_report(result.summary, per_day=False))
            _echo_main(f"wrote {out / 'incremental.json'}")

    @app.command("quickstart")
    def quickstart_command(
        out: Path = typer.Option(Path("runs/quickstart"), "--out", help="output folder"),
        seed: int = typer.Option(0, "--seed", help="seed of the world and of training"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    ) -> None:
        """Synthesise a small world, train tiny DHEN + SSL, evaluate next day vs the oracle."""
        from dhen_cvr.eval.report import format_report
        from dhen_cvr.pipeline.quickstart import quickstart

        result = quickstart(out, seed=seed, show_progress=not quiet)
        typer.echo(format_report(result.report))
        typer.echo(f"report: {result.markdown}  plot: {result.plot}  ({result.seconds:.0f} s)")
