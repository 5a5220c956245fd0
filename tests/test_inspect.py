"""inspect_dataset: per-day rows, rates, weighted oracle AUCs and sequence lengths equal
direct computations on the files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from dhen_cvr.data.inspect import format_report, inspect_dataset
from dhen_cvr.data.spec import SpecError
from dhen_cvr.data.synth import HEADS, WorldConfig, WorldSummary, synthesize
from dhen_cvr.errors import DataError

CONFIG = WorldConfig(users=150, days=2, impressions_per_day=8000, history_days=10, seed=5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldSummary]:
    out = tmp_path_factory.mktemp("inspect") / "world"
    return out, synthesize(out, CONFIG)


def test_report_matches_direct_computation(world: tuple[Path, WorldSummary]) -> None:
    out, summary = world
    report = inspect_dataset(out)
    assert report.heads == list(HEADS)
    assert report.population_source == "_world.json"
    assert [d.day for d in report.days] == CONFIG.day_names
    for day, stats in zip(report.days, summary.days, strict=True):
        t = pq.read_table(out / f"dt={day.day}")
        assert day.rows == t.num_rows == stats.rows
        w = 1 / t["sample_rate"].to_numpy()
        for h in HEADS:
            y = t[h].to_numpy()
            assert day.sampled_rate[h] == pytest.approx(y.mean())
            assert day.population_rate[h] == pytest.approx(stats.rate(h))
            p = t[f"oracle_{h}"].to_numpy()
            assert day.oracle_roc_auc[h] == pytest.approx(roc_auc_score(y, p, sample_weight=w))
            assert day.oracle_pr_auc[h] == pytest.approx(
                average_precision_score(y, p, sample_weight=w)
            )
    lengths = np.concatenate(
        [
            pc.list_value_length(
                pq.read_table(out / f"dt={d}", columns=["match_ts"])["match_ts"]
            ).to_numpy()
            for d in CONFIG.day_names
        ]
    )
    assert report.sequence_lengths["match"]["p50"] == np.percentile(lengths, 50)
    assert report.sequence_lengths["match"]["max"] == lengths.max()
    text = format_report(report)
    assert CONFIG.day_names[0] in text and "oracle ROC-AUC" in text and "match" in text


def test_population_rates_are_estimated_without_world_json(
    world: tuple[Path, WorldSummary], tmp_path: Path
) -> None:
    out, _ = world
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "_world.json").unlink()
    report, exact = inspect_dataset(copy), inspect_dataset(out)
    assert report.population_source.startswith("estimated")
    for day, exact_day in zip(report.days, exact.days, strict=True):
        t = pq.read_table(copy / f"dt={day.day}")
        w = 1 / t["sample_rate"].to_numpy()
        expected = np.average(t["click"].to_numpy(), weights=w)
        assert day.population_rate["click"] == pytest.approx(expected)
        assert day.sampled_rate == exact_day.sampled_rate
        assert day.oracle_roc_auc == exact_day.oracle_roc_auc


def test_missing_column_and_missing_spec_are_clear_errors(
    world: tuple[Path, WorldSummary], tmp_path: Path
) -> None:
    out, _ = world
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    part = next((broken / f"dt={CONFIG.day_names[1]}").glob("*.parquet"))
    pq.write_table(pq.read_table(part).drop_columns(["match_ts"]), part)
    with pytest.raises(DataError, match=r"part-00000\.parquet.*column 'match_ts'"):
        inspect_dataset(broken)
    (broken / "_spec.yaml").unlink()
    with pytest.raises(SpecError, match=r"no _spec\.yaml .*init-spec"):
        inspect_dataset(broken)


def test_reads_row_group_by_row_group(world: tuple[Path, WorldSummary], tmp_path: Path) -> None:
    """Many small row groups give the same report as one big one."""
    out, _ = world
    split = tmp_path / "split"
    shutil.copytree(out, split)
    for part in split.glob("dt=*/*.parquet"):
        table: pa.Table = pq.read_table(part)
        pq.write_table(table, part, row_group_size=97)
        assert pq.ParquetFile(part).num_row_groups > 1
    assert inspect_dataset(split).days == inspect_dataset(out).days
