"""CLI: ``init-spec`` (a thin layer over :func:`dhen_cvr.data.init_spec.draft_spec`)."""

from __future__ import annotations

from pathlib import Path

import typer

from dhen_cvr.errors import DhenCvrError

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``init-spec`` to the top-level app."""

    @app.command("init-spec")
    def init_spec_command(
        data: Path = typer.Argument(..., help="a Parquet folder (dt=YYYY-MM-DD/ day folders)"),
        out: Path | None = typer.Option(
            None, "--out", help="where to write the draft (default DATA/_spec.yaml; '-': stdout)"
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
        max_files: int = typer.Option(200, "--max-files", help="files whose footers are read"),
    ) -> None:
        """Draft a commented feature spec from the Parquet schema and statistics."""
        from dhen_cvr.data.init_spec import draft_spec
        from dhen_cvr.data.spec import SPEC_FILE

        draft = draft_spec(data, max_files=max_files)
        if out is not None and str(out) == "-":
            typer.echo(draft.text, nl=False)
            return
        target = out or data / SPEC_FILE
        if target.exists() and not overwrite:
            raise DhenCvrError(f"{target} exists (pass --overwrite to replace it)")
        target.write_text(draft.text)
        spec = draft.spec
        typer.echo(
            f"drafted {len(spec.features) - len(spec.sequences)} features, "
            f"{len(spec.sequences)} sequences and {len(spec.labels)} labels from "
            f"{draft.files_read} file(s); {draft.guesses} '# guessed:' lines to confirm, "
            f"{len(draft.dropped)} column(s) left out"
        )
        typer.echo(f"wrote {target}")
        flag = "" if out is None else f" --spec {target}"
        typer.echo(f"next: dhen-cvr validate {data}{flag}")
