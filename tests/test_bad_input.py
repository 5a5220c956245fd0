"""Bad input: one clear DataError line naming the file, the column and the row."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhen_cvr.data.reader import ParquetBatchStream, make_loader
from dhen_cvr.data.validate import validate_dataset
from dhen_cvr.errors import DataError
from reader_testdata import SPEC, make_table

ROWS, GROUP = 60, 25  # the broken row sits in row group 1 to check file-level row numbers
BAD_ROW = 37


def _replace(table: pa.Table, name: str, values: pa.Array | list[object]) -> pa.Table:
    return table.set_column(
        table.schema.get_field_index(name),
        name,
        pa.array(values) if isinstance(values, list) else values,
    )


def _with(
    name: str, edit: Callable[[list[object]], None], type_: pa.DataType | None = None
) -> Callable[[pa.Table], pa.Table]:
    def apply(table: pa.Table) -> pa.Table:
        values = table.column(name).to_pylist()
        edit(values)
        return _replace(table, name, pa.array(values, type_ or table.schema.field(name).type))

    return apply


def _set(i: int, value: object) -> Callable[[list[object]], None]:
    def edit(values: list[object]) -> None:
        values[i] = value

    return edit


def _unsorted(values: list[object]) -> None:
    values[BAD_ROW] = [1_600_000_000, 1_500_000_000]


def _negative(values: list[object]) -> None:
    values[BAD_ROW] = [-5, 10]


def _future(values: list[object]) -> None:
    values[BAD_ROW] = [1_600_000_000, 1_900_000_000]


def _two_items(values: list[object]) -> None:
    values[BAD_ROW] = [1_600_000_000, 1_600_000_001]


def _three_ids(values: list[object]) -> None:
    values[BAD_ROW] = [1, 2, 3]


def _both(*edits: Callable[[pa.Table], pa.Table]) -> Callable[[pa.Table], pa.Table]:
    def apply(table: pa.Table) -> pa.Table:
        for e in edits:
            table = e(table)
        return table

    return apply


# (id, edit of a good table, column named, row named (None: no row), message fragment)
CASES: list[tuple[str, Callable[[pa.Table], pa.Table], str, int | None, str]] = [
    ("missing", lambda t: t.drop_columns(["n_clicks"]), "n_clicks", None, "missing column"),
    (
        "string-in-dense",
        lambda t: _replace(t, "age", [str(v) for v in t.column("age").to_pylist()]),
        "age",
        None,
        "expected a number",
    ),
    (
        "non-list-sequence",
        lambda t: _replace(t, "clicks_item", list(range(t.num_rows))),
        "clicks_item",
        None,
        "expected a list of ids",
    ),
    (
        "nan-dense",
        _with("age", _set(BAD_ROW, float("nan"))),
        "age",
        BAD_ROW,
        "NaN in a dense feature",
    ),
    (
        "inf-dense",
        _with("age", _set(BAD_ROW, float("inf"))),
        "age",
        BAD_ROW,
        "inf in a dense feature",
    ),
    ("null-dense", _with("n_clicks", _set(BAD_ROW, None)), "n_clicks", BAD_ROW, "null value"),
    (
        "ragged-vector",
        _with("user_emb", _set(BAD_ROW, [1.0, 2.0, 3.0])),
        "user_emb",
        BAD_ROW,
        "ragged pretrained",
    ),
    (
        "unsorted-ts",
        _both(
            _with("clicks_ts", _unsorted),
            _with("clicks_item", _set(BAD_ROW, [1, 2])),
            _with("clicks_action", _set(BAD_ROW, [1, 2])),
        ),
        "clicks_ts",
        BAD_ROW,
        "not in ascending order",
    ),
    (
        "negative-ts",
        _both(
            _with("clicks_ts", _negative),
            _with("clicks_item", _set(BAD_ROW, [1, 2])),
            _with("clicks_action", _set(BAD_ROW, [1, 2])),
        ),
        "clicks_ts",
        BAD_ROW,
        "negative timestamp",
    ),
    (
        "future-ts",
        _both(
            _with("clicks_ts", _future),
            _with("clicks_item", _set(BAD_ROW, [1, 2])),
            _with("clicks_action", _set(BAD_ROW, [1, 2])),
        ),
        "clicks_ts",
        BAD_ROW,
        "at or after the request time",
    ),
    (
        "field-length",
        _both(
            _with("clicks_ts", _two_items),
            _with("clicks_item", _three_ids),
            _with("clicks_action", _set(BAD_ROW, [1, 2])),
        ),
        "clicks_item",
        BAD_ROW,
        "3 items but timestamp column",
    ),
    ("label-range", _with("click", _set(BAD_ROW, 2)), "click", BAD_ROW, "outside [0, 1]"),
    (
        "inclusion-range",
        _with("incl", _set(BAD_ROW, 0.0)),
        "incl",
        BAD_ROW,
        "inclusion probability 0.0",
    ),
]


def _expect(err: DataError | str, path: Path, column: str, row: int | None, fragment: str) -> None:
    text = str(err)
    assert "\n" not in text
    assert str(path) in text and f"column {column!r}" in text and fragment in text, text
    if row is not None:
        assert f"row group {row // GROUP}" in text and re.search(rf"\brow {row}\b", text), text


@pytest.mark.parametrize(
    ("case", "edit", "column", "row", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_column_is_named_with_file_and_row(
    tmp_path: Path,
    case: str,
    edit: Callable[[pa.Table], pa.Table],
    column: str,
    row: int | None,
    fragment: str,
) -> None:
    path = tmp_path / "dt=2024-01-01" / "part-00000.parquet"
    path.parent.mkdir()
    pq.write_table(edit(make_table(ROWS, seed=1)), path, row_group_size=GROUP)
    with pytest.raises(DataError) as info:
        stream = ParquetBatchStream([path.parent], SPEC, batch_size=16, shuffle=False)
        for _ in stream:
            pass
    _expect(info.value, path, column, row, fragment)
    report = validate_dataset([path.parent], SPEC)
    assert not report.ok and report.files == 1
    _expect(report.errors[0], path, column, row, fragment)


def test_worker_errors_keep_their_one_line_message(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(
        _with("age", _set(BAD_ROW, float("nan")))(make_table(ROWS, seed=1)),
        path,
        row_group_size=GROUP,
    )
    stream = ParquetBatchStream([path], SPEC, batch_size=16)
    with pytest.raises(DataError) as info:
        list(make_loader(stream, num_workers=1))
    _expect(info.value, path, "age", BAD_ROW, "NaN in a dense feature")


def test_empty_corrupt_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    pq.write_table(make_table(0, seed=0), empty)
    corrupt = tmp_path / "corrupt.parquet"
    good = tmp_path / "good.parquet"
    pq.write_table(make_table(10, seed=0), good)
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.parquet"
    text.write_text("this is not parquet")
    for path, fragment in (
        (empty, "empty Parquet file"),
        (corrupt, "not a readable Parquet"),
        (text, "not a readable Parquet"),
    ):
        with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + fragment):
            ParquetBatchStream([path], SPEC, batch_size=4)
    with pytest.raises(DataError, match="no such file or folder"):
        ParquetBatchStream([tmp_path / "nope"], SPEC, batch_size=4)
    (tmp_path / "void").mkdir()
    with pytest.raises(DataError, match="no Parquet files"):
        ParquetBatchStream([tmp_path / "void"], SPEC, batch_size=4)


def test_validate_dataset_reports_every_problem_and_passes_good_data(tmp_path: Path) -> None:
    good = make_table(ROWS, seed=2)
    pq.write_table(good, tmp_path / "a.parquet", row_group_size=GROUP)
    report = validate_dataset([tmp_path], SPEC)
    assert report.ok and (report.files, report.row_groups, report.rows) == (1, 3, ROWS)
    bad = _with("age", _set(3, float("nan")))(_with("user_emb", _set(BAD_ROW, [1.0]))(good))
    pq.write_table(bad, tmp_path / "b.parquet", row_group_size=GROUP)
    (tmp_path / "c.parquet").write_text("junk")
    report = validate_dataset([tmp_path], SPEC)
    text = report.summary()
    assert len(report.errors) == 3 and "3 problem(s)" in text
    assert "b.parquet, row group 0, column 'age', row 3: NaN" in text
    assert f"b.parquet, row group 1, column 'user_emb', row {BAD_ROW}: ragged" in text
    assert "c.parquet: not a readable Parquet" in text
