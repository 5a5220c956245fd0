"""CLI: ``search`` (ParetoNet, :func:`dhen_cvr.search.run_search`) and ``search-compare``
(hypervolume of ParetoNet vs random search vs NSGA-II, :func:`dhen_cvr.search.compare_searches`)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]

_DAYS_HELP = "days by 1-based index or date, e.g. '1-3'"


def register(app: typer.Typer) -> None:
    """Add ``search`` and ``search-compare`` to the top-level app."""

    @app.command("search")
    def search_command(
        space: Path = typer.Option(..., "--space", help="search space YAML (configs/search/)"),
        data: Path = typer.Option(..., "--data", help="data folder with dt=*/ days"),
        train_days: str = typer.Option(..., "--train-days", help=_DAYS_HELP),
        eval_days: str = typer.Option(..., "--eval-days", help="the next day(s), e.g. '4'"),
        trials: int = typer.Option(..., "--trials", help="random configs trained for real"),
        out: Path = typer.Option(..., "--out", help="search folder (a rerun resumes it)"),
        seed: int = typer.Option(0, "--seed", help="sampling seed"),
        workers: int = typer.Option(1, "--workers", help="trials trained in parallel processes"),
        overrides: list[str] = typer.Option([], "--set", help="override for every trial"),
        throughput: str = typer.Option("serve", "--throughput", help="serve | train examples/s"),
        quiet: bool = typer.Option(False, "--quiet", help="no per-trial lines"),
    ) -> None:
        """ParetoNet (paper 3.3): random trials, a surrogate, its Pareto front trained."""
        from dhen_cvr.search import load_space, run_search

        result = run_search(
            load_space(space),
            data,
            train_days,
            eval_days,
            out,
            trials=trials,
            seed=seed,
            workers=workers,
            extra_overrides=list(overrides),
            throughput=_throughput(throughput),
            log=not quiet,
        )
        typer.echo(result.markdown)
        typer.echo(f"report: {result.out / 'report.md'}, plot: {result.out / 'pareto.png'}")

    @app.command("search-compare")
    def compare_command(
        space: Path = typer.Option(..., "--space", help="search space YAML (configs/search/)"),
        data: Path = typer.Option(..., "--data", help="data folder with dt=*/ days"),
        train_days: str = typer.Option(..., "--train-days", help=_DAYS_HELP),
        eval_days: str = typer.Option(..., "--eval-days", help="the next day(s), e.g. '4'"),
        budget: int = typer.Option(..., "--budget", help="real trainings per method and seed"),
        out: Path = typer.Option(..., "--out", help="comparison folder (a rerun resumes it)"),
        seeds: list[int] = typer.Option([0, 1], "--seed", help="search seeds (repeat)"),
        methods: list[str] = typer.Option(
            ["paretonet", "random", "nsga2"], "--method", help="paretonet | random | nsga2"
        ),
        workers: int = typer.Option(1, "--workers", help="trials trained in parallel processes"),
        overrides: list[str] = typer.Option([], "--set", help="override for every trial"),
        throughput: str = typer.Option("serve", "--throughput", help="serve | train examples/s"),
        quiet: bool = typer.Option(False, "--quiet", help="no per-trial lines"),
    ) -> None:
        """Hypervolume of the measured front vs real trainings, per method, over seeds."""
        from dhen_cvr.search import compare_searches, load_space

        result = compare_searches(
            load_space(space),
            data,
            train_days,
            eval_days,
            out,
            budget=budget,
            seeds=list(seeds),
            methods=list(methods),
            workers=workers,
            extra_overrides=list(overrides),
            throughput=_throughput(throughput),
            log=not quiet,
        )
        typer.echo(result.markdown)
        typer.echo(f"report: {result.out / 'compare.md'}, plot: {result.out / 'hypervolume.png'}")


def _throughput(value: str) -> str:
    from dhen_cvr.errors import DhenCvrError

    if value not in ("serve", "train"):
        raise DhenCvrError(f"--throughput must be serve or train, got {value!r}")
    return value
