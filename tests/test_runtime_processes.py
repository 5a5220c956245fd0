"""runtime.run_in_processes: spawned workers, results as they complete, first error raised."""

from __future__ import annotations

import pytest

from dhen_cvr.runtime import run_in_processes


def test_every_result_reaches_the_parent() -> None:
    results: list[int] = []
    run_in_processes(int, ["1", "2", "3", "4"], 2, results.append)
    assert sorted(results) == [1, 2, 3, 4]


def test_a_worker_error_is_raised_in_the_parent() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        run_in_processes(int, ["1", "not a number"], 2)
