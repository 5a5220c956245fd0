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
    "dhen_cvr.data.commands",
    "dhen_cvr.data.prepare.commands",
    "dhen_cvr.model.commands",
    "dhen_cvr.train.commands",
    "dhen_cvr.eval.commands",
    "dhen_cvr.study.commands",
    "dhen_cvr.baseline.commands",
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


if __name__ == "__main__":
    main()
