"""`dhen-cvr synth` and `dhen-cvr inspect` end to end through the typer app."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dhen_cvr.cli import app
from dhen_cvr.data.spec import load_spec
from dhen_cvr.data.writer import day_dirs
from dhen_cvr.errors import DhenCvrError


def test_synth_then_inspect(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "world"
    args = ["synth", "--out", str(out), "--days", "2", "--users", "60"]
    args += ["--impressions-per-day", "2000", "--seed", "7", "--max-seq-len", "12"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2026-01-02" in result.output and "oracle ROC-AUC" in result.output
    assert [d.name for d in day_dirs(out)] == ["dt=2026-01-01", "dt=2026-01-02"]
    assert all(s.max_len == 12 for s in load_spec(out / "_spec.yaml").sequences)

    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "sequence length" in result.output and "2026-01-01" in result.output

    again = runner.invoke(app, args)  # refuses to clobber without --overwrite
    assert isinstance(again.exception, DhenCvrError) and "--overwrite" in str(again.exception)
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_synth_rejects_bad_settings_with_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "w"), "--days", "0"])
    assert isinstance(result.exception, DhenCvrError)
    assert "days" in str(result.exception)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("bad", [{"n_ads": 10, "n_advertisers": 20}, {"start_date": "2026-13-01"}])
def test_world_config_validation(bad: dict[str, object]) -> None:
    from pydantic import ValidationError

    from dhen_cvr.data.synth import WorldConfig

    with pytest.raises(ValidationError):
        WorldConfig(**bad)  # type: ignore[arg-type]


def test_synth_passes_history_days_and_truth_terms(tmp_path: Path) -> None:
    import json

    import pyarrow.parquet as pq

    out = tmp_path / "world"
    args = ["synth", "--out", str(out), "--days", "1", "--users", "40"]
    args += ["--impressions-per-day", "1500", "--history-days", "5", "--truth-terms"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "_world.json").read_text())["config"]["history_days"] == 5
    names = pq.read_schema(next(out.glob("dt=*/*.parquet"))).names
    assert "truth_conv_user_bias" in names and "truth_click_ad_quality" in names
