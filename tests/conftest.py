"""Fixtures shared by several test files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from train_world import make_world


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One CPU thread: multi-threaded kernels may sum floats in another order from run to
    run, and bitwise comparisons of trained weights need the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small synthetic world of ``train_world.make_world``, one per test module."""
    return make_world(tmp_path_factory.mktemp("world") / "world")
