"""Candidate-matched, recency-decayed counts over one behaviour sequence (beyond the paper).

What a practitioner hand-crafts for a GBDT, computed inside the model from the spec alone:
for every sequence field that shares an embedding table with a candidate-ad feature (the
ad's advertiser vs ``ads_advertiser``, its topic vs ``org_topic``, ...), the items whose id
*equals* the candidate's. Attention over embeddings can learn such matches only slowly
from sparse labels; an exact match is free. Per sequence, with ``m`` the match masks
(``m_0`` = every valid item, ``m_j`` = field ``f_j`` equals candidate feature ``c_j``),
``s`` the split indicators (``s_0`` = 1, then one per value of each small-vocabulary
field such as the action type) and ``K`` exponential kernels ``w_k(age) = 2^(-age / h_k)``
with half-lives ``h_k``::

    n[b, j, v, k] = Σ_t m_j[b, t] · s_v[b, t] · w_k(age[b, t])      (B x M x S x K)
    last[b, j]    = log1p(age of the newest item with m_j) / log1p(max age)   (1 if none)
    token         = Linear([log1p(n) / 4 ; last])                   (B x d)

or, with ``bins = T > 0``, ``Linear`` of their piecewise-linear encoding
(:class:`~dhen_cvr.model.piecewise.PiecewiseLinearEncoding`, ``B x F*T``): a learned
step-like function of each count (``log1p(n) / 4`` reaches 1 at ``n ~ 54``).

``age = request time - item time`` in seconds, recovered exactly from the item's time
feature ``log(age + 1)`` (:data:`~dhen_cvr.data.batch.NUM_TIME_FEATURES`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dhen_cvr.data.batch import SequenceBatch
from dhen_cvr.data.spec import CategoricalFeature, SequenceFeature
from dhen_cvr.model.piecewise import PiecewiseLinearEncoding
from dhen_cvr.model.tokens import EmbeddingTables

__all__ = ["CandidateMatchCounts"]

# Ages are normalised by this horizon in the "time since the last match" feature.
_MAX_AGE_S = 60 * 86400.0


class CandidateMatchCounts(nn.Module):
    """One sequence -> ``B x d`` token of candidate-matched decayed counts (module docstring).

    ``candidates``: the spec's candidate-category categorical features; ``split_max_rows``:
    fields whose table has at most this many rows (padding and OOV included), and that match
    no candidate, split the counts by value.
    """

    rates: Tensor

    def __init__(
        self,
        feature: SequenceFeature,
        candidates: Sequence[CategoricalFeature],
        tables: EmbeddingTables,
        half_lives_hours: Sequence[float],
        split_max_rows: int,
        dim: int,
        bins: int = 0,
    ) -> None:
        super().__init__()
        self.pairs = [
            (f.name, c.name)
            for f in feature.fields
            for c in candidates
            if f.table_name == c.table_name
        ]
        matched = {f for f, _ in self.pairs}
        self.splits = [
            (f.name, tables.table(f).num_embeddings)
            for f in feature.fields
            if f.name not in matched and tables.table(f).num_embeddings <= split_max_rows
        ]
        rates = [math.log(2.0) / (h * 3600.0) for h in half_lives_hours]
        self.register_buffer("rates", torch.tensor(rates), persistent=False)
        n_match = 1 + len(self.pairs)
        n_split = 1 + sum(rows - 1 for _, rows in self.splits)
        self.num_features = n_match * n_split * len(rates) + len(self.pairs)
        self.encoding = PiecewiseLinearEncoding(bins) if bins else None
        width = self.encoding.output_width(self.num_features) if self.encoding else None
        self.proj = nn.Linear(width or self.num_features, dim)

    @property
    def matched_names(self) -> list[str]:
        """``field=candidate`` for every matched pair (for ``describe`` and docs)."""
        return [f"{f}={c}" for f, c in self.pairs]

    def features(self, seq: SequenceBatch, candidates: dict[str, Tensor]) -> Tensor:
        """``B x num_features`` (before the projection), float32. ``seq`` may have one row
        against ``B`` candidate rows (one user's request): the user-only parts (ages,
        splits, kernels) are then computed once."""
        valid = seq.mask  # b x T, b = 1 or B
        rows = max([valid.shape[0]] + [candidates[c].shape[0] for _, c in self.pairs])
        age = torch.expm1(seq.time[..., 1].float()).clamp(min=0.0)  # b x T seconds
        match = [valid.expand(rows, -1)] + [
            valid & (seq.ids[f] == candidates[c][:, None]) for f, c in self.pairs
        ]  # M x (B x T)
        m = torch.stack(match, dim=-1).float()  # B x T x M
        split = [torch.ones_like(age)]
        for f, rows_f in self.splits:
            values = torch.arange(1, rows_f, device=age.device)
            split.extend((seq.ids[f][..., None] == values).float().unbind(-1))
        s = torch.stack(split, dim=-1)  # b x T x S
        w = torch.exp(-age[..., None] * self.rates)  # b x T x K
        sw = torch.einsum("bts,btk->btsk", s, w).flatten(2)  # b x T x (S K), user only
        if sw.shape[0] == 1 and rows != 1:
            counts = torch.einsum("ntm,tq->nmq", m, sw[0]).flatten(1)
        else:
            counts = torch.einsum("btm,btq->bmq", m, sw).flatten(1)
        parts = [torch.log1p(counts) * 0.25]
        if self.pairs and age.shape[1] == 0:
            parts.append(age.new_ones(rows, len(self.pairs)))
        elif self.pairs:
            horizon = math.log1p(_MAX_AGE_S)
            scaled = (torch.log1p(age) / horizon).clamp(max=1.0)[..., None]  # b x T x 1
            last = torch.where(m[..., 1:] > 0, scaled, torch.ones_like(scaled)).amin(dim=1)
            parts.append(last)
        return torch.cat(parts, dim=1)

    def forward(self, seq: SequenceBatch, candidates: dict[str, Tensor]) -> Tensor:
        """-> ``B x d`` in the projection's dtype."""
        x = self.features(seq, candidates)
        if self.encoding is not None:
            x = self.encoding(x.clamp(0.0, 1.0))
        return self.proj(x.to(self.proj.weight.dtype))
