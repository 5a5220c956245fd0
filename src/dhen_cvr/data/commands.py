"""CLI commands of the data layer (placeholder until synth/inspect land)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
