"""One small trained run and its exported artefact, shared by the serving tests (built
once per test process: exporting two torch.export programs is the slow part), plus a
started ``dhen-cvr serve`` process and request builders from real data rows."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq

from dhen_cvr.data.spec import FeatureSpec, SequenceFeature
from dhen_cvr.data.synth import WorldConfig
from train_world import free_port, make_world, tiny_config

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL_WORLD = WorldConfig(
    days=3,
    users=120,
    impressions_per_day=3000,
    max_seq_len=24,  # longer than the model's cut (16): requests get trimmed
    n_ads=200,
    n_advertisers=30,
    n_pins=500,
    n_queries=100,
    history_days=6,
)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m dhen_cvr.cli ARGS`` in a subprocess (1 thread)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dhen_cvr.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@dataclass(frozen=True)
class ServedWorld:
    world: Path
    run: Path
    artefact: Path


@functools.cache
def served_world() -> ServedWorld:
    """World (3 days), a run trained on day 1, its artefact made by ``dhen-cvr export``."""
    from dhen_cvr.train import train

    root = Path(tempfile.mkdtemp(prefix="dhen-cvr-serve-tests-"))
    atexit.register(shutil.rmtree, root, True)
    world = make_world(root / "world", SMALL_WORLD)
    train(tiny_config(), world, "1", root / "run", show_progress=False)
    done = cli("export", "--run", str(root / "run"), "--out", str(root / "art"))
    assert done.returncode == 0, done.stderr
    # progress on stderr while the programs trace, the result on stdout
    assert "tracing request.pt2 (one user x N candidates)\ntracing rows.pt2" in done.stderr
    assert done.stdout.startswith(f"wrote {root / 'art'}: model step-") and " s)" in done.stdout
    return ServedWorld(world, root / "run", root / "art")


def data_rows(world: Path, day: int, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of day ``day`` (1-based) as plain dicts."""
    days = sorted(world.glob("dt=*"))
    return pq.read_table(days[day - 1]).slice(0, n).to_pylist()


def request_from_rows(
    spec: FeatureSpec, user_row: dict[str, Any], candidate_rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """A /v1/score body: ``user_row``'s request-level features, sequences and request time
    against the candidate features of ``candidate_rows``."""
    plain = [f for f in spec.features if not isinstance(f, SequenceFeature)]
    return {
        "request_time": user_row[spec.request_time],
        "user": {
            "features": {
                f.name: user_row[f.source] for f in plain if f.category.value != "candidate"
            },
            "sequences": {
                s.name: {
                    "timestamps": user_row[s.timestamp],
                    **{fld.name: user_row[fld.source] for fld in s.fields},
                }
                for s in spec.sequences
            },
        },
        "candidates": [
            {f.name: row[f.source] for f in plain if f.category.value == "candidate"}
            for row in candidate_rows
        ],
    }


class Server:
    """``dhen-cvr serve`` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, artefact: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dhen_cvr.cli",
                "serve",
                "--artefact",
                str(artefact),
                "--port",
                str(self.port),
                *extra,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit code (uvicorn's graceful shutdown)."""
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=30)
        return code
