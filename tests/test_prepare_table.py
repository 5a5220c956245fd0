"""prepare-table on the Ali-CCP samples and on hand-made tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dhen_cvr.cli import app
from dhen_cvr.data.mapping import map_ids
from dhen_cvr.data.prepare import TableMapping, load_preset, prepare_table
from dhen_cvr.data.spec import load_spec
from dhen_cvr.data.writer import day_dirs
from dhen_cvr.errors import DataError

ALI_CCP = Path(__file__).resolve().parents[2] / "shared" / "data" / "ali_ccp"
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def ali_ccp_files() -> list[Path]:
    files = [ALI_CCP / f"ali_ccp_{s}_sample.csv" for s in SPLITS]
    if not all(f.is_file() for f in files):
        pytest.skip(f"Ali-CCP samples not found under {ALI_CCP} (../shared/data is absent)")
    return files


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def aliccp() -> TableMapping:
    m = load_preset("aliccp")
    assert isinstance(m, TableMapping)
    return m


def test_aliccp_preset_three_files_become_three_days(
    tmp_path: Path, ali_ccp_files: list[Path]
) -> None:
    out = tmp_path / "ccp"
    report = prepare_table(ali_ccp_files, aliccp(), out)
    days = day_dirs(out)
    assert [d.name for d in days] == ["dt=2024-01-01", "dt=2024-01-02", "dt=2024-01-03"]
    spec = load_spec(out / "_spec.yaml")
    assert spec.sequences == [] and spec.user_id == "f101"
    click, purchase = spec.labels
    assert (click.name, click.serve, click.mask) == ("click", False, None)
    assert (purchase.name, purchase.mask) == ("purchase", "click")
    assert len(spec.categorical) == 23 and len(spec.dense) == 8
    total_clicks = total_purchases = 0
    for day, src in zip(days, ali_ccp_files, strict=True):
        rows = read_csv_rows(src)
        table = pq.read_table(day)
        assert table.num_rows == len(rows)
        assert set(spec.source_columns()) <= set(table.column_names)
        assert table["click"].to_pylist() == [int(r["click"]) for r in rows]
        assert table["purchase"].to_pylist() == [int(r["purchase"]) for r in rows]
        np.testing.assert_allclose(
            table["D508"].to_numpy(), [float(r["D508"]) for r in rows], rtol=1e-6
        )
        assert table["f205"].to_pylist() == [int(r["205"]) for r in rows]
        total_clicks += sum(int(r["click"]) for r in rows)
        total_purchases += sum(int(r["purchase"]) for r in rows)
    assert report.rows_read == report.examples == 200
    assert report.positives == {"click": total_clicks, "purchase": total_purchases}
    assert report.mask_rows["purchase"] == total_clicks
    # every id maps to a valid row of its (auto-sized) table
    table = pq.read_table(days[0])
    for feature in spec.categorical:
        rows = map_ids(table[feature.name], feature)
        assert rows.min() >= 1 and rows.max() <= feature.num_rows - 1


def test_entire_space_formulation_has_no_mask(tmp_path: Path, ali_ccp_files: list[Path]) -> None:
    out = tmp_path / "es"
    prepare_table(ali_ccp_files[:1], aliccp(), out, formulation="entire_space")
    assert load_spec(out / "_spec.yaml").labels[1].mask is None


def test_purchase_without_click_is_a_data_error_naming_the_row(
    tmp_path: Path, ali_ccp_files: list[Path]
) -> None:
    lines = ali_ccp_files[0].read_text().splitlines()
    header = lines[0].split(",")
    row37 = lines[37].split(",")  # data row 37 (line 38 of the file)
    row37[header.index("click")], row37[header.index("purchase")] = "0", "1"
    lines[37] = ",".join(row37)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        prepare_table([ali_ccp_files[1], bad], aliccp(), out)
    assert (err.value.column, err.value.row, err.value.file) == ("purchase", 37, str(bad))
    assert "conversion without a click" in str(err.value) and "row 37" in str(err.value)
    assert not out.exists()
    result = CliRunner().invoke(
        app, ["prepare-table", "--csv", str(bad), "--preset", "aliccp", "--out", str(out)]
    )
    assert isinstance(result.exception, DataError)


def hand_mapping() -> TableMapping:
    return TableMapping.model_validate(
        {
            "kind": "table",
            "click": "clk",
            "conversion": "buy",
            "categorical": [{"column": "ad", "category": "candidate"}],
            "dense": [{"column": "age", "category": "demographic"}],
        }
    )


@pytest.mark.parametrize(
    ("body", "column", "row", "message"),
    [
        ("1,1,a,3\n0,0,b,nan\n", "age", 2, "non-finite"),
        ("1,1,a,3\n0,0,b,\n", "age", 2, "missing"),
        ("1,2,a,3\n", "buy", 1, "0 or 1"),
    ],
)
def test_bad_values_name_file_column_and_row(
    tmp_path: Path, body: str, column: str, row: int, message: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("clk,buy,ad,age\n" + body)
    with pytest.raises(DataError, match=message) as err:
        prepare_table(path, hand_mapping(), tmp_path / "out")
    assert (err.value.column, err.value.row) == (column, row)


def test_string_ids_and_cli_start_date(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("clk,buy,ad,age\n1,1,x,3\n0,0,y,4.5\n")
    mapping_file = tmp_path / "m.yaml"
    mapping_file.write_text(
        "kind: table\nclick: clk\nconversion: buy\n"
        "categorical: [{column: ad, category: candidate}]\n"
        "dense: [{column: age, category: demographic}]\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "prepare-table",
            "--csv",
            str(path),
            "--mapping",
            str(mapping_file),
            "--out",
            str(out),
            "--start-date",
            "2025-02-28",
            "--formulation",
            "entire_space",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "dt=2025-02-28")
    assert table["ad"].to_pylist() == ["x", "y"]
    assert table["ts"].to_pylist() == [1740700800, 1740700800]  # 2025-02-28 00:00 UTC
