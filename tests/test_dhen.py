"""DHEN layer and stack: the layer equation for each ensemble vs a manual composition of its
submodules, config validation, tracing/export, and the paper's two-layer configuration."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from dhen_cvr.model.crossing import CrossingContext, count_flops
from dhen_cvr.model.dhen import DHEN, DHENConfig, DHENLayer, DHENLayerConfig

B, L, D = 4, 5, 8
CTX = CrossingContext(num_tokens=L, dim=D, candidate_index=0)
SMALL_MODULES: list[dict[str, Any]] = [
    {"name": "mlp", "hidden": [16]},
    {"name": "dcn_v2", "rank": 4},
    {"name": "fm"},
]
# Appendix A / Table 4 (module sizes as in the paper; L and D small for a fast test).
PAPER: dict[str, Any] = {
    "layers": [
        {"modules": [{"name": "mlp", "hidden": [1024]}, {"name": "transformer"}]},
        {"modules": [{"name": "mlp", "hidden": [1024]}, {"name": "masknet"}]},
    ]
}


def _layer(ensemble: str, norm: str = "layernorm", dropout: float = 0.0) -> DHENLayer:
    torch.manual_seed(0)
    config = DHENLayerConfig.model_validate({"modules": SMALL_MODULES, "ensemble": ensemble})
    layer = DHENLayer(config, CTX, norm=norm, dropout=dropout)  # type: ignore[arg-type]
    with torch.no_grad():  # move the equal-weights / zero-bias inits somewhere generic
        for param in layer.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return layer.eval()


def _manual_layer_norm(v: Tensor, norm: nn.Module) -> Tensor:
    assert isinstance(norm, nn.LayerNorm)
    mean = v.mean(dim=-1, keepdim=True)
    var = ((v - mean) ** 2).mean(dim=-1, keepdim=True)
    return (v - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def test_sum_ensemble_layer_equation() -> None:
    layer = _layer("sum")
    x = torch.randn(B, L, D)
    outs = [m(x) for m in layer.crossings]
    expected = _manual_layer_norm(outs[0] + outs[1] + outs[2] + x, layer.norm)
    torch.testing.assert_close(layer(x), expected)


def test_weighted_sum_ensemble_uses_softmax_weights() -> None:
    layer = _layer("weighted_sum")
    assert layer.ensemble_logits is not None
    x = torch.randn(B, L, D)
    outs = [m(x) for m in layer.crossings]
    logits = layer.ensemble_logits.tolist()
    total = sum(torch.exp(torch.tensor(v)) for v in logits)
    mixed = sum(torch.exp(torch.tensor(w)) / total * o for w, o in zip(logits, outs, strict=True))
    expected = _manual_layer_norm(mixed + x, layer.norm)
    torch.testing.assert_close(layer(x), expected)


def test_weighted_sum_starts_as_the_mean_of_the_modules() -> None:
    config = DHENLayerConfig.model_validate({"modules": SMALL_MODULES, "ensemble": "weighted_sum"})
    layer = DHENLayer(config, CTX, norm="none").eval()
    x = torch.randn(B, L, D)
    mean = sum(m(x) for m in layer.crossings) / 3
    torch.testing.assert_close(layer(x), mean + x)


def test_concat_ensemble_projects_the_token_axis_back_to_l() -> None:
    layer = _layer("concat")
    projection = layer.token_projection
    assert projection is not None and projection.weight.shape == (L, 3 * L)
    x = torch.randn(B, L, D)
    tokens = [t for m in layer.crossings for t in m(x).unbind(dim=1)]  # 3L tensors B x D
    mixed = torch.stack(
        [
            sum(projection.weight[row, j] * tokens[j] for j in range(3 * L)) + projection.bias[row]
            for row in range(L)
        ],
        dim=1,
    )
    expected = _manual_layer_norm(mixed + x, layer.norm)
    torch.testing.assert_close(layer(x), expected)


def test_rmsnorm_and_no_norm() -> None:
    x = torch.randn(B, L, D)
    plain = _layer("sum", norm="none")
    torch.testing.assert_close(plain(x), sum(m(x) for m in plain.crossings) + x)
    rms = _layer("sum", norm="rmsnorm")
    assert isinstance(rms.norm, nn.RMSNorm)
    z = sum(m(x) for m in rms.crossings) + x
    assert isinstance(z, Tensor)
    eps = torch.finfo(z.dtype).eps  # RMSNorm's default eps
    expected = z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + eps) * rms.norm.weight
    torch.testing.assert_close(rms(x), expected)


def test_dropout_applies_to_the_ensemble_in_training_only() -> None:
    layer = _layer("sum", norm="none", dropout=0.5)
    x = torch.randn(B, L, D)
    mixed = sum(m(x) for m in layer.crossings)
    torch.testing.assert_close(layer(x), mixed + x)  # eval: no dropout
    layer.train()
    torch.manual_seed(0)
    dropped = layer(x) - x
    kept = dropped != 0
    assert 0 < kept.float().mean() < 1
    torch.manual_seed(0)
    mixed = sum(m(x) for m in layer.crossings)
    torch.testing.assert_close(dropped[kept], 2 * mixed[kept])


def test_stack_applies_layers_in_order_and_describes_them() -> None:
    config = DHENConfig.model_validate(
        {
            "layers": [
                {"modules": SMALL_MODULES, "ensemble": "concat"},
                {"modules": [{"name": "senet"}, {"name": "din"}], "ensemble": "weighted_sum"},
                {"modules": [{"name": "hstu"}]},
            ],
            "norm": "rmsnorm",
        }
    )
    torch.manual_seed(0)
    model = DHEN(config, CTX).eval()
    assert model.describe() == [["mlp", "dcn_v2", "fm"], ["senet", "din"], ["hstu"]]
    x = torch.randn(B, L, D)
    expected = x
    for layer in model.layers:
        expected = layer(expected)
    torch.testing.assert_close(model(x), expected)
    layers = cast(list[DHENLayer], list(model.layers))
    module_flops = sum(count_flops(m, CTX) for layer in layers for m in layer.crossings)
    assert model.flops_per_example() == module_flops + 2 * L * 3 * L * D


def _paper_model(seed: int = 0) -> DHEN:
    torch.manual_seed(seed)
    return DHEN(DHENConfig.model_validate(PAPER), CTX)


def test_paper_config_gradients_reach_every_parameter() -> None:
    model = _paper_model()
    assert model.describe() == [["mlp", "transformer"], ["mlp", "masknet"]]
    x = torch.randn(B, L, D, requires_grad=True)
    y = model(x)
    assert y.shape == (B, L, D)
    (y * torch.randn_like(y)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_paper_config_is_deterministic_and_finite_on_zeros() -> None:
    x = torch.randn(B, L, D)
    torch.manual_seed(1)
    first = _paper_model(3)(x)
    torch.manual_seed(1)
    second = _paper_model(3)(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert torch.isfinite(_paper_model()(torch.zeros(B, L, D))).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_paper_config_traces_and_exports() -> None:
    model = _paper_model().eval()
    x, other = torch.randn(3, L, D), torch.randn(7, L, D)
    with torch.no_grad():
        expected = model(other)
        torch.testing.assert_close(torch.jit.trace(model, x)(other), expected)
        batch = torch.export.Dim("batch")
        exported = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
        torch.testing.assert_close(exported.module()(other), expected)


def test_paper_config_under_bfloat16_autocast() -> None:
    model = _paper_model().eval()
    x = torch.randn(B, L, D)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.isfinite(low).all()
    assert (low.float() - reference).abs().max() < 0.1  # LayerNorm'd outputs, O(1) scale


def test_config_round_trips_through_a_dict() -> None:
    config = DHENConfig.model_validate(PAPER)
    assert DHENConfig.model_validate(config.model_dump()) == config
    assert config.layers[0].ensemble == "sum" and config.norm == "layernorm"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"layers": []}, "at least 1"),
        ({"layers": [{"modules": []}]}, "at least 1"),
        ({"layers": [{"modules": [{"name": "mlp"}], "ensemble": "max"}]}, "ensemble"),
        ({"layers": [{"modules": [{"name": "mlp"}]}], "norm": "batchnorm"}, "norm"),
        ({"layers": [{"modules": [{"name": "mlp"}]}], "depth": 2}, "depth"),
        ({"layers": [{"modules": [{"name": "mlp"}], "shortcut": "linear"}]}, "shortcut"),
        ({"layers": [{"modules": [{"name": "wukong"}]}]}, "unknown crossing module 'wukong'"),
        (
            {"layers": [{"modules": [{"name": "masknet", "blocks": 0}]}]},
            "invalid params for crossing module 'masknet'",
        ),
    ],
)
def test_bad_configs_are_rejected_with_a_specific_message(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        DHENConfig.model_validate(raw)
