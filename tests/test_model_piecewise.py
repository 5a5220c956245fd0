"""Piecewise-linear encoding of scalars (model/piecewise.py) and where the model uses it."""

from __future__ import annotations

import pytest
import torch

from dhen_cvr.data.synth import WorldConfig, world_spec
from dhen_cvr.model.config import ModelConfig
from dhen_cvr.model.cvr_model import CVRModel
from dhen_cvr.model.dhen import DHENConfig
from dhen_cvr.model.piecewise import PiecewiseLinearEncoding
from dhen_cvr.model.sequence import SequenceConfig


def _naive(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin ``t`` covers ``[t / T, (t + 1) / T]``: 0 below it, 1 above, linear inside."""
    out = torch.zeros(*x.shape, bins, dtype=torch.float64)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in x.shape)).tolist():
        value = float(x[tuple(index)])
        for t in range(bins):
            lo, hi = t / bins, (t + 1) / bins
            out[(*index, t)] = 0.0 if value <= lo else 1.0 if value >= hi else (value - lo) * bins
    return out.flatten(-2)


@pytest.mark.parametrize("bins", [1, 3, 8])
def test_encoding_matches_a_naive_loop(bins: int) -> None:
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(bins))
    x[0, 0], x[1, 1], x[2, 2] = 0.0, 1.0, 0.5
    encoded = PiecewiseLinearEncoding(bins)(x)
    assert encoded.shape == (5, 4 * bins)
    torch.testing.assert_close(encoded.double(), _naive(x, bins), rtol=0, atol=1e-6)
    # the value is recoverable linearly: mean of its bins
    torch.testing.assert_close(encoded.view(5, 4, bins).mean(-1), x, rtol=0, atol=1e-6)


def test_encoding_rejects_zero_bins() -> None:
    with pytest.raises(ValueError, match="num_bins"):
        PiecewiseLinearEncoding(0)


def _model(**overrides: object) -> CVRModel:
    spec = world_spec(WorldConfig(max_seq_len=8))
    sequence = SequenceConfig(
        d_model=8, layers=1, heads=2, ffn=16, target_heads=2, tokens=["last", "match"]
    )
    overrides.setdefault("sequence", sequence)
    config = ModelConfig(
        dim=8,
        embedding_dim=8,
        ssl_dim=8,
        dhen=DHENConfig.model_validate({"layers": [{"modules": [{"name": "mlp"}]}]}),
        head_hidden=[8],
        **overrides,  # type: ignore[arg-type]
    )
    return CVRModel(spec, config)


def test_dense_tokens_and_bins_shape_the_tokenizer() -> None:
    grouped, per_feature = _model(), _model(dense_tokens="feature", dense_bins=4)
    n_dense = len(grouped.spec.dense)
    assert len(per_feature.features.dense_groups) == n_dense > len(grouped.features.dense_groups)
    assert all(p.in_features == 4 for p in per_feature.features.dense_proj)  # type: ignore[union-attr]
    assert per_feature.token_names[:n_dense] == [f"dense:{f.name}" for f in grouped.spec.dense]


def test_match_bins_widen_the_match_projection() -> None:
    plain = _model().sequences.tower("match").match
    sequence = SequenceConfig(
        d_model=8, layers=1, heads=2, ffn=16, target_heads=2, tokens=["last", "match"], match_bins=5
    )
    binned = _model(sequence=sequence).sequences.tower("match").match
    assert plain is not None and binned is not None
    assert binned.proj.in_features == 5 * plain.proj.in_features
