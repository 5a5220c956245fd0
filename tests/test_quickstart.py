"""The quickstart pipeline on a tiny world: data, run, report, plot; safe re-runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dhen_cvr.errors import DhenCvrError
from dhen_cvr.pipeline.quickstart import MARKER, claim_folder, quickstart
from train_world import TINY_WORLD, tiny_config


def test_quickstart_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    result = quickstart(out, world=TINY_WORLD, config=tiny_config(), show_progress=False)
    assert (out / MARKER).is_file() and (out / "data" / "_spec.yaml").is_file()
    assert result.train.run == out / "run" and (out / "run" / "eval.json").is_file()
    assert result.report.days == ["2026-01-04"]  # trained on days 1-3, evaluated on day 4
    for head in result.report.heads:
        assert 0.5 < result.report.mean[head]["oracle_roc_auc"] <= 1.0
    text = result.markdown.read_text()
    assert "| checkout |" in text and "oracle" in text and "report.png" in text
    png = result.plot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_quickstart_folder_is_replaced_a_foreign_one_refused(tmp_path: Path) -> None:
    earlier = tmp_path / "earlier"
    claim_folder(earlier)  # what quickstart does first
    (earlier / "run").mkdir()
    (earlier / "run" / "stale.txt").write_text("old")
    claim_folder(earlier)
    assert [p.name for p in earlier.iterdir()] == [MARKER]

    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DhenCvrError, match="not a quickstart folder"):
        quickstart(tmp_path, world=TINY_WORLD, config=tiny_config())
    assert (tmp_path / "mine.txt").read_text() == "precious"
