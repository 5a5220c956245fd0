"""The served inference path on plain tensors: torch.export and torch.jit.trace vs eager."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.model.cvr_model import CVRModel, ServedCVRModel
from helpers_model import SEQUENCE_NAMES, random_batch, tiny_config, tiny_spec


def _served(**sequence: Any) -> tuple[CVRModel, ServedCVRModel]:
    torch.manual_seed(0)
    spec = tiny_spec()
    n = len(spec.dense)
    stats = MinMaxStats(
        [f.name for f in spec.dense], [0.0] * n, [4.0] * n, [f.log1p for f in spec.dense]
    )
    model = CVRModel(
        spec, tiny_config(sequence={"layers": 1, **sequence}), dense_stats=stats
    ).eval()
    return model, ServedCVRModel(model).eval()


def _dynamic_shapes(sequence_lengths: bool) -> list[Any]:
    batch = torch.export.Dim("batch", min=2, max=4096)
    per_sequence: list[dict[int, torch.export.Dim]] = []
    for name in SEQUENCE_NAMES:  # every sequence has its own padded length T
        T = torch.export.Dim(f"T_{name}", min=2, max=12) if sequence_lengths else None
        seq = {0: batch, 1: T} if T is not None else {0: batch}
        per_sequence += [seq, seq, {0: batch}]
    return [{0: batch}, {0: batch}, {0: batch}, tuple(per_sequence)]


def test_flat_inputs_layout() -> None:
    model, served = _served()
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=6)
    dense, pretrained, categorical, *seqs = served.flat_inputs(batch)
    assert dense.shape == (4, 4) and pretrained.shape == (4, 6 + 4)
    assert categorical.shape == (4, 5) and categorical.dtype == torch.long
    assert len(seqs) == 3 * len(SEQUENCE_NAMES)
    ids, time, lengths = seqs[3:6]  # org: item, action
    assert ids.shape == (4, 6, 2) and time.shape == (4, 6, 2) and lengths.shape == (4,)
    eager = model(batch).logits[:, 1:]  # served heads: all but click
    torch.testing.assert_close(served(*served.flat_inputs(batch)), eager)


def test_torch_export_with_a_dynamic_batch_matches_eager() -> None:
    model, served = _served()
    batch = random_batch(tiny_spec(), batch_size=6, seq_len=9, seed=4)
    exported = torch.export.export(
        served, served.flat_inputs(batch), dynamic_shapes=_dynamic_shapes(False), strict=False
    )
    for size, seed in ((6, 4), (3, 5), (40, 6)):
        other = random_batch(tiny_spec(), batch_size=size, seq_len=9, seed=seed, empty_rows=(0,))
        torch.testing.assert_close(
            exported.module()(*served.flat_inputs(other)), model(other).logits[:, 1:]
        )


@pytest.mark.slow
@pytest.mark.parametrize("max_age_days", [None, 0.05])
def test_torch_export_with_dynamic_sequence_lengths_matches_eager(
    max_age_days: float | None,
) -> None:
    model, served = _served(max_age_days=max_age_days)
    batch = random_batch(tiny_spec(), batch_size=6, seq_len=9, seed=4)
    exported = torch.export.export(
        served, served.flat_inputs(batch), dynamic_shapes=_dynamic_shapes(True), strict=False
    )
    other = random_batch(tiny_spec(), batch_size=3, seq_len=4, seed=8, empty_rows=(0, 1))
    other.sequences["org"] = random_batch(tiny_spec(), 3, seq_len=7, seed=9).sequences["org"]
    torch.testing.assert_close(
        exported.module()(*served.flat_inputs(other)), model(other).logits[:, 1:]
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torch_jit_trace_matches_eager() -> None:
    model, served = _served()
    batch = random_batch(tiny_spec(), batch_size=6, seq_len=9, seed=4)
    traced = torch.jit.trace(served, served.flat_inputs(batch), check_trace=False)
    other = random_batch(tiny_spec(), batch_size=6, seq_len=9, seed=9, empty_rows=(2,))
    torch.testing.assert_close(traced(*served.flat_inputs(other)), model(other).logits[:, 1:])


def test_served_probabilities_undo_negative_down_sampling() -> None:
    model, served = _served()
    calibrated = ServedCVRModel(model, probabilities=True).eval()
    batch = random_batch(tiny_spec(), batch_size=5, seq_len=6, seed=3)
    inputs = served.flat_inputs(batch)
    rate = tiny_spec().sampling.negative_rate
    keep_logit = model(batch).keep_logit
    assert keep_logit is not None
    # p_h = p_s,h P(kept | x), P(kept | x) = r / (1 - (1 - r) a_s), in float64
    kept = rate / (1 - (1 - rate) * torch.sigmoid(keep_logit.double()))
    expected = (torch.sigmoid(served(*inputs).double()) * kept[:, None]).float()
    probs = calibrated(*inputs)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-7)
    assert (probs > 0).all() and (probs < 1).all()
    exported = torch.export.export(calibrated, inputs, strict=False)
    torch.testing.assert_close(exported.module()(*inputs), probs)
