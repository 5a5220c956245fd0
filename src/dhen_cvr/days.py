"""Day selection: ``"1-10"``, ``"11"``, ``"2026-01-01..2026-01-10"`` -> ``dt=*`` folders.

A data set is one folder per day (``ROOT/dt=YYYY-MM-DD/``, DESIGN section 2). Commands
name days either by 1-based position among those folders (``1-10``, ``11``) or by date
(``2026-01-03``, ``2026-01-01..2026-01-10``, both ends inclusive); parts may be joined
with commas (``1-3,5``) and ``all`` selects every day. The result is sorted and has no
duplicates. A date range keeps the days that exist inside it, so a gap in the logs is
not an error, but a range or index that selects nothing is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from dhen_cvr.data.writer import day_dirs
from dhen_cvr.errors import DhenCvrError

__all__ = ["day_name", "next_day", "resolve_days", "select_days"]

_DATE = r"\d{4}-\d{2}-\d{2}"
_INDEX_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_DATE_RANGE = re.compile(rf"^({_DATE})(?:\.\.({_DATE}))?$")


def day_name(folder: Path) -> str:
    """``.../dt=2026-01-03`` -> ``2026-01-03``."""
    return folder.name.split("=", 1)[1]


def _available(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DhenCvrError(f"data folder {root} does not exist")
    days = day_dirs(root)
    if not days:
        raise DhenCvrError(f"{root} has no day folders (expected dt=YYYY-MM-DD/ sub-folders)")
    return days


def _describe(days: list[Path]) -> str:
    return f"{len(days)} day folder(s), {days[0].name} .. {days[-1].name}"


def _select_part(part: str, days: list[Path], root: Path) -> list[Path]:
    if part == "all":
        return list(days)
    if m := _INDEX_RANGE.match(part):
        first = int(m[1])
        last = int(m[2]) if m[2] else first
        if first < 1 or last < first:
            raise DhenCvrError(f"bad day range {part!r}: days are numbered from 1, low to high")
        if last > len(days):
            raise DhenCvrError(f"day {last} does not exist: {root} has {_describe(days)}")
        return days[first - 1 : last]
    if m := _DATE_RANGE.match(part):
        first_date, last_date = m[1], m[2] or m[1]
        if last_date < first_date:
            raise DhenCvrError(f"bad date range {part!r}: the first date is after the last")
        chosen = [d for d in days if first_date <= day_name(d) <= last_date]
        if not chosen:
            raise DhenCvrError(f"no day in {part!r}: {root} has {_describe(days)}")
        return chosen
    raise DhenCvrError(
        f"cannot read day selection {part!r}; use e.g. '1-10', '11', '1-3,5', 'all', "
        "'2026-01-03' or '2026-01-01..2026-01-10'"
    )


def select_days(root: str | Path, selection: str) -> list[Path]:
    """The day folders of ``root`` named by ``selection`` (see the module docstring)."""
    root = Path(root)
    days = _available(root)
    parts = [p.strip() for p in selection.split(",") if p.strip()]
    if not parts:
        raise DhenCvrError("empty day selection")
    chosen = {d for part in parts for d in _select_part(part, days, root)}
    return sorted(chosen)


def resolve_days(root: str | Path, days: str | Sequence[str | Path]) -> list[Path]:
    """A selection string (:func:`select_days`) or already chosen day folders."""
    return select_days(root, days) if isinstance(days, str) else [Path(d) for d in days]


def next_day(root: str | Path, day: Path) -> Path | None:
    """The day folder after ``day`` in ``root``, or None when ``day`` is the last."""
    days = _available(Path(root))
    later = [d for d in days if day_name(d) > day_name(day)]
    return later[0] if later else None
