"""Independent runs (study runs, search trials) in parallel worker processes.

Workers are *spawned* (a fresh interpreter each: no forked torch or thread-pool state) and,
on Linux, die with the parent (``PR_SET_PDEATHSIG``), so that after a ``kill -9`` no orphan
keeps training into a folder that a resumed study or search reuses.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

__all__ = ["run_in_processes"]

T = TypeVar("T")
R = TypeVar("R")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_in_processes(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    on_result: Callable[[R], None] | None = None,
) -> None:
    """Call ``fn(item)`` for every item in ``workers`` spawned processes; ``on_result`` gets
    each result in this process as soon as it is ready (completion order). ``fn`` and the
    items must pickle. The first exception cancels the calls not yet started and is raised
    here once the running ones end."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_die_with_parent
    ) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            for future in as_completed(futures):
                result = future.result()
                if on_result is not None:
                    on_result(result)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
