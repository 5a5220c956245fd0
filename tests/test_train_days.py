"""Day selection: indices, dates, unions, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhen_cvr.days import day_name, next_day, select_days
from dhen_cvr.errors import DhenCvrError


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for day in ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05", "2026-01-06"]:
        (tmp_path / f"dt={day}").mkdir()
    (tmp_path / "spec.yaml").write_text("")  # not a day
    return tmp_path


def names(days: list[Path]) -> list[str]:
    return [day_name(d) for d in days]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("1-3", ["2026-01-01", "2026-01-02", "2026-01-03"]),
        ("4", ["2026-01-05"]),
        ("1,5", ["2026-01-01", "2026-01-06"]),
        ("2-3, 1-2", ["2026-01-01", "2026-01-02", "2026-01-03"]),
        ("all", ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05", "2026-01-06"]),
        ("2026-01-02", ["2026-01-02"]),
        ("2026-01-03..2026-01-05", ["2026-01-03", "2026-01-05"]),  # the gap is skipped
        ("5", ["2026-01-06"]),
    ],
)
def test_select_days(data: Path, selection: str, expected: list[str]) -> None:
    assert names(select_days(data, selection)) == expected


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ("6", r"day 6 does not exist: .* has 5 day folder\(s\), dt=2026-01-01 \.\. dt=2026-01-06"),
        ("0-2", "numbered from 1"),
        ("3-1", "numbered from 1"),
        ("2026-01-04", "no day in '2026-01-04'"),
        ("2026-01-05..2026-01-01", "first date is after the last"),
        ("yesterday", "cannot read day selection 'yesterday'"),
        (" , ", "empty day selection"),
    ],
)
def test_select_days_errors(data: Path, selection: str, message: str) -> None:
    with pytest.raises(DhenCvrError, match=message):
        select_days(data, selection)


def test_missing_or_empty_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DhenCvrError, match="does not exist"):
        select_days(tmp_path / "nope", "1")
    with pytest.raises(DhenCvrError, match="no day folders"):
        select_days(tmp_path, "1")


def test_next_day(data: Path) -> None:
    days = select_days(data, "all")
    assert day_name(next_day(data, days[2]) or Path("dt=none")) == "2026-01-05"
    assert next_day(data, days[-1]) is None
