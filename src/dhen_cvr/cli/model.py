"""CLI commands of the model package: ``dhen-cvr describe``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dhen_cvr.data.spec import FeatureSpec, load_spec


def _default_spec() -> FeatureSpec:
    """The synthetic world's feature spec (what ``dhen-cvr synth`` writes by default)."""
    from dhen_cvr.data.synth import WorldConfig, world_spec

    return world_spec(WorldConfig())


def describe(
    config: Annotated[
        str,
        typer.Option("--config", "-c", help="experiment config YAML or preset name (tiny, paper)"),
    ],
    spec: Annotated[
        Path | None,
        typer.Option("--spec", "-s", help="feature spec YAML (default: the synthetic world's)"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config value, e.g. --set model.dim=32"),
    ] = None,
) -> None:
    """Show the model a config builds: DHEN module tree, parameters, tokens, FLOPs."""
    from dhen_cvr.config import load_experiment_config, resolve_config_path
    from dhen_cvr.model.describe import describe_model, format_description

    path = resolve_config_path(config)
    model_config = load_experiment_config(path, overrides or []).model
    feature_spec = load_spec(spec) if spec is not None else _default_spec()
    typer.echo(f"config: {path}   spec: {spec if spec is not None else 'synthetic world'}")
    typer.echo(format_description(describe_model(model_config, feature_spec)))


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
    app.command("describe")(describe)
