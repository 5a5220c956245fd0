"""``dhen-cvr predict``: Parquet -> Parquet batch scoring, from a run (eager) or an
exported artefact, keeping the chosen id columns, in input order; unlabeled data works."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dhen_cvr.data.reader import ParquetBatchStream
from dhen_cvr.model.cvr_model import ServedCVRModel, flat_inputs
from dhen_cvr.runtime import load_trained_model
from dhen_cvr.serve.artefact import served_spec
from dhen_cvr.serve.predict import predict
from serve_world import cli, served_world

# The shared run + artefact (serve_world.served_world) takes ~1-2 min to build once.
pytestmark = pytest.mark.slow

HEADS = ["checkout", "add_to_cart", "signup"]


def _read(folder: Path) -> pa.Table:
    """Every part file of a day-partitioned folder, in order."""
    return pa.concat_tables(pq.read_table(f) for f in sorted(folder.glob("dt=*/*.parquet")))


def _reference(days: list[Path]) -> np.ndarray:
    """Eager ServedCVRModel on the training reader's batches, file order."""
    model = load_trained_model(served_world().run).model
    served = ServedCVRModel(model, probabilities=True).eval()
    spec = served_spec(model)
    out = []
    for day in days:
        for batch in ParquetBatchStream([day], spec, batch_size=500, shuffle=False):
            with torch.no_grad():
                out.append(served(*flat_inputs(spec, batch)).numpy())
    return np.concatenate(out)


def test_predict_from_the_artefact_equals_the_run_and_the_reader(tmp_path: Path) -> None:
    world = served_world()
    done = cli(
        "predict",
        "--artefact",
        str(world.artefact),
        "--data",
        str(world.world),
        "--days",
        "2-3",
        "--out",
        str(tmp_path / "pred"),
        "--keep",
        "user_id,ts,ad_id",
        "--batch-size",
        "300",
    )
    assert done.returncode == 0, done.stderr
    eager = predict(world.world, "2-3", tmp_path / "eager", run=world.run, keep=["user_id", "ts"])
    days = sorted(world.world.glob("dt=*"))[1:]
    source = pa.concat_tables(pq.read_table(d) for d in days)
    exported = _read(tmp_path / "pred")
    assert exported.column_names == ["user_id", "ts", "ad_id"] + [f"p_{h}" for h in HEADS]
    assert exported.num_rows == source.num_rows == sum(eager["rows"].values())
    for column in ("user_id", "ts", "ad_id"):  # input order kept
        assert exported.column(column).to_pylist() == source.column(column).to_pylist()
    p_art = np.stack([exported.column(f"p_{h}").to_numpy() for h in HEADS], 1)
    from_run = _read(tmp_path / "eager")
    p_run = np.stack([from_run.column(f"p_{h}").to_numpy() for h in HEADS], 1)
    np.testing.assert_allclose(p_art, p_run, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p_run, _reference(days), rtol=1e-5, atol=1e-7)
    summary = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert summary["heads"] == HEADS and summary["model_version"].startswith("step-")


def test_predict_scores_data_without_labels(tmp_path: Path) -> None:
    world = served_world()
    day = sorted(world.world.glob("dt=*"))[2]
    table = pq.read_table(day)
    labels = [c for c in table.column_names if c in ("click", *HEADS, "sample_rate")]
    unlabeled = tmp_path / "data" / day.name
    unlabeled.mkdir(parents=True)
    pq.write_table(table.drop_columns(labels), unlabeled / "part-00000.parquet")
    predict(tmp_path / "data", "1", tmp_path / "pred", run=world.run)
    labeled = predict(world.world, "3", tmp_path / "pred-labeled", run=world.run)
    a, b = _read(tmp_path / "pred"), _read(tmp_path / "pred-labeled")
    assert sum(labeled["rows"].values()) == a.num_rows
    assert a.equals(b)


def test_predict_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    world = served_world()
    done = cli(
        "predict",
        "--run",
        str(world.run),
        "--data",
        str(world.world),
        "--days",
        "3",
        "--out",
        str(tmp_path / "pred"),
        "--keep",
        "no_such_column",
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no_such_column" in done.stderr and not (tmp_path / "pred").exists()
    day = sorted(world.world.glob("dt=*"))[2]
    broken = tmp_path / "broken" / day.name
    shutil.copytree(day, broken)
    part = next(broken.glob("*.parquet"))
    pq.write_table(pq.read_table(part).drop_columns(["ad_id"]), part)
    with pytest.raises(Exception, match="ad_id"):
        predict(tmp_path / "broken", "1", tmp_path / "pred2", run=world.run)
