"""Sequence encoders: causality, padding, empty rows, target attention, MLM, truncation."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch

from dhen_cvr.data.batch import SequenceBatch
from dhen_cvr.model.output import SequenceEncoding
from dhen_cvr.model.sequence import (
    SequenceConfig,
    SequenceEncoders,
    TargetAttentionPooling,
    recent_window,
)
from dhen_cvr.model.tokens import EmbeddingTables
from helpers_model import random_batch, tiny_spec

D = 8


def _encoders(**config: Any) -> tuple[EmbeddingTables, SequenceEncoders]:
    torch.manual_seed(0)
    spec = tiny_spec()
    tables = EmbeddingTables(spec, default_dim=D)
    cfg = SequenceConfig(d_model=16, layers=2, heads=2, ffn=32, **config)
    return tables, SequenceEncoders(spec.sequences, tables, cfg, dim=D, ssl_dim=6).eval()


def _run(
    tables: EmbeddingTables,
    enc: SequenceEncoders,
    seqs: dict[str, SequenceBatch],
    mlm: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, SequenceEncoding]]:
    B = next(iter(seqs.values())).mask.shape[0]
    query = torch.linspace(-1, 1, B * D).view(B, D)
    tokens, encodings = enc(tables, seqs, query, mlm)
    assert tokens is not None
    return tokens, encodings


def _full_rows(seq: SequenceBatch) -> SequenceBatch:
    B, T = seq.mask.shape
    return replace(seq, mask=torch.ones(B, T, dtype=torch.bool), lengths=torch.full((B,), T))


def _with_ids_changed_after(seq: SequenceBatch, t: int) -> SequenceBatch:
    ids = {k: v.clone() for k, v in seq.ids.items()}
    for v in ids.values():
        v[:, t + 1 :] = (v[:, t + 1 :] % 3) + 1  # different real ids
    time = seq.time.clone()
    time[:, t + 1 :] += 1.0
    return replace(seq, ids=ids, time=time)


def test_causal_output_at_t_ignores_later_items() -> None:
    tables, enc = _encoders()
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=10, seed=1, empty_rows=())
    seqs = {k: _full_rows(v) for k, v in batch.sequences.items()}
    t = 5
    _, before = _run(tables, enc, seqs)
    _, after = _run(tables, enc, {k: _with_ids_changed_after(v, t) for k, v in seqs.items()})
    for name in seqs:
        torch.testing.assert_close(before[name].hidden[:, : t + 1], after[name].hidden[:, : t + 1])
        assert not torch.allclose(before[name].hidden[:, t + 1 :], after[name].hidden[:, t + 1 :])


def test_bidirectional_output_at_t_sees_later_items() -> None:
    tables, enc = _encoders(causal=False)
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=10, seed=1, empty_rows=())
    seqs = {k: _full_rows(v) for k, v in batch.sequences.items()}
    _, before = _run(tables, enc, seqs)
    _, after = _run(tables, enc, {k: _with_ids_changed_after(v, 5) for k, v in seqs.items()})
    for name in seqs:
        assert not torch.allclose(before[name].hidden[:, :6], after[name].hidden[:, :6])


@pytest.mark.parametrize("causal", [True, False])
def test_padding_never_leaks_into_valid_positions(causal: bool) -> None:
    """Same items, more padding and garbage ids under the padding: same valid outputs."""
    tables, enc = _encoders(causal=causal, tokens=["last", "target_attention", "mean"])
    batch = random_batch(tiny_spec(), batch_size=5, seq_len=8, seed=2, empty_rows=(1,))
    padded: dict[str, SequenceBatch] = {}
    for name, s in batch.sequences.items():
        B = s.mask.shape[0]
        extra = 4
        ids = {k: torch.cat([v, torch.zeros(B, extra, dtype=v.dtype)], 1) for k, v in s.ids.items()}
        mask = torch.cat([s.mask, torch.zeros(B, extra, dtype=torch.bool)], 1)
        for v in ids.values():
            v.masked_fill_(~mask, 2)  # garbage that is not the padding id
        time = torch.cat([s.time, torch.full((B, extra, 2), 7.0)], 1)
        padded[name] = SequenceBatch(ids=ids, time=time, mask=mask, lengths=s.lengths)
    tok_a, enc_a = _run(tables, enc, batch.sequences)
    tok_b, enc_b = _run(tables, enc, padded)
    torch.testing.assert_close(tok_a, tok_b)
    for name, e in enc_a.items():
        valid = e.mask
        torch.testing.assert_close(e.hidden[valid], enc_b[name].hidden[:, :8][valid])


@pytest.mark.parametrize("causal", [True, False])
def test_empty_rows_and_all_padding_batches_are_finite_and_learnable(causal: bool) -> None:
    tables, enc = _encoders(causal=causal, tokens=["last", "target_attention", "mean"])
    spec = tiny_spec()
    batch = random_batch(spec, batch_size=4, seq_len=6, seed=3, empty_rows=(0, 2))
    tokens, encodings = _run(tables, enc, batch.sequences)
    assert torch.isfinite(tokens).all()
    assert all(torch.isfinite(e.hidden).all() for e in encodings.values())
    # an empty row's tokens are the learned "empty" vectors, projected
    for s, name in enumerate(enc.towers):
        tower = enc.tower(name)
        want = tower.token_proj(tower.empty)
        torch.testing.assert_close(tokens[0, 3 * s : 3 * s + 3], want)
        torch.testing.assert_close(tokens[2, 3 * s : 3 * s + 3], want)

    empty = random_batch(spec, batch_size=3, seq_len=6, seed=4, all_empty=True)
    tokens, encodings = _run(tables, enc, empty.sequences)
    assert torch.isfinite(tokens).all()
    tokens.sum().backward()
    for name in enc.towers:
        grad = enc.tower(name).empty.grad
        assert grad is not None and torch.count_nonzero(grad) > 0

    zero_width = {
        name: SequenceBatch(
            ids={k: v[:, :0] for k, v in s.ids.items()},
            time=s.time[:, :0],
            mask=s.mask[:, :0],
            lengths=s.lengths,
        )
        for name, s in empty.sequences.items()
    }
    tokens_zero, encodings_zero = _run(tables, enc, zero_width)
    torch.testing.assert_close(tokens_zero, tokens.detach())
    assert encodings_zero["org"].hidden.shape == (3, 0, 6)


def test_target_attention_matches_a_manual_softmax() -> None:
    torch.manual_seed(0)
    pool = TargetAttentionPooling(d_model=5, query_dim=3).double()
    h = torch.randn(3, 4, 5, dtype=torch.float64)
    valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    query = torch.randn(3, 3, dtype=torch.float64)
    got = pool(h, valid, query)
    W, b = pool.query.weight.detach(), pool.query.bias.detach()
    for i in range(3):
        q = [sum(W[k, j].item() * query[i, j].item() for j in range(3)) + b[k].item()
             for k in range(5)]  # fmt: skip
        scores = [
            sum(q[k] * h[i, t, k].item() for k in range(5)) / math.sqrt(5)
            for t in range(4)
            if valid[i, t]
        ]
        z = sum(math.exp(s) for s in scores)
        weights = [math.exp(s) / z for s in scores]
        want = [sum(w * h[i, t, k].item() for t, w in enumerate(weights)) for k in range(5)]
        assert got[i].tolist() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_recent_window_keeps_the_newest_items() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([0, 3, 7, 10])
    mask = torch.arange(10)[None] < lengths[:, None]
    ids = torch.randint(1, 100, (4, 10), generator=g) * mask
    time = torch.rand(4, 10, 2, generator=g) * mask[..., None]
    mlm = torch.rand(4, 10, generator=g) < 0.5
    seq = SequenceBatch(ids={"x": ids}, time=time, mask=mask, lengths=lengths)
    cut, cut_mlm = recent_window(seq, 5, mlm)
    assert cut_mlm is not None
    assert cut.lengths.tolist() == [0, 3, 5, 5]
    for b, n in enumerate(lengths.tolist()):
        k = min(n, 5)
        assert cut.ids["x"][b, :k].tolist() == ids[b, n - k : n].tolist()
        assert cut.ids["x"][b, k:].eq(0).all()
        torch.testing.assert_close(cut.time[b, :k], time[b, n - k : n])
        assert cut_mlm[b, :k].tolist() == mlm[b, n - k : n].tolist()
        assert not cut_mlm[b, k:].any()
    same, _ = recent_window(seq, 10)
    assert same is seq


def test_model_truncates_to_max_len_cap() -> None:
    tables, enc = _encoders(max_len_cap=4)
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=10, seed=5)
    tokens, encodings = _run(tables, enc, batch.sequences)
    assert encodings["org"].hidden.shape == (4, 4, 6)
    cut = {k: recent_window(v, 4)[0] for k, v in batch.sequences.items()}
    tokens_cut, _ = _run(tables, enc, cut)
    torch.testing.assert_close(tokens, tokens_cut)


def test_mlm_replaces_masked_items_and_needs_a_bidirectional_encoder() -> None:
    tables, enc = _encoders(causal=False)
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=8, seed=6, empty_rows=())
    seqs = {k: _full_rows(v) for k, v in batch.sequences.items()}
    mlm = {k: torch.zeros(4, 8, dtype=torch.bool) for k in seqs}
    for m in mlm.values():
        m[:, 3] = True
    _, base = _run(tables, enc, seqs, mlm)
    changed = {}
    for k, v in seqs.items():
        ids = {f: x.clone() for f, x in v.ids.items()}
        for x in ids.values():
            x[:, 3] = (x[:, 3] % 2) + 1
        time = v.time.clone()
        time[:, 3] += 3.0
        changed[k] = replace(v, ids=ids, time=time)
    _, masked = _run(tables, enc, changed, mlm)
    _, unmasked = _run(tables, enc, changed)
    for name in seqs:
        torch.testing.assert_close(base[name].hidden, masked[name].hidden)
        cut_mlm = base[name].mlm_mask
        assert cut_mlm is not None and cut_mlm[:, 3].all()
        assert not torch.allclose(base[name].hidden, unmasked[name].hidden)
        assert base[name].target_ids.equal(seqs[name].ids[enc.tower(name).feature.target.name])

    tables, causal = _encoders()
    with pytest.raises(ValueError, match="causal: false"):
        _run(tables, causal, seqs, mlm)


def test_shared_encoder_has_one_transformer_and_type_embeddings() -> None:
    tables, enc = _encoders(shared=True)
    assert list(enc.encoders) == ["shared"]
    assert enc.encoder("org") is enc.encoder("ads")
    assert all(enc.tower(n).type_embedding is not None for n in enc.towers)
    tokens, _ = _run(tables, enc, random_batch(tiny_spec(), seed=7).sequences)
    assert tokens.shape == (6, 10, D) and torch.isfinite(tokens).all()


def test_recent_window_drops_items_older_than_max_age_days() -> None:
    day = 86400.0
    ages = torch.tensor(  # seconds before the request, oldest first, 0 = padding
        [[9 * day, 5 * day, 1 * day, 0.0], [2 * day, 1.5 * day, 3600.0, 60.0], [8 * day, 0, 0, 0]]
    )
    lengths = torch.tensor([3, 4, 1])
    mask = torch.arange(4)[None] < lengths[:, None]
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7], [8, 0, 0, 0]])
    time = torch.stack([torch.zeros_like(ages), torch.log1p(ages)], -1) * mask[..., None]
    seq = SequenceBatch(ids={"x": ids}, time=time, mask=mask, lengths=lengths)
    cut, _ = recent_window(seq, 3, max_age_days=7.0)
    assert cut.lengths.tolist() == [2, 3, 0]
    assert cut.ids["x"].tolist() == [[2, 3, 0], [5, 6, 7], [0, 0, 0]]
    assert cut.mask.tolist() == [[True, True, False], [True, True, True], [False] * 3]
    torch.testing.assert_close(cut.time[0, :2, 1], torch.log1p(torch.tensor([5 * day, day])))
    wide, _ = recent_window(seq, 10, max_age_days=1.75)
    assert wide.lengths.tolist() == [1, 3, 0] and wide.ids["x"].shape == (3, 4)


def test_model_with_max_age_days_ignores_older_items() -> None:
    tables, enc = _encoders(max_age_days=0.05)
    batch = random_batch(tiny_spec(), batch_size=4, seq_len=10, seed=5)
    tokens, _ = _run(tables, enc, batch.sequences)
    cut = {k: recent_window(v, 10, max_age_days=0.05)[0] for k, v in batch.sequences.items()}
    assert any(int(c.lengths.sum()) < int(batch.sequences[k].lengths.sum()) for k, c in cut.items())
    _, plain = _encoders()
    plain.load_state_dict(enc.state_dict())
    tokens_cut, _ = _run(tables, plain, cut)
    torch.testing.assert_close(tokens, tokens_cut)
