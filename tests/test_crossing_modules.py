"""Contract tests run on every registered crossing module (and a few param variants).

Parametrised over ``CROSSING_MODULES.names()``, so a newly registered module is covered
without editing this file.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from dhen_cvr.model.crossing import (
    CrossingContext,
    CrossingModule,
    CrossingModuleConfig,
    build_crossing_module,
    count_flops,
)
from dhen_cvr.registry import CROSSING_MODULES

L, D = 5, 8
CONTEXTS = {
    "candidate": CrossingContext(num_tokens=L, dim=D, candidate_index=2),
    "no-candidate": CrossingContext(num_tokens=L, dim=D, candidate_index=None),
}
# Small sizes keep the default-heavy modules (transformer width 256, mlp 1024) fast anyway.
VARIANTS: list[dict[str, Any]] = [{"name": name} for name in CROSSING_MODULES.names()] + [
    {"name": "mlp", "hidden": [32, 16], "activation": "gelu", "dropout": 0.1},
    {"name": "dcn_v2", "num_layers": 3, "rank": 3},
    {"name": "dcn", "num_layers": 1},
    {"name": "masknet", "layout": "serial", "blocks": 3, "hidden": 16, "reduction_ratio": 0.5},
    {"name": "transformer", "width": 16, "heads": 2, "ffn": 32, "token_embedding": False},
    {"name": "transformer", "width": 16, "heads": 2, "ffn": 32, "dropout": 0.1},
    {"name": "senet", "gate": "relu", "reduction_ratio": 2},
    {"name": "din", "score": "dot"},
    {"name": "din", "hidden": [16, 8], "activation": "silu"},
    {"name": "hstu", "heads": 1, "qk_dim": 4, "v_dim": 6, "relative_bias": False},
]


def _variant_id(spec: dict[str, Any]) -> str:
    return "-".join(f"{v}" if k == "name" else f"{k}={v}" for k, v in spec.items())


@pytest.fixture(params=VARIANTS, ids=[_variant_id(v) for v in VARIANTS])
def spec(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(request.param)


@pytest.fixture(params=list(CONTEXTS), ids=list(CONTEXTS))
def ctx(request: pytest.FixtureRequest) -> CrossingContext:
    return CONTEXTS[request.param]


def _build(spec: dict[str, Any], ctx: CrossingContext, seed: int = 0) -> CrossingModule:
    torch.manual_seed(seed)
    return build_crossing_module(spec, ctx)


def test_every_registered_module_is_a_variant() -> None:
    assert {v["name"] for v in VARIANTS} == set(CROSSING_MODULES.names())
    assert {"mlp", "dcn_v2", "dcn", "masknet", "transformer", "fm", "senet", "din", "hstu"} <= set(
        CROSSING_MODULES.names()
    )


def test_output_shape_and_gradients_reach_every_parameter(
    spec: dict[str, Any], ctx: CrossingContext
) -> None:
    module = _build(spec, ctx)
    x = torch.randn(4, L, D, requires_grad=True)
    y = module(x)
    assert y.shape == (4, L, D)
    assert y.dtype == torch.float32
    # Random readout so no symmetry (e.g. a LayerNorm followed by a plain sum) zeroes a grad.
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in module.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_zero_input_gives_finite_outputs_and_gradients(
    spec: dict[str, Any], ctx: CrossingContext
) -> None:
    module = _build(spec, ctx)
    x = torch.zeros(3, L, D, requires_grad=True)
    y = module(x)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, param in module.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), name


def test_identical_outputs_under_a_seed(spec: dict[str, Any], ctx: CrossingContext) -> None:
    x = torch.randn(4, L, D)
    outputs = []
    for _ in range(2):
        module = _build(spec, ctx, seed=7)
        torch.manual_seed(3)  # dropout masks in train mode
        outputs.append(module(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    other = _build(spec, ctx, seed=8)
    if any(True for _ in other.parameters()):
        assert not torch.equal(other(x), outputs[0]), "seed does not change the init"


def test_eval_mode_is_deterministic(spec: dict[str, Any], ctx: CrossingContext) -> None:
    module = _build(spec, ctx).eval()
    x = torch.randn(4, L, D)
    torch.testing.assert_close(module(x), module(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_jit_trace_and_export_match_eager(spec: dict[str, Any], ctx: CrossingContext) -> None:
    module = _build(spec, ctx).eval()
    x = torch.randn(3, L, D)
    other_batch = torch.randn(6, L, D)
    with torch.no_grad():
        traced = torch.jit.trace(module, x)
        torch.testing.assert_close(traced(other_batch), module(other_batch))
        batch = torch.export.Dim("batch")
        exported = torch.export.export(module, (x,), dynamic_shapes={"x": {0: batch}})
        torch.testing.assert_close(exported.module()(other_batch), module(other_batch))


def test_bfloat16_autocast_matches_float32(spec: dict[str, Any], ctx: CrossingContext) -> None:
    module = _build(spec, ctx).eval()
    x = torch.randn(4, L, D)
    with torch.no_grad():
        reference = module(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = module(x)
    assert low.shape == reference.shape and torch.isfinite(low).all()
    scale = reference.abs().max().clamp_min(1e-3)
    assert (low.float() - reference).abs().max() / scale < 0.05


def test_flops_are_counted_and_do_not_change_the_training_flag(
    spec: dict[str, Any], ctx: CrossingContext
) -> None:
    module = _build(spec, ctx)
    assert module.training
    flops = module.flops_per_example()
    assert module.training
    assert flops == count_flops(module, ctx)
    if spec["name"] == "fm":
        assert flops == 0  # element-wise only
    else:
        assert flops > 0


def test_mlp_flops_are_exact() -> None:
    ctx = CONTEXTS["candidate"]
    module = build_crossing_module({"name": "mlp", "hidden": [32, 16]}, ctx)
    n = L * D
    assert module.flops_per_example() == 2 * (n * 32 + 32 * 16 + 16 * n)


def test_config_fills_defaults_and_round_trips() -> None:
    config = CrossingModuleConfig.model_validate({"name": "masknet", "hidden": 64})
    assert config.params.model_dump() == {
        "blocks": 2,
        "hidden": 64,
        "reduction_ratio": 1.0,
        "dropout": 0.005,
        "layout": "parallel",
    }
    again = CrossingModuleConfig.model_validate(config.model_dump())
    assert again.params == config.params
    assert isinstance(build_crossing_module(config, CONTEXTS["candidate"]), nn.Module)


def test_unknown_module_name_lists_the_known_names() -> None:
    with pytest.raises(ValidationError) as info:
        CrossingModuleConfig.model_validate({"name": "dcn_v3"})
    message = str(info.value)
    assert "unknown crossing module 'dcn_v3'" in message
    for name in CROSSING_MODULES.names():
        assert name in message


@pytest.mark.parametrize(
    ("spec", "detail"),
    [
        ({"name": "mlp", "hiden": [8]}, "hiden"),
        ({"name": "mlp", "hidden": []}, "hidden"),
        ({"name": "masknet", "layout": "diagonal"}, "layout"),
        ({"name": "transformer", "width": 10, "heads": 4}, "not divisible"),
        ({"name": "fm", "k": 2}, "k"),
    ],
)
def test_bad_params_name_the_module(spec: dict[str, Any], detail: str) -> None:
    with pytest.raises(ValidationError) as info:
        build_crossing_module(spec, CONTEXTS["candidate"])
    message = str(info.value)
    assert f"invalid params for crossing module {spec['name']!r}" in message
    assert detail in message


def test_context_rejects_a_candidate_outside_the_tokens() -> None:
    with pytest.raises(ValueError, match="candidate_index 5"):
        CrossingContext(num_tokens=5, dim=8, candidate_index=5)
