"""The ``dhen-cvr`` command line: a thin typer layer over the Python API.

Each package that offers commands has a ``commands.py`` with ``register(app)``; adding a
package's commands is one line in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import importlib
import sys

import typer

from dhen_cvr.data.spec import SpecError
from dhen_cvr.errors import DhenCvrError

_COMMAND_MODULES = [
    "dhen_cvr.cli.data",
    "dhen_cvr.cli.prepare",
    "dhen_cvr.cli.model",
    "dhen_cvr.cli.train",
    "dhen_cvr.cli.eval",
    "dhen_cvr.cli.study",
    "dhen_cvr.cli.baseline",
    "dhen_cvr.cli.search",
]

app = typer.Typer(
    name="dhen-cvr",
    help="Multi-task DHEN conversion-rate models: synthesise, train, evaluate, search, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console entry point: user errors become one clear line and exit code 2."""
    try:
        app()
    except (DhenCvrError, SpecError, FileNotFoundError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
