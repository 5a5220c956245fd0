"""The exported artefact: self-contained, served heads only, and equal to eager PyTorch
(within 1e-5, fp32) on real batches: any number of candidates or rows, any sequence
length up to the cut, empty sequences included. The request path (user side once)
equals the per-row path on the user's row repeated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dhen_cvr.data.reader import ParquetBatchStream
from dhen_cvr.model.cvr_model import ServedCVRModel, flat_inputs
from dhen_cvr.runtime import load_trained_model
from dhen_cvr.serve.artefact import (
    ServingModel,
    export_artefact,
    export_program,
    load_artefact,
    served_spec,
)
from dhen_cvr.serve.encode import encode_request
from dhen_cvr.serve.schema import RequestSchema
from dhen_cvr.train import train
from serve_world import cli, data_rows, request_from_rows, served_world
from train_world import make_world, tiny_config

# The shared run + artefact (serve_world.served_world) takes ~1-2 min to build once.
pytestmark = pytest.mark.slow

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ServingModel:
    """The artefact, copied away from the run (nothing of the run is needed to load it)."""
    copy = tmp_path_factory.mktemp("copy") / "art"
    shutil.copytree(served_world().artefact, copy)
    return load_artefact(copy)


@pytest.fixture(scope="module")
def eager() -> ServedCVRModel:
    model = load_trained_model(served_world().run).model
    return ServedCVRModel(model, probabilities=True).eval()


def _encoded(exported: ServingModel, user: int, candidates: int, empty: bool = False):
    rows = data_rows(served_world().world, 2, max(candidates, user + 1))
    body = request_from_rows(exported.spec, rows[user], rows[:candidates])
    if empty:
        body["user"]["sequences"] = {}
    schema = RequestSchema(exported.spec, 1000)
    return encode_request(exported.spec, schema.dump(schema.model.model_validate(body)))


def test_the_artefact_is_self_contained_and_serves_the_served_heads_only(
    exported: ServingModel,
) -> None:
    art = served_world().artefact
    assert sorted(p.name for p in art.iterdir()) == [
        "metadata.json",
        "request.pt2",
        "rows.pt2",
        "spec.yaml",
    ]
    meta = json.loads((art / "metadata.json").read_text())
    assert meta["heads"] == ["checkout", "add_to_cart", "signup"]  # no click (CTR) head
    assert "click" in meta["trained_heads"]
    assert meta["model_version"].startswith("step-") and meta["torch_version"] == torch.__version__
    # the served spec carries the model's cut, so requests are trimmed to what it uses
    assert {s.name: s.max_len for s in exported.spec.sequences} == meta["sequence_max_lens"]
    assert all(v == 16 for v in meta["sequence_max_lens"].values())


def test_a_tampered_artefact_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "art"
    shutil.copytree(served_world().artefact, copy)
    (copy / "spec.yaml").write_text((copy / "spec.yaml").read_text() + "\n# edited\n")
    with pytest.raises(Exception, match="does not match its sha256"):
        load_artefact(copy)


@pytest.mark.parametrize(
    ("user", "candidates", "empty"), [(3, 1, False), (0, 7, False), (5, 40, False), (2, 9, True)]
)
def test_exported_request_program_equals_eager_and_the_per_row_path(
    exported: ServingModel, eager: ServedCVRModel, user: int, candidates: int, empty: bool
) -> None:
    inputs = _encoded(exported, user, candidates, empty)
    lengths = [int(inputs[5 + 3 * i][0]) for i in range(len(exported.spec.sequences))]
    assert (max(lengths) == 0) == empty
    one_user = ServedCVRModel(eager.model, probabilities=True, one_user=True).eval()
    with torch.no_grad():
        reference = one_user(*inputs)
        # the per-row path: the user's sequences repeated on every candidate row
        n = inputs[0].shape[0]
        repeated = list(inputs[:3])
        for i in range(len(exported.spec.sequences)):
            ids, time, length = inputs[3 + 3 * i : 6 + 3 * i]
            repeated += [ids.expand(n, -1, -1), time.expand(n, -1, -1), length.expand(n)]
        per_row = eager(*repeated)
    torch.testing.assert_close(exported.request(*inputs), reference, **TOL)
    torch.testing.assert_close(reference, per_row, **TOL)
    assert reference.shape == (candidates, 3) and (reference > 0).all() and (reference < 1).all()


def test_exported_rows_program_equals_eager_on_reader_batches(
    exported: ServingModel, eager: ServedCVRModel
) -> None:
    day = sorted(served_world().world.glob("dt=*"))[1]
    spec = served_spec(eager.model)
    sizes = []
    for batch_size in (1, 37, 256):
        stream = ParquetBatchStream([day], spec, batch_size=batch_size, shuffle=False)
        batch = next(iter(stream))
        sizes.append({name: s.mask.shape[1] for name, s in batch.sequences.items()})
        inputs = flat_inputs(spec, batch)
        with torch.no_grad():
            torch.testing.assert_close(exported.rows(*inputs), eager(*inputs), **TOL)
        assert (batch.sequences["conv"].lengths == 0).any() or batch_size == 1
    assert len({tuple(s.values()) for s in sizes}) > 1  # different sequence lengths


def test_export_program_in_process_equals_eager_and_leaves_torch_settings_alone(
    eager: ServedCVRModel,
) -> None:
    """The Python API traces with the fake-tensor dispatch cache off (faster) and puts the
    setting back; the program still takes any number of rows and sequence lengths."""
    cache = torch._dynamo.config.fake_tensor_cache_enabled
    spec = served_spec(eager.model)
    program = export_program(eager, spec).module()
    assert torch._dynamo.config.fake_tensor_cache_enabled == cache
    day = sorted(served_world().world.glob("dt=*"))[2]
    for batch_size in (3, 50):
        batch = next(iter(ParquetBatchStream([day], spec, batch_size=batch_size, shuffle=False)))
        inputs = flat_inputs(spec, batch)
        with torch.no_grad():
            torch.testing.assert_close(program(*inputs), eager(*inputs), **TOL)


def test_an_esmm_run_serves_pctr_times_pcvr(tmp_path: Path) -> None:
    """ESMM: the artefact serves r sigmoid(click) sigmoid(cvr_h) / (1 - (1 - r) a_s),
    recomputed here in float64 from the trained model's raw head logits."""
    world = make_world(tmp_path / "world")
    run = tmp_path / "run"
    config = tiny_config("loss.formulation=esmm", "loss.ssl.objective=none")
    train(config, world, "1", run, show_progress=False)
    exported = load_artefact(export_artefact(run, tmp_path / "art"))
    assert json.loads((tmp_path / "art" / "metadata.json").read_text())["formulation"] == "esmm"
    trained = load_trained_model(run)
    model, heads = trained.model.eval(), list(trained.model.head_names)
    spec = served_spec(model)
    day = sorted(world.glob("dt=*"))[1]
    batch = next(iter(ParquetBatchStream([day], spec, batch_size=64, shuffle=False)))
    with torch.no_grad():
        out = model.encode(batch.dense, batch.pretrained, batch.categorical, batch.sequences)
        served = exported.rows(*flat_inputs(spec, batch)).double()
    p = torch.sigmoid(out.logits.double())
    assert out.keep_logit is not None
    a_s = torch.sigmoid(out.keep_logit.double())[:, None]
    r = spec.sampling.negative_rate
    cvr = [heads.index(h) for h in model.served_head_names]
    expected = r * p[:, cvr] * p[:, [heads.index("click")]] / (1 - (1 - r) * a_s)
    torch.testing.assert_close(served, expected, **TOL)


def test_export_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    done = cli("export", "--run", str(served_world().run), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "exists and is not empty" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "x").read_text() == "keep me"


def test_request_encoding_equals_the_training_reader(exported: ServingModel) -> None:
    """Raw ids, dense values, vectors and sequence time features of a request built from
    data rows decode exactly as the reader decodes those rows (same code, no copy)."""
    spec = exported.spec
    user, n = 4, 30
    day = sorted(served_world().world.glob("dt=*"))[1]
    batch = next(iter(ParquetBatchStream([day], spec, batch_size=n, shuffle=False)))
    inputs = _encoded(exported, user, n)
    reference = batch.select(torch.full((n,), user))
    for f in spec.categorical + spec.pretrained:
        if f.category.value == "candidate":
            parts = reference.categorical if f.role == "categorical" else reference.pretrained
            source = batch.categorical if f.role == "categorical" else batch.pretrained
            parts[f.name] = source[f.name]
    expected = flat_inputs(spec, reference)
    for got, want in zip(inputs[:3], expected[:3], strict=True):
        assert torch.equal(got, want)
    cut = False
    for i, s in enumerate(spec.sequences):
        ids, time, lengths = inputs[3 + 3 * i : 6 + 3 * i]
        want_ids, want_time, want_lengths = expected[3 + 3 * i : 6 + 3 * i]
        m = int(lengths[0])
        assert m == int(want_lengths[0])
        assert torch.equal(ids[0, :m], want_ids[0, :m]) and torch.equal(
            time[0, :m], want_time[0, :m]
        )
        cut |= m == s.max_len
    assert cut  # at least one sequence was cut to the model's newest items
