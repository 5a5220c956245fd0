"""The atomic writer leaves either a complete data set or nothing."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhen_cvr.data.folders import DATA_MARKER
from dhen_cvr.data.writer import DatasetWriter, day_dirs
from dhen_cvr.errors import DhenCvrError


def test_writer_renames_on_success(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out) as w:
        w.write_day("2026-01-02", pa.table({"x": [1, 2]}))
        w.write_day("2026-01-01", pa.table({"x": [3]}))
        w.write_day("2026-01-01", pa.table({"x": [4]}))
        assert not out.exists()
    assert [p.name for p in day_dirs(out)] == ["dt=2026-01-01", "dt=2026-01-02"]
    assert pq.read_table(out / "dt=2026-01-01").num_rows == 2
    assert list(tmp_path.iterdir()) == [out]


def test_writer_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError), DatasetWriter(out) as w:
        w.write_day("2026-01-01", pa.table({"x": [1]}))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_to_clobber_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DhenCvrError, match="pass --overwrite"), DatasetWriter(out):
        pass
    assert (out / "keep.txt").read_text() == "precious"
    # --overwrite replaces only a data set this tool wrote (its marker file)
    no_marker = pytest.raises(DhenCvrError, match=r"no \.dhen-cvr-data file")
    with no_marker, DatasetWriter(out, overwrite=True):
        pass
    assert (out / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_writer_overwrites_its_own_data_set(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with DatasetWriter(out) as w:
        w.write_day("2026-01-01", pa.table({"x": [1]}))
    assert (out / DATA_MARKER).is_file()
    (out / "dt=2026-01-01" / "stale.parquet").write_bytes(b"")
    with DatasetWriter(out, overwrite=True) as w:
        w.write_day("2026-01-02", pa.table({"x": [1]}))
    assert [p.name for p in day_dirs(out)] == ["dt=2026-01-02"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
