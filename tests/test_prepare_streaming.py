"""prepare-events streams: an event log several times larger than the memory a child
process may still allocate (``RLIMIT_AS``) converts, while merely holding the decoded
file under the same limit fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dhen_cvr.data.writer import day_dirs

ROWS = 2_500_000
WARM_ROWS = 100_000
MARGIN_MB = 20  # address space the child may add beyond its warm-up peak

CHILD = r"""
import json, resource, sys
import pyarrow as pa, pyarrow.csv as pacsv
pa.set_cpu_count(1)
pa.set_io_thread_count(1)
from dhen_cvr.data.prepare import EventMapping, StreamingOptions, prepare_events

def vm_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

warm, big, out, margin_mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mapping = EventMapping.model_validate({
    "source": {"column_names": ["u", "i", "c", "e", "t"], "id_type": "int"},
    "columns": {"user": "u", "item": "i", "event": "e", "timestamp": "t",
                "item_attributes": {"category": "c"}},
    "event_types": ["pv", "cart", "buy"], "exposure": "pv",
    "labels": [{"name": "buy", "events": ["buy"], "window": "1d"}],
    "sequences": [{"name": "org", "events": ["pv"], "max_len": 5, "fields": ["item"]}],
    "counts": [{"name": "n_pv_1d", "events": ["pv"], "window": "1d"}],
})
options = StreamingOptions(buckets=200, block_size=1 << 16, spill_rows=32768,
                           chunk_rows=4096, flush_bytes=1 << 20, max_open_files=1)
# Warm-up on a small log: load every library, codec and thread the real run uses and
# reach the fixed working set (buffers, open files); then cap the address space at the
# warm-up's peak plus the margin, so the margin is what a larger input may add.
prepare_events(warm, mapping, out + "-warm", options=options)
baseline = vm_mb("VmPeak")
limit = int((baseline + margin_mb) * 2**20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
report = prepare_events(big, mapping, out, options=options)
peak = vm_mb("VmPeak")
try:  # control: keeping the decoded file in memory does not fit
    read = pacsv.ReadOptions(block_size=1 << 16, use_threads=False, column_names=list("uicet"))
    with pa.input_stream(big) as stream:
        held = list(pacsv.open_csv(stream, read_options=read))
    control = "fits"
except MemoryError:
    control = "MemoryError"
print(json.dumps({"rows_read": report.rows_read, "examples": report.examples,
                  "baseline_mb": baseline, "peak_mb": peak, "control": control}))
"""


def write_log(path: Path, n: int, seed: int) -> int:
    """A headerless Taobao-like log; returns the number of ``pv`` rows."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 100_000, n)
    events = np.array(["pv", "pv", "cart", "cart", "buy"])[rng.integers(0, 5, n)]
    table = pa.table(
        {
            "u": rng.integers(0, n // 50 + 1, n),
            "i": items,
            "c": items % 500,
            "e": events,
            "t": 1_700_000_000 + rng.integers(0, 10 * 86400, n),
        }
    )
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(include_header=False))
    return int((events == "pv").sum())


@pytest.mark.slow  # ~20-25 s of CPU: 1.5 M events through both passes
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_log_larger_than_the_memory_limit_converts(tmp_path: Path) -> None:
    warm, big = tmp_path / "warm.csv", tmp_path / "big.csv"
    write_log(warm, WARM_ROWS, seed=1)
    exposures = write_log(big, ROWS, seed=2)
    env = {
        **os.environ,
        "ARROW_DEFAULT_MEMORY_POOL": "system",  # freed memory goes back; no arena reservations
        "MALLOC_ARENA_MAX": "1",
        "OMP_NUM_THREADS": "1",
    }
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(warm), str(big), str(out), str(MARGIN_MB)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows_read"] == ROWS
    assert result["examples"] == exposures
    assert result["peak_mb"] <= result["baseline_mb"] + MARGIN_MB
    assert result["control"] == "MemoryError"
    written = sum(pq.read_metadata(f).num_rows for d in day_dirs(out) for f in d.iterdir())
    assert written == exposures
    # the input is several times the allowance, decoded or as examples
    margin = MARGIN_MB * 2**20
    assert big.stat().st_size > 3.8 * margin  # 81 MB of CSV for 20 MiB
    examples_bytes = sum(pq.read_table(d).nbytes for d in day_dirs(out))
    assert examples_bytes > 5 * margin
