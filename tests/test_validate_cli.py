"""`dhen-cvr validate`: a clean synthetic world passes; a corrupted value is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from dhen_cvr.cli import app
from dhen_cvr.data.synth import WorldConfig, synthesize


def test_validate_accepts_clean_data_and_names_a_bad_row(tmp_path: Path) -> None:
    root = tmp_path / "world"
    synthesize(root, WorldConfig(days=2, users=150, impressions_per_day=3000, seed=3))
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(root)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output

    part = sorted(root.glob("dt=*/part-*.parquet"))[-1]
    table = pq.read_table(part)
    ages = table.column("user_age").to_numpy().copy()
    ages[2] = np.nan
    table = table.set_column(table.schema.get_field_index("user_age"), "user_age", pa.array(ages))
    pq.write_table(table, part)

    bad = runner.invoke(app, ["validate", str(root)])
    assert bad.exit_code == 1
    assert part.name in bad.output and "user_age" in bad.output and "row 2" in bad.output
