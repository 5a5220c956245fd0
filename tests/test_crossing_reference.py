"""Crossing modules vs independent references: the papers' formulas in float64 numpy with
explicit loops over examples (and layers / token pairs), using the module's weights."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dhen_cvr.model.crossing import CrossingContext, build_crossing_module
from dhen_cvr.model.crossing.dcn import DCNCrossing
from dhen_cvr.model.crossing.dcn_v2 import DCNv2Crossing, LowRankCrossLayer
from dhen_cvr.model.crossing.din import DINCrossing
from dhen_cvr.model.crossing.hstu import HSTUCrossing
from dhen_cvr.model.crossing.masknet import MaskBlock, MaskNetCrossing
from dhen_cvr.model.crossing.senet import SENetCrossing
from dhen_cvr.model.crossing.transformer import TransformerCrossing
from dhen_cvr.model.encoder_layer import PreNormEncoderLayer

B, L, D = 3, 4, 5
N = L * D


def _np(t: Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _build(spec: dict[str, Any], candidate_index: int | None = 1) -> nn.Module:
    torch.manual_seed(0)
    module = build_crossing_module(spec, CrossingContext(L, D, candidate_index))
    return module.double().eval()


def _perturb(module: nn.Module) -> None:
    """Move zero-initialised parameters (biases, rab) off zero so they are exercised."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def _inputs() -> Tensor:
    return torch.randn(B, L, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _linear(layer: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias (zeros when absent) of an ``nn.Linear``."""
    assert isinstance(layer, nn.Linear)
    bias = np.zeros(layer.out_features) if layer.bias is None else _np(layer.bias)
    return _np(layer.weight), bias


def _relu(v: np.ndarray) -> np.ndarray:
    return np.maximum(v, 0.0)


def _layer_norm(v: np.ndarray, norm: nn.LayerNorm) -> np.ndarray:
    mean, var = v.mean(), v.var()
    return (v - mean) / math.sqrt(var + norm.eps) * _np(norm.weight) + _np(norm.bias)


def _mlp(v: np.ndarray, layers: nn.Sequential) -> np.ndarray:
    """Apply a Linear/ReLU/SiLU stack to one vector."""
    for layer in layers:
        if isinstance(layer, nn.Linear):
            weight, bias = _linear(layer)
            v = weight @ v + bias
        elif isinstance(layer, nn.ReLU):
            v = _relu(v)
        elif isinstance(layer, nn.Sequential):
            v = _mlp(v, layer)
        else:
            raise AssertionError(f"unexpected layer {layer}")
    return v


def test_dcn_v2_matches_the_cross_formula() -> None:
    module = _build({"name": "dcn_v2", "num_layers": 3, "rank": 4})
    assert isinstance(module, DCNv2Crossing)
    _perturb(module)
    x = _inputs()
    expected = np.zeros((B, N))
    for b in range(B):
        x0 = _np(x[b]).reshape(N)
        xl = x0
        for layer in cast(list[LowRankCrossLayer], list(module.cross_layers)):
            (u, bias), (v, _) = _linear(layer.up), _linear(layer.down)
            assert u.shape == (N, 4) and v.shape == (4, N)
            xl = x0 * (u @ (v @ xl) + bias) + xl
        expected[b] = xl
    np.testing.assert_allclose(_np(module(x)), expected.reshape(B, L, D), rtol=1e-10, atol=1e-12)


def test_dcn_v2_initialisation_is_xavier_normal_with_zero_bias() -> None:
    torch.manual_seed(0)
    n_tokens, dim = 16, 32  # N = 512, default rank N // 4 = 128
    module = build_crossing_module({"name": "dcn_v2"}, CrossingContext(n_tokens, dim))
    assert isinstance(module, DCNv2Crossing)
    layer = cast(LowRankCrossLayer, module.cross_layers[0])
    assert layer.down.weight.shape == (128, 512) and layer.up.weight.shape == (512, 128)
    assert torch.count_nonzero(layer.up.bias) == 0
    expected_std = math.sqrt(2.0 / (512 + 128))
    assert abs(layer.down.weight.std().item() / expected_std - 1) < 0.05


def test_dcn_v1_matches_the_cross_formula() -> None:
    module = _build({"name": "dcn", "num_layers": 3})
    assert isinstance(module, DCNCrossing)
    _perturb(module)
    x = _inputs()
    expected = np.zeros((B, N))
    for b in range(B):
        x0 = _np(x[b]).reshape(N)
        xl = x0
        for layer in range(3):
            w, bias = _np(module.weight[layer]), _np(module.bias[layer])
            xl = x0 * float(xl @ w) + bias + xl
        expected[b] = xl
    np.testing.assert_allclose(_np(module(x)), expected.reshape(B, L, D), rtol=1e-10, atol=1e-12)


def test_fm_matches_the_naive_double_sum_over_token_pairs() -> None:
    module = _build({"name": "fm"})
    x = _inputs()
    out = _np(module(x))
    v = _np(x)
    for b in range(B):
        fm = np.zeros(D)
        per_token = np.zeros((L, D))
        for i in range(L):
            for j in range(L):
                if i < j:
                    fm += v[b, i] * v[b, j]
                if i != j:
                    per_token[i] += v[b, i] * v[b, j]
        np.testing.assert_allclose(out[b], per_token, rtol=1e-10, atol=1e-12)
        # Summed over tokens, the output is twice DeepFM's second-order term.
        np.testing.assert_allclose(out[b].sum(axis=0), 2 * fm, rtol=1e-10, atol=1e-12)
        square_of_sum = 0.5 * (v[b].sum(axis=0) ** 2 - (v[b] ** 2).sum(axis=0))
        np.testing.assert_allclose(fm, square_of_sum, rtol=1e-10, atol=1e-12)


def _mask_block_reference(block: MaskBlock, emb: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """MaskNet eq. 5 (instance-guided mask) and eq. 10 (MaskBlock), one example."""
    (w1, b1), (w2, b2) = _linear(block.mask[0]), _linear(block.mask[2])
    mask = w2 @ _relu(w1 @ emb + b1) + b2
    z = _np(block.hidden.weight) @ (mask * hidden)
    return _relu(_layer_norm(z, block.norm))


def test_mask_block_matches_the_masknet_equations() -> None:
    torch.manual_seed(0)
    block = MaskBlock(emb_dim=N, in_dim=7, out_dim=6, aggregation_dim=9, dropout=0.3)
    block = block.double().eval()
    _perturb(block)
    emb = _np(_inputs().flatten(1))
    hidden = np.random.default_rng(0).normal(size=(B, 7))
    out = _np(block(torch.from_numpy(emb), torch.from_numpy(hidden)))
    for b in range(B):
        expected = _mask_block_reference(block, emb[b], hidden[b])
        np.testing.assert_allclose(out[b], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layout", ["parallel", "serial"])
def test_masknet_layouts_compose_blocks_as_in_the_paper(layout: str) -> None:
    module = _build(
        {"name": "masknet", "layout": layout, "blocks": 3, "hidden": 6, "reduction_ratio": 0.5}
    )
    assert isinstance(module, MaskNetCrossing)
    _perturb(module)
    x = _inputs()
    out = _np(module(x))
    proj_w, proj_b = _linear(module.project)
    blocks = cast(list[MaskBlock], list(module.blocks))
    for b in range(B):
        emb = _np(x[b]).reshape(N)
        # Field-wise LayerNorm: each token normalised over D, one shared LayerNorm.
        normed = np.concatenate([_layer_norm(_np(x[b, i]), module.field_norm) for i in range(L)])
        if layout == "serial":
            h = normed
            for block in blocks:
                h = _mask_block_reference(block, emb, h)
        else:
            h = np.concatenate([_mask_block_reference(blk, emb, normed) for blk in blocks])
        expected = (proj_w @ h + proj_b).reshape(L, D)
        np.testing.assert_allclose(out[b], expected, rtol=1e-10, atol=1e-12)


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


@pytest.mark.parametrize("candidate_index", [1, None])
@pytest.mark.parametrize("score", ["mlp", "dot"])
def test_din_matches_a_manual_softmax(score: str, candidate_index: int | None) -> None:
    module = _build({"name": "din", "score": score, "hidden": [6]}, candidate_index)
    assert isinstance(module, DINCrossing)
    _perturb(module)
    x = _inputs()
    out = _np(module(x))
    for b in range(B):
        t = _np(x[b])
        if candidate_index is None:
            assert module.query is not None
            c = _np(module.query)
        else:
            c = t[candidate_index]
        scores = np.zeros(L)
        for i in range(L):
            if score == "dot":
                scores[i] = t[i] @ c / math.sqrt(D)
            else:
                assert module.scorer is not None
                scores[i] = _mlp(np.concatenate([t[i], c, t[i] - c, t[i] * c]), module.scorer)[0]
        weights = _softmax(scores)
        expected = L * weights[:, None] * t
        np.testing.assert_allclose(out[b], expected, rtol=1e-10, atol=1e-12)


def test_senet_matches_squeeze_excitation() -> None:
    module = _build({"name": "senet", "reduction_ratio": 2})
    assert isinstance(module, SENetCrossing)
    _perturb(module)
    x = _inputs()
    out = _np(module(x))
    for b in range(B):
        z = _np(x[b]).mean(axis=1)
        a = 1.0 / (1.0 + np.exp(-_mlp(z, module.excite)))
        np.testing.assert_allclose(out[b], _np(x[b]) * a[:, None], rtol=1e-10, atol=1e-12)


def _silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def test_hstu_matches_pointwise_aggregated_attention() -> None:
    heads, dqk, dv = 2, 3, 4
    module = _build({"name": "hstu", "heads": heads, "qk_dim": dqk, "v_dim": dv})
    assert isinstance(module, HSTUCrossing)
    _perturb(module)
    assert module.rab is not None
    x = _inputs()
    out = _np(module(x))
    (w1, b1), (w2, b2) = _linear(module.f1), _linear(module.f2)
    rab = _np(module.rab)
    for b in range(B):
        proj = _silu(_np(x[b]) @ w1.T + b1)  # L x (2 H dv + 2 H dqk)
        u = proj[:, : heads * dv]
        v = proj[:, heads * dv : 2 * heads * dv]
        q = proj[:, 2 * heads * dv : 2 * heads * dv + heads * dqk]
        k = proj[:, 2 * heads * dv + heads * dqk :]
        mixed = np.zeros((L, heads * dv))
        for h in range(heads):
            qh, kh, vh = q[:, h * dqk : (h + 1) * dqk], k[:, h * dqk : (h + 1) * dqk], v
            for i in range(L):
                for j in range(L):
                    a = _silu(qh[i] @ kh[j] / math.sqrt(dqk) + rab[h, i, j]) / L
                    mixed[i, h * dv : (h + 1) * dv] += a * vh[j, h * dv : (h + 1) * dv]
        normed = np.stack([_layer_norm(mixed[i], module.norm) for i in range(L)])
        expected = (normed * u) @ w2.T + b2
        np.testing.assert_allclose(out[b], expected, rtol=1e-10, atol=1e-12)


def test_transformer_matches_torch_pre_norm_encoder_layers() -> None:
    width, heads, ffn = 8, 2, 12
    module = _build(
        {"name": "transformer", "width": width, "heads": heads, "ffn": ffn, "layers": 2}
    )
    assert isinstance(module, TransformerCrossing)
    _perturb(module)
    assert module.token_embedding is not None
    x = _inputs()
    h = module.project_in(x) + module.token_embedding
    for mine in cast(list[PreNormEncoderLayer], list(module.layers)):
        ref = nn.TransformerEncoderLayer(
            width, heads, ffn, dropout=0.0, batch_first=True, norm_first=True
        ).double()
        with torch.no_grad():
            ref.self_attn.in_proj_weight.copy_(mine.qkv.weight)
            ref.self_attn.in_proj_bias.copy_(mine.qkv.bias)
        for dst, src in [
            (ref.self_attn.out_proj, mine.attn_out),
            (ref.linear1, mine.ffn[0]),
            (ref.linear2, mine.ffn[3]),
            (ref.norm1, mine.attn_norm),
            (ref.norm2, mine.ffn_norm),
        ]:
            dst.load_state_dict(src.state_dict())
        h = ref.eval()(h)
    expected = module.project_out(module.final_norm(h))
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-12)
