"""The ``dhen-cvr`` command line: a thin typer layer over the Python API.

Each package that offers commands has a ``commands.py`` with ``register(app)``; adding a
package's commands is one line in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import errno
import importlib
import sys
import warnings
from typing import NoReturn, TextIO

import typer
from typer._click.exceptions import ClickException  # typer >= 0.24 vendors click

from dhen_cvr.data.spec import SpecError
from dhen_cvr.errors import DhenCvrError, DhenCvrWarning

_COMMAND_MODULES = [
    "dhen_cvr.cli.data",
    "dhen_cvr.cli.spec",
    "dhen_cvr.cli.prepare",
    "dhen_cvr.cli.model",
    "dhen_cvr.cli.train",
    "dhen_cvr.cli.eval",
    "dhen_cvr.cli.study",
    "dhen_cvr.cli.baseline",
    "dhen_cvr.cli.serve",
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point and the CLI's one error boundary.

    User errors (:class:`DhenCvrError`, a bad spec), operating-system errors (a missing
    file, a read-only folder, a full disk), damaged files read by a library (Parquet,
    YAML, JSON, a checkpoint) and pydantic validation errors become one ``error: ...``
    line on stderr and exit code 2, without a traceback; anything else is a bug and keeps
    its traceback. :class:`DhenCvrWarning` prints as one ``warning: ...`` line."""
    warnings.simplefilter("always", DhenCvrWarning)
    warnings.showwarning = _show_warning
    try:
        code = app(args=argv, prog_name="dhen-cvr", standalone_mode=False)
    except typer.Abort as err:
        if isinstance(err.__cause__, EOFError):  # typer turns an EOFError into "Aborted!"
            _fail(f"unexpected end of input ({err.__cause__ or 'EOFError'})")
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except ClickException as err:  # usage errors: typer's own message and exit code
        err.show()
        sys.exit(err.exit_code)
    except Exception as err:
        if isinstance(err, OSError) and err.errno == errno.EPIPE:
            sys.exit(1)  # the reader of our output went away (``| head``)
        message = describe_error(err)
        if message is None:
            raise
        _fail(message)
    sys.exit(code if isinstance(code, int) else 0)


def describe_error(err: BaseException) -> str | None:
    """The one-line message for an error the boundary handles, None for a bug."""
    if isinstance(err, DhenCvrError | SpecError):
        return str(err)
    if isinstance(err, OSError):
        return _describe_os_error(err)
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(err, pydantic.ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(k) for k in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        )
        return f"invalid {err.title}: {problems}"
    library = tuple(
        cls
        for module, name in _LIBRARY_ERRORS
        if (cls := getattr(sys.modules.get(module), name, None)) is not None
    )
    if library and isinstance(err, library):
        first = (str(err).strip().splitlines() or [""])[0]
        return f"{type(err).__module__.split('.')[0]} {type(err).__name__}: {first}"
    return None


# Raised by libraries reading a damaged or malformed file (only looked up once loaded).
_LIBRARY_ERRORS = (
    ("pyarrow", "ArrowException"),
    ("yaml", "YAMLError"),
    ("json", "JSONDecodeError"),
    ("pickle", "UnpicklingError"),
)


def _describe_os_error(err: OSError) -> str:
    """``<reason> [<errno name>]: <path>; <hint>``, e.g.
    ``Permission denied [EACCES]: run/config.yaml; check the permissions ...``."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno is not None and err.errno in errno.errorcode:
        reason += f" [{errno.errorcode[err.errno]}]"
    where = [str(f) for f in (err.filename, err.filename2) if f is not None]
    text = f"{reason}: {' -> '.join(where)}" if where else reason
    hint = _OS_HINTS.get(err.errno or 0)
    return f"{text}; {hint}" if hint else text


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "check the permissions or choose another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    sys.exit(2)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if issubclass(category, DhenCvrWarning):
        typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning
