"""`examples/truth_term_gain.py`: a term the predictions lack gains ROC-AUC when added back,
one they already hold gains (about) nothing.

Predictions are written as `dhen-cvr predict` writes them (`PRED/dt=DAY/part-00000.parquet`
with the request time and `p_<head>`): once the oracle itself, once the oracle with the
advertiser's conversion-type mix taken out of its logits.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhen_cvr.data.synth import WorldConfig, synthesize

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "truth_term_gain.py"
HEADS = ["checkout", "add_to_cart", "signup"]
DAY = "2026-01-01"
MIX = "truth_conv_log_mix_{head}"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("truth_term_gain", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gain") / "data"
    synthesize(
        path, WorldConfig(users=3000, days=1, impressions_per_day=300_000, seed=5, truth_terms=True)
    )
    return path


def _write_predictions(world: Path, out: Path, *, drop_mix: bool) -> Path:
    table = pq.read_table(sorted((world / f"dt={DAY}").glob("*.parquet")))
    columns = {"ts": table.column("ts")}
    for head in HEADS:
        log_p = np.log(table.column(f"oracle_{head}").to_numpy())
        if drop_mix:
            mix = table.column(MIX.format(head=head)).to_numpy()
            log_p = log_p - (mix - mix.mean())
        columns[f"p_{head}"] = pa.array(np.exp(log_p))
    (out / f"dt={DAY}").mkdir(parents=True)
    pq.write_table(pa.table(columns), out / f"dt={DAY}" / "part-00000.parquet")
    return out


def test_a_missing_term_gains_and_a_known_one_does_not(world: Path, tmp_path: Path) -> None:
    gains = _load_script().term_gains
    oracle = gains(world, _write_predictions(world, tmp_path / "o", drop_mix=False), DAY, [MIX])
    lacking = gains(world, _write_predictions(world, tmp_path / "m", drop_mix=True), DAY, [MIX])
    for head in HEADS:
        base, best, k = lacking[MIX][head]
        o_base, o_best, _ = oracle[MIX][head]
        assert o_base > base + 0.002, (head, o_base, base)  # the mix matters in this world
        assert 0.5 <= k <= 1.5, (head, k)  # added back at about its true weight
        assert best - base > 0.002, (head, best, base)
        assert o_best - o_base < 0.3 * (best - base), (head, o_best, o_base)


def test_bad_input_is_one_line(world: Path, tmp_path: Path) -> None:
    pred = _write_predictions(world, tmp_path / "p", drop_mix=False)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(world), str(pred), DAY, "truth_conv_no_such_term"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.strip().startswith("error:") and "truth_conv_no_such_term" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
