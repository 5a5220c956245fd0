"""runtime/cpu_memory.py: freed tensor memory is reused instead of re-faulted from the OS.

Each case runs in a fresh interpreter (mallopt is process-wide and cannot be undone) and
counts the minor page faults of 20 rounds of a forward-pass-like chain: six elementwise
ops on a 24 MiB float32 tensor, each output replacing its input. With glibc's defaults
freed blocks go back to the OS (munmap, heap trimming) and the next outputs fault their
pages in again (~130,000 faults here); with the memory retained, none after the first
round.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from dhen_cvr.runtime import retain_freed_cpu_memory
applied = retain_freed_cpu_memory() if sys.argv[1] == "1" else None
again = retain_freed_cpu_memory() if sys.argv[1] == "1" else None
def step():
    x = torch.ones(6 << 20)
    for _ in range(6):
        x = x * 2 + 1
    return float(x[-1])
step()  # first touch, outside the count
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "again": again, "faults": faults}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt tuning applies to glibc on Linux only",
)


def probe(retain: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if retain else "0"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_only
def test_retained_memory_stops_page_faults_on_reallocation() -> None:
    default, retained = probe(False), probe(True)
    assert retained["applied"] is True and retained["again"] is True  # idempotent
    pages_per_tensor = (24 << 20) // 4096
    assert default["faults"] > 5 * pages_per_tensor, default  # returned, faulted again
    assert retained["faults"] < pages_per_tensor, retained  # reused: not one tensor's pages


def test_train_config_exposes_the_switch() -> None:
    from dhen_cvr.config import TrainConfig

    assert TrainConfig().retain_cpu_memory is True
    assert TrainConfig(retain_cpu_memory=False).retain_cpu_memory is False
