"""CLI: ``dhen-cvr prepare-events`` and ``dhen-cvr prepare-table``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from dhen_cvr.data.prepare.events import StreamingOptions, prepare_events
from dhen_cvr.data.prepare.mapping_config import (
    EventMapping,
    Mapping,
    MappingError,
    TableMapping,
    load_mapping,
    load_preset,
)
from dhen_cvr.data.prepare.table import Formulation, prepare_table
from dhen_cvr.data.warning import install_one_line_format

__all__ = ["register"]


def _load(mapping: Path | None, preset: str | None, default: str | None = None) -> Mapping:
    if mapping is not None and preset is not None:
        raise MappingError("give --mapping or --preset, not both")
    if mapping is not None:
        return load_mapping(mapping)
    name = preset or default
    if name is None:
        raise MappingError("give --mapping M.yaml or --preset NAME")
    return load_preset(name)


def prepare_events_command(
    events: Annotated[
        list[str],
        typer.Option("--events", help="Event log file, folder or glob (CSV/Parquet); repeatable."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output data set folder.")],
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="Mapping YAML (kind: events).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Built-in mapping, e.g. taobao.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it is a data set dhen-cvr wrote.")
    ] = False,
    buckets: Annotated[
        int | None,
        typer.Option(
            "--buckets", min=1, help="User hash buckets for pass 2 (default: from input size)."
        ),
    ] = None,
    tmp_dir: Annotated[
        Path | None,
        typer.Option("--tmp-dir", help="Where to spill buckets (default: next to --out)."),
    ] = None,
) -> None:
    """Build training examples from raw event logs (one example per exposure event)."""
    m = _load(mapping, preset)
    if not isinstance(m, EventMapping):
        raise MappingError(
            "prepare-events needs a 'kind: events' mapping (use prepare-table for tables)"
        )
    report = prepare_events(
        events,
        m,
        out,
        overwrite=overwrite,
        options=StreamingOptions(buckets=buckets, tmp_dir=tmp_dir),
    )
    typer.echo(report.to_text())
    typer.echo(f"wrote {out} (_spec.yaml, _quality.json)")


def prepare_table_command(
    csv: Annotated[
        list[str],
        typer.Option("--csv", help="CSV table; repeat for consecutive days (train, val, test)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output data set folder.")],
    preset: Annotated[
        str | None, typer.Option("--preset", help="Built-in mapping (aliccp).")
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="Mapping YAML (kind: table).")
    ] = None,
    formulation: Annotated[
        str,
        typer.Option(
            "--formulation",
            help="click_masked: CVR = P(conversion | click), conversion masked by click; "
            "entire_space: conversion on all impressions.",
        ),
    ] = "click_masked",
    start_date: Annotated[
        str, typer.Option("--start-date", help="Day of the first CSV (YYYY-MM-DD).")
    ] = "2024-01-01",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it is a data set dhen-cvr wrote.")
    ] = False,
) -> None:
    """Convert flat click/conversion tables (Ali-CCP style); each --csv is one day."""
    m = _load(mapping, preset, default="aliccp" if mapping is None else None)
    if not isinstance(m, TableMapping):
        raise MappingError(
            "prepare-table needs a 'kind: table' mapping (use prepare-events for logs)"
        )
    if formulation not in ("click_masked", "entire_space"):
        raise MappingError(
            f"--formulation must be click_masked or entire_space, got {formulation!r}"
        )
    try:
        day = dt.date.fromisoformat(start_date)
    except ValueError:
        raise MappingError(f"--start-date must be YYYY-MM-DD, got {start_date!r}") from None
    form: Formulation = "click_masked" if formulation == "click_masked" else "entire_space"
    report = prepare_table(csv, m, out, formulation=form, start_date=day, overwrite=overwrite)
    typer.echo(report.to_text())
    typer.echo(f"wrote {out} (_spec.yaml, _quality.json)")


def register(app: typer.Typer) -> None:
    """Add ``prepare-events`` and ``prepare-table`` to the top-level app."""
    install_one_line_format()  # DataWarnings print as one "warning: ..." line
    app.command("prepare-events")(prepare_events_command)
    app.command("prepare-table")(prepare_table_command)
