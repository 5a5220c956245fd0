"""Min-max statistics: streaming fit equals numpy on the whole data; transform and JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dhen_cvr.data.stats import MinMaxStats, fit_minmax_stats, transform_dense
from dhen_cvr.errors import DataError, DhenCvrError
from reader_testdata import SPEC, write_dataset


def test_streaming_fit_equals_numpy_over_all_rows(tmp_path: Path) -> None:
    days, table = write_dataset(tmp_path, row_group_size=17)
    stats = fit_minmax_stats(days, SPEC)
    age = table.column("age").to_numpy().astype(np.float32).astype(np.float64)
    clicks = np.log1p(table.column("n_clicks").to_numpy().astype(np.float64))
    assert stats.names == ["age", "n_clicks"] and stats.log1p == [False, True]
    np.testing.assert_array_equal(stats.minimum, [age.min(), clicks.min()])
    np.testing.assert_array_equal(stats.maximum, [age.max(), clicks.max()])
    stats.check_spec(SPEC)


def test_transform_clips_log1p_and_constant_columns() -> None:
    stats = MinMaxStats(
        ["a", "b", "c"], [0.0, 0.0, 5.0], [10.0, float(np.log1p(99.0)), 5.0], [False, True, False]
    )
    x = torch.tensor([[5.0, 99.0, 5.0], [-3.0, -1.0, 7.0], [20.0, 9.0, 1.0]])
    y = transform_dense(x, stats)
    want = np.array(
        [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, np.log1p(9.0) / np.log1p(99.0), 0.0]], np.float32
    )
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6, atol=1e-7)
    assert y.dtype == torch.float32


def test_json_round_trip_and_spec_mismatch(tmp_path: Path) -> None:
    stats = MinMaxStats(["age", "n_clicks"], [18.0, 0.0], [80.0, 6.2], [False, True])
    stats.to_json(tmp_path / "stats.json")
    back = MinMaxStats.from_json(tmp_path / "stats.json")
    assert back == stats and MinMaxStats.from_dict(stats.to_dict()) == stats
    with pytest.raises(DhenCvrError, match="dense features"):
        MinMaxStats(["age"], [0.0], [1.0], [False]).check_spec(SPEC)
    (tmp_path / "bad.json").write_text('{"names": ["a"]}')
    with pytest.raises(DhenCvrError, match="invalid min-max stats"):
        MinMaxStats.from_json(tmp_path / "bad.json")


def test_fit_rejects_nan_with_file_column_and_row(tmp_path: Path) -> None:
    days, table = write_dataset(tmp_path, files_per_day=(1,), rows_per_file=50, row_group_size=20)
    age = table.column("age").to_numpy().copy()
    age[33] = np.nan
    bad = table.set_column(table.schema.get_field_index("age"), "age", [age])
    path = days[0] / "part-00000.parquet"
    pq.write_table(bad, path, row_group_size=20)
    with pytest.raises(
        DataError, match=r"part-00000.parquet, row group 1, column 'age', row 33: NaN in a dense"
    ):
        fit_minmax_stats(days, SPEC)
