"""Warnings about data that is usable but probably not what the user meant.

They are ordinary Python warnings of category :class:`DataWarning` (so ``pytest.warns``
and ``warnings.filterwarnings`` work); the CLI prints them as one ``warning: ...`` line
each (:func:`one_line_format`). Python shows a given message once per call site, so a
warning raised per row group appears once per column, not once per row group.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["DataWarning", "install_one_line_format", "one_line_format", "warn"]


class DataWarning(UserWarning):
    """Data that was read, but silently would have meant something else."""


def warn(message: str) -> None:
    """Emit ``message`` as a :class:`DataWarning` attributed to the caller's caller."""
    warnings.warn(message, DataWarning, stacklevel=3)


_default_format = warnings.formatwarning


def one_line_format(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
    **_: Any,
) -> str:
    """``warning: <message>`` for a :class:`DataWarning`, Python's format otherwise."""
    if issubclass(category, DataWarning):
        return f"warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


def install_one_line_format() -> None:
    """Make the process print :class:`DataWarning` s as one line (CLI start-up)."""
    warnings.formatwarning = one_line_format
