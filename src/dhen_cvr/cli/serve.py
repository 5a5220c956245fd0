"""CLI commands of the serve package: ``dhen-cvr export``, ``serve`` and ``predict``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def export(
    run: Annotated[Path, typer.Option("--run", help="run folder (or checkpoint folder)")],
    out: Annotated[Path, typer.Option("--out", help="artefact folder to create")],
) -> None:
    """Export a run's newest checkpoint to a self-contained serving artefact (.pt2)."""
    from dhen_cvr.serve.artefact import export_artefact

    layouts = {"request.pt2": "one user x N candidates", "rows.pt2": "B independent rows"}
    start = time.perf_counter()
    path = export_artefact(
        run, out, on_program=lambda name: typer.echo(f"tracing {name} ({layouts[name]})", err=True)
    )
    meta = json.loads((path / "metadata.json").read_text())
    typer.echo(
        f"wrote {path}: model {meta['model_version']}, heads {', '.join(meta['heads'])} "
        f"({time.perf_counter() - start:.0f} s)"
    )


def serve(
    artefact: Annotated[Path, typer.Option("--artefact", help="artefact folder (dhen-cvr export)")],
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8000,
    max_candidates: Annotated[
        int, typer.Option("--max-candidates", help="candidates per request, at most")
    ] = 1000,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", help="request body size limit (413 above)")
    ] = 8 << 20,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads")] = 1,
) -> None:
    """Serve POST /v1/score, GET /healthz, GET /metadata (FastAPI + uvicorn)."""
    from dhen_cvr.serve.app import run_server
    from dhen_cvr.serve.artefact import load_artefact

    run_server(
        load_artefact(artefact, programs=("request",)),
        host,
        port,
        max_candidates=max_candidates,
        max_body_bytes=max_body_bytes,
        threads=threads,
    )


def predict(
    data: Annotated[Path, typer.Option("--data", help="data folder with dt=*/ days")],
    days: Annotated[str, typer.Option("--days", help="days by index or date: '5', '4-5'")],
    out: Annotated[Path, typer.Option("--out", help="prediction folder to create")],
    run: Annotated[Path | None, typer.Option("--run", help="run folder (eager model)")] = None,
    artefact: Annotated[
        Path | None, typer.Option("--artefact", help="exported artefact folder")
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(
            "--keep", help="comma-separated input columns to copy (default: user id, time)"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="rows per forward")] = 4096,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
) -> None:
    """Batch scoring, Parquet -> Parquet: kept id columns + p_<head> per served head."""
    from dhen_cvr.serve.predict import predict as run_predict

    columns = [c.strip() for c in keep.split(",") if c.strip()] if keep is not None else None
    summary = run_predict(
        data,
        days,
        out,
        run=run,
        artefact=artefact,
        keep=columns,
        batch_size=batch_size,
        threads=threads,
    )
    typer.echo(json.dumps({"out": str(out), **summary}))


def register(app: typer.Typer) -> None:
    """Add this package's commands to the top-level app."""
    app.command("export")(export)
    app.command("serve")(serve)
    app.command("predict")(predict)
