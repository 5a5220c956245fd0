"""User-facing errors: the CLI prints their message on one line and exits non-zero."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["DataError", "DhenCvrError", "DhenCvrWarning", "describe_validation_error", "warn"]


def describe_validation_error(title: str, err: ValidationError, prefix: str = "") -> str:
    """``title`` then one ``  key.path: message`` line per pydantic error."""
    lines = [title]
    for e in err.errors():
        where = ".".join(str(k) for k in e["loc"])
        lines.append(f"  {prefix}{where or '(top level)'}: {e['msg']}")
    return "\n".join(lines)


class DhenCvrError(Exception):
    """Base class of errors caused by user input (bad data, bad config), not by a bug."""


class DataError(DhenCvrError):
    """Bad input data. The message names the file, the column and, where it applies,
    the row (``file.parquet: column 'age', row 17: NaN in a dense feature``)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        row_group: int | None = None,
    ) -> None:
        self.file, self.column, self.row, self.row_group = file, column, row, row_group
        where = []
        if file is not None:
            where.append(str(file))
        if row_group is not None:
            where.append(f"row group {row_group}")
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__((": ".join([", ".join(where), message])) if where else message)


class DhenCvrWarning(UserWarning):
    """Something the user should know that does not stop the run (a damaged checkpoint
    skipped, a metric undefined on a day); the CLI prints it as one ``warning:`` line."""


def warn(message: str) -> None:
    """Issue a :class:`DhenCvrWarning` (shown by the CLI as ``warning: <message>``)."""
    import warnings

    warnings.warn(message, DhenCvrWarning, stacklevel=2)
