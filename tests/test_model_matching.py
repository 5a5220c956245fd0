"""Candidate-matched counts and gated target attention: exact values against a naive loop,
and small seeded problems whose label only counting / recency can explain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from dhen_cvr.data.batch import SequenceBatch
from dhen_cvr.data.spec import FeatureCategory
from dhen_cvr.model.matching import CandidateMatchCounts
from dhen_cvr.model.sequence import GatedTargetAttention, TargetAttentionPooling
from dhen_cvr.model.tokens import EmbeddingTables
from helpers_model import random_batch, tiny_spec

HALF_LIVES = [1.0, 24.0, 168.0]
DAY = 86400.0


def _counts(name: str, split_max_rows: int = 8) -> tuple[CandidateMatchCounts, EmbeddingTables]:
    spec = tiny_spec()
    tables = EmbeddingTables(spec, default_dim=8)
    feature = next(s for s in spec.sequences if s.name == name)
    candidates = [f for f in spec.categorical if f.category == FeatureCategory.candidate]
    module = CandidateMatchCounts(feature, candidates, tables, HALF_LIVES, split_max_rows, dim=4)
    return module, tables


def _naive(
    module: CandidateMatchCounts, seq: SequenceBatch, cands: dict[str, torch.Tensor]
) -> np.ndarray:
    """Row by row, item by item, in float64."""
    rows = []
    for b in range(seq.mask.shape[0]):
        n = int(seq.lengths[b])
        ages = [math.expm1(float(seq.time[b, t, 1])) for t in range(n)]
        item = [{f: int(v[b, t]) for f, v in seq.ids.items()} for t in range(n)]
        matches = [[True] * n] + [
            [item[t][f] == int(cands[c][b]) for t in range(n)] for f, c in module.pairs
        ]
        splits = [[True] * n] + [
            [item[t][f] == v for t in range(n)]
            for f, rows_ in module.splits
            for v in range(1, rows_)
        ]
        feats = []
        for m in matches:
            for s in splits:
                for h in HALF_LIVES:
                    total = sum(0.5 ** (ages[t] / (h * 3600)) for t in range(n) if m[t] and s[t])
                    feats.append(math.log1p(total) * 0.25)
        for m in matches[1:]:
            hit = [ages[t] for t in range(n) if m[t]]
            feats.append(min(math.log1p(min(hit)) / math.log1p(60 * DAY), 1.0) if hit else 1.0)
        rows.append(feats)
    return np.array(rows)


def _with_times(seq: SequenceBatch, seed: int) -> SequenceBatch:
    g = torch.Generator().manual_seed(seed)
    ages = torch.rand(seq.mask.shape, generator=g) * 10 * DAY
    time = seq.time.clone()
    time[..., 1] = torch.log1p(ages) * seq.mask
    return SequenceBatch(ids=seq.ids, time=time, mask=seq.mask, lengths=seq.lengths)


@pytest.mark.parametrize("name", ["ads", "match", "conv", "search"])
def test_counts_equal_a_naive_loop(name: str) -> None:
    module, _ = _counts(name)
    batch = random_batch(tiny_spec(), batch_size=7, seq_len=9, seed=2, empty_rows=(0, 3))
    seq = _with_times(batch.sequences[name], seed=5)
    cands = dict(batch.categorical)
    # force some matches so the matched features are not all zero
    for f, c in module.pairs:
        cands[c] = seq.ids[f][:, 4].clamp(min=1).clone()
    got = module.features(seq, cands).double().numpy()
    assert got.shape == (7, module.num_features)
    np.testing.assert_allclose(got, _naive(module, seq, cands), rtol=1e-5, atol=1e-6)
    if name == "search":  # a query field shares no table with the ad: counts only
        assert module.pairs == []
    else:
        assert module.pairs, "expected a field that shares a table with a candidate feature"
    assert (got[[0, 3]][:, : got.shape[1] - len(module.pairs)] == 0).all()  # empty rows


def test_pairs_and_splits_follow_the_spec() -> None:
    module, _ = _counts("ads")
    assert module.matched_names == ["ads_item=ad_id", "ads_advertiser=ad_advertiser"]
    match, _ = _counts("match")
    assert match.matched_names == ["match_advertiser=ad_advertiser"]
    assert [f for f, _ in match.splits] == ["match_action"]  # 4 values + pad + OOV = 6 rows
    none, _ = _counts("match", split_max_rows=0)
    assert none.splits == []


def test_sequence_without_items_gives_zero_counts() -> None:
    module, _ = _counts("conv")
    batch = random_batch(tiny_spec(), batch_size=3, seq_len=0, all_empty=True)
    got = module.features(batch.sequences["conv"], batch.categorical)
    n = len(module.pairs)
    assert torch.equal(got[:, : got.shape[1] - n], torch.zeros(3, got.shape[1] - n))
    assert torch.equal(got[:, got.shape[1] - n :], torch.ones(3, n))


def _matching_items(k: int, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One row: k copies of a vector that matches the query, then 4 that point away."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d, generator=g)
    other = -v * torch.rand(4, 1, generator=g) - 0.1 * v
    h = torch.cat([v.repeat(k, 1), other])[None]
    return h, torch.ones(1, k + 4, dtype=torch.bool), v[None]


def test_gated_attention_counts_where_softmax_averages() -> None:
    torch.manual_seed(0)
    gated = GatedTargetAttention(8, 8, heads=2)
    soft = TargetAttentionPooling(8, 8)
    with torch.no_grad():  # make the query select exactly the matching vector
        for layer in (gated.query, gated.key, soft.query):
            layer.weight.copy_(torch.eye(8) * 20)
            layer.bias.zero_()
    out = {}
    for k in (1, 3):
        h, valid, q = _matching_items(k)
        ages = torch.zeros(valid.shape)
        out[k] = (gated(h, valid, q, ages), soft(h, valid, q))
    # three matches weigh three times one under gates; softmax gives the same average
    torch.testing.assert_close(out[3][0], 3 * out[1][0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out[3][1], out[1][1], rtol=1e-3, atol=1e-4)


def test_gated_attention_decays_with_age() -> None:
    gated = GatedTargetAttention(8, 8, heads=2)
    h, valid, q = _matching_items(1)
    fresh = gated(h, valid, q, torch.zeros(valid.shape))
    old = gated(h, valid, q, torch.full(valid.shape, 30.0))
    assert (old.abs().view(2, 4).sum(1) < fresh.abs().view(2, 4).sum(1)).all()


class _CountProbe(nn.Module):
    """Embedding -> one pooling over the sequence, queried by the candidate -> a logit."""

    def __init__(self, pool: nn.Module, n_items: int, d: int = 16) -> None:
        super().__init__()
        self.items = nn.Embedding(n_items, d)
        self.pool = pool
        self.out = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        h, q = self.items(ids), self.items(cand)
        if isinstance(self.pool, GatedTargetAttention):
            pooled = self.pool(h, mask, q, torch.zeros(mask.shape))
        else:
            pooled = self.pool(h, mask, q)
        return self.out(pooled).squeeze(-1)


def _count_world(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """label = at least 3 items equal the candidate; lengths vary, so the *share* of
    matching items says little about the count."""
    g = torch.Generator().manual_seed(seed)
    T, n_items = 16, 12
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    cand = torch.randint(1, n_items, (n,), generator=g)
    ids = torch.randint(1, n_items, (n, T), generator=g)
    hit = torch.rand(n, T, generator=g) < 0.25
    ids = torch.where(hit, cand[:, None], ids) * mask
    y = (((ids == cand[:, None]) & mask).sum(1) >= 3).float()
    return ids, mask, cand, y


def _fit_probe(pool: nn.Module) -> float:
    torch.manual_seed(0)
    model = _CountProbe(pool, n_items=12)
    ids, mask, cand, y = _count_world(4096, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        rows = slice((step * 256) % 4096, (step * 256) % 4096 + 256)
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(ids[rows], mask[rows], cand[rows]), y[rows]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids, mask, cand, y = _count_world(4096, seed=2)
    with torch.no_grad():
        return float(roc_auc_score(y.numpy(), model(ids, mask, cand).numpy()))


def test_gated_attention_learns_to_count_matches_and_softmax_does_not() -> None:
    gated = _fit_probe(GatedTargetAttention(16, 16, heads=2))
    softmax = _fit_probe(TargetAttentionPooling(16, 16))
    assert gated > 0.97, gated
    assert gated > softmax + 0.08, (gated, softmax)
