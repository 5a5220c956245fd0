"""CLI commands of the data layer: ``synth``, ``inspect`` and ``validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from dhen_cvr.data.inspect import format_report, inspect_dataset
from dhen_cvr.data.spec import load_data_spec
from dhen_cvr.data.synth import WorldConfig, synthesize
from dhen_cvr.data.validate import validate_dataset
from dhen_cvr.data.warning import install_one_line_format
from dhen_cvr.data.writer import day_dirs
from dhen_cvr.errors import DhenCvrError

SPEC_HELP = "feature spec YAML (default: the data folder's _spec.yaml or spec.yaml)"


def synth(
    out: Annotated[
        Path, typer.Option("--out", help="Output folder (dt=YYYY-MM-DD/ + _spec.yaml).")
    ],
    days: Annotated[int, typer.Option(help="Logged days of impressions.")] = 14,
    users: Annotated[int, typer.Option(help="Number of users.")] = 2000,
    impressions_per_day: Annotated[
        int, typer.Option(help="Expected impressions per day before down-sampling.")
    ] = 20000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed -> same data).")] = 0,
    max_seq_len: Annotated[int, typer.Option(help="Items kept per behaviour sequence.")] = 50,
    negative_rate: Annotated[
        float, typer.Option(help="Keep rate of non-converting impressions.")
    ] = 0.05,
    start_date: Annotated[str, typer.Option(help="First logged day, YYYY-MM-DD.")] = "2026-01-01",
    history_days: Annotated[
        int, typer.Option(help="Days of behaviour simulated before the first logged day.")
    ] = 30,
    overwrite: Annotated[
        bool, typer.Option(help="Replace OUT if it is a data set dhen-cvr wrote.")
    ] = False,
    truth_terms: Annotated[
        bool,
        typer.Option(help="Also write each row's latent logit terms as truth_* columns."),
    ] = False,
    sequence_topics: Annotated[
        bool,
        typer.Option(
            help="Write the organic and ad items' topics in the sequences; with "
            "--no-sequence-topics items carry only their ids."
        ),
    ] = True,
) -> None:
    """Write the synthetic conversion-ads world (see ``dhen_cvr.data.synth``)."""
    try:
        config = WorldConfig(
            days=days,
            users=users,
            impressions_per_day=impressions_per_day,
            seed=seed,
            max_seq_len=max_seq_len,
            negative_rate=negative_rate,
            start_date=start_date,
            history_days=history_days,
            truth_terms=truth_terms,
            sequence_topics=sequence_topics,
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise DhenCvrError(f"invalid world settings: {problems}") from None
    summary = synthesize(out, config, overwrite=overwrite)
    typer.echo(summary.format())
    typer.echo(f"wrote {out} (_spec.yaml, _world.json)")


def inspect(
    root: Annotated[Path, typer.Argument(help="A data set folder (dt=*/ day folders).")],
    spec: Annotated[Path | None, typer.Option(help=SPEC_HELP)] = None,
) -> None:
    """Rows per day, label rates before/after sampling, sequence lengths, oracle AUCs."""
    typer.echo(format_report(inspect_dataset(root, load_data_spec(root, spec))))


def validate(
    root: Annotated[Path, typer.Argument(help="A data set folder (dt=*/ day folders).")],
    spec: Annotated[Path | None, typer.Option(help=SPEC_HELP)] = None,
    max_errors: Annotated[int, typer.Option(help="Stop listing after this many.")] = 100,
) -> None:
    """Check every file, row group and column against the spec; exit 1 on any problem."""
    feature_spec = load_data_spec(root, spec)
    sources = day_dirs(root) or [root]
    report = validate_dataset(sources, feature_spec, max_errors=max_errors)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
    install_one_line_format()  # DataWarnings print as one "warning: ..." line
    app.command("synth")(synth)
    app.command("inspect")(inspect)
    app.command("validate")(validate)
