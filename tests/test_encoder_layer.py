"""The shared pre-norm encoder layer: the fp32 attention it uses under CPU bf16 autocast
(CPU SDPA's bf16 backward is slow) gives the fp32 layer's outputs and gradients to bf16
precision."""

from __future__ import annotations

import pytest
import torch

from dhen_cvr.model.encoder_layer import PreNormEncoderLayer


@pytest.mark.parametrize("causal", [True, False])
def test_bf16_autocast_matches_fp32(causal: bool) -> None:
    torch.manual_seed(0)
    layer = PreNormEncoderLayer(32, 4, 64, 0.0, "gelu")
    x = torch.randn(3, 10, 32)
    mask = None if causal else (torch.arange(10)[None] < torch.tensor([10, 4, 1])[:, None])
    key_mask = None if mask is None else mask[:, None, None, :]

    ref_x = x.clone().requires_grad_(True)
    ref = layer(ref_x, key_mask, causal)
    ref.sum().backward()
    ref_grad = ref_x.grad
    assert ref_grad is not None

    bf_x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(bf_x, key_mask, causal)
    out.float().sum().backward()
    assert bf_x.grad is not None
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    torch.testing.assert_close(bf_x.grad, ref_grad, rtol=0.05, atol=0.05)
