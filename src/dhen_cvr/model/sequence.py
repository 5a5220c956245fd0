"""Behaviour-sequence encoders (paper 3.1 "Sequence Modeling", Figure 3).

Per sequence ``S`` (right-padded, oldest item first, ``B x T``):

1. item vector = concat(field embeddings, the 2 time features) -> ``Linear -> d_model``
   (plus a learned sequence-type vector when one encoder is shared by all sequences;
   MLM-masked items are replaced by a learned ``[MASK]`` vector);
2. + a learned position embedding counted from the newest item (position 0 = newest),
   so recency lines up across rows of different lengths;
3. a pre-norm Transformer encoder (:class:`~dhen_cvr.model.encoder_layer.PreNormEncoderLayer`, GELU),
   causal by default so the same pass serves next-action prediction (paper 3.2);
4. tokens for the backbone, each ``Linear(d_model -> D)``: ``last`` (the output at the
   newest item), ``target_attention`` (softmax attention pooling against the candidate ad,
   DIN style), ``mean`` (masked mean). A row with no items gets a learned "empty" vector
   per token kind instead, never NaN;
5. for the self-supervised loss: every position's output projected to ``d_ssl``, and the
   target field's embedding rows projected to ``d_ssl`` (:meth:`SequenceTower.embed_targets`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from dhen_cvr.data.batch import NUM_TIME_FEATURES, SequenceBatch
from dhen_cvr.data.spec import CategoricalFeature, SequenceFeature
from dhen_cvr.model.encoder_layer import PreNormEncoderLayer
from dhen_cvr.model.matching import CandidateMatchCounts
from dhen_cvr.model.output import SequenceEncoding
from dhen_cvr.model.tokens import EmbeddingTables

__all__ = [
    "GatedTargetAttention",
    "SequenceConfig",
    "SequenceEncoders",
    "SequenceTokenKind",
    "SequenceTower",
    "SequenceTransformer",
    "TargetAttentionPooling",
    "key_padding_mask",
    "recent_window",
]

SequenceTokenKind = Literal["last", "target_attention", "mean", "match"]


def _default_tokens() -> list[SequenceTokenKind]:
    return ["last", "target_attention"]


class SequenceConfig(BaseModel):
    """Sequence encoder hyper-parameters (the paper does not list them; ours by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = Field(default=64, gt=0)
    layers: int = Field(default=2, ge=0)
    heads: int = Field(default=4, gt=0)
    ffn: int = Field(default=256, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    shared: bool = False  # one encoder for all sequences, plus a sequence-type embedding
    causal: bool = True  # False: bidirectional attention (required for the MLM loss)
    max_len_cap: int | None = Field(default=None, gt=0)  # keep at most this many newest items
    # keep only items at most this many days older than the request (None: the whole
    # history). Whole-history sequences grow with the log's age, so a model fitted on
    # early days over-predicts on later ones; a window keeps the inputs stationary.
    max_age_days: float | None = Field(default=None, gt=0)
    tokens: list[SequenceTokenKind] = Field(default_factory=_default_tokens, min_length=1)
    # target attention: "softmax" (a weighted average, as in the paper's DIN module) or
    # "gated" (multi-head, sigmoid gates and a learned per-head time decay, unnormalised:
    # it can count how many recent items match the candidate).
    target_attention: Literal["softmax", "gated"] = "gated"
    target_heads: int = Field(default=4, gt=0)
    # "match" token (model/matching.py): half-lives of the decayed counts, and the largest
    # table (rows incl. padding/OOV) of a field that splits the counts by value.
    match_half_lives_hours: list[float] = Field(
        default_factory=lambda: [1.0, 24.0, 72.0, 168.0, 720.0], min_length=1
    )
    match_split_max_rows: int = Field(default=8, ge=0)
    # bins of the piecewise-linear encoding of the match features (0: linear, as before)
    match_bins: int = Field(default=0, ge=0)
    # per sequence, the field the self-supervised loss predicts ({org: org_topic}); default:
    # the spec's target_field, else the sequence's first field (data/spec.py)
    ssl_targets: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> SequenceConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError(f"sequence tokens repeat: {self.tokens}")
        if self.d_model % self.target_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by target_heads {self.target_heads}"
            )
        if any(h <= 0 for h in self.match_half_lives_hours):
            raise ValueError(f"match half-lives must be > 0, got {self.match_half_lives_hours}")
        return self

    def max_len(self, feature: SequenceFeature) -> int:
        """Items the model keeps from ``feature``: its spec ``max_len``, capped."""
        cap = self.max_len_cap if self.max_len_cap is not None else feature.max_len
        return min(feature.max_len, cap)


def recent_window(
    seq: SequenceBatch,
    max_len: int,
    mlm_mask: Tensor | None = None,
    max_age_days: float | None = None,
) -> tuple[SequenceBatch, Tensor | None]:
    """Keep each row's newest ``max_len`` items, and of those only the ones at most
    ``max_age_days`` older than the request (rows stay right-padded, oldest first).

    An item's age is read from its time feature ``log(t_request - t_i + 1)``
    (``time[..., 1]``, seconds); items are ascending in time, so the kept ones are each
    row's last ``lengths`` valid items. A no-op when ``T <= max_len`` and no age limit is
    set; the data loader normally cuts to ``max_len`` already. ``mlm_mask`` (``B x T``) is
    cut the same way. ``B x T -> B x min(T, max_len)``.
    """
    if seq.mask.shape[1] > max_len:
        seq, mlm_mask = _keep_newest(seq, seq.lengths.clamp(max=max_len), max_len, mlm_mask)
    if max_age_days is not None:
        recent = (seq.time[..., 1] <= math.log1p(max_age_days * 86400.0)) & seq.mask
        lengths = torch.minimum(seq.lengths, recent.sum(1))
        seq, mlm_mask = _keep_newest(seq, lengths, seq.mask.shape[1], mlm_mask)
    return seq, mlm_mask


def _keep_newest(
    seq: SequenceBatch, lengths: Tensor, width: int, mlm_mask: Tensor | None
) -> tuple[SequenceBatch, Tensor | None]:
    """Each row's last ``lengths`` valid items, left-aligned in ``B x width``."""
    offsets = torch.arange(width, device=lengths.device)
    index = ((seq.lengths - lengths)[:, None] + offsets).clamp(max=seq.mask.shape[1] - 1)
    mask = offsets[None] < lengths[:, None]
    ids = {k: v.gather(1, index).masked_fill(~mask, 0) for k, v in seq.ids.items()}
    time_index = index[..., None].expand(-1, -1, seq.time.shape[-1])
    time = seq.time.gather(1, time_index) * mask[..., None]
    cut_mlm = None if mlm_mask is None else mlm_mask.gather(1, index) & mask
    return SequenceBatch(ids=ids, time=time, mask=mask, lengths=lengths), cut_mlm


def key_padding_mask(mask: Tensor) -> Tensor:
    """``B x T`` valid items -> ``B x 1 x 1 x T`` SDPA key mask (True = may attend).

    A row without items would have every key masked, which makes SDPA return NaN; such a
    row attends to position 0 instead (its outputs are replaced by "empty" vectors later).
    """
    first = torch.arange(mask.shape[1], device=mask.device)[None] == 0
    usable = mask | (first & ~mask.any(dim=1, keepdim=True))
    return usable[:, None, None, :]


class SequenceTransformer(nn.Module):
    """Position embedding + :class:`PreNormEncoderLayer` stack (GELU) + LayerNorm;
    ``key_mask`` None = causal, else bidirectional over the valid items.

    ``B x T x d_model -> B x T x d_model``. Positions count from the oldest kept item, so
    under causal attention a position carries nothing about the items after it (counted
    from the newest, position ``t`` would know how many follow); recency enters through
    each item's age feature instead.
    """

    def __init__(self, config: SequenceConfig, max_len: int) -> None:
        super().__init__()
        d = config.d_model
        self.position = nn.Embedding(max_len, d)
        nn.init.normal_(self.position.weight, std=0.02)
        self.layers = nn.ModuleList(
            PreNormEncoderLayer(d, config.heads, config.ffn, config.dropout, "gelu")
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        T = x.shape[1]
        x = x + self.position.weight[:T].to(x.dtype)  # 0 = oldest kept item
        for layer in self.layers:
            x = layer(x, key_mask, causal=key_mask is None)
        return self.norm(x)


class TargetAttentionPooling(nn.Module):
    """DIN-style target attention: ``sum_t softmax_t(q^T W h_t / sqrt(d)) h_t`` over valid t.

    ``h: B x T x d``, ``valid: B x T`` (at least one True per row), ``query: B x d_q``
    (the candidate ad) -> ``B x d``. ``W`` is ``Linear(d_q -> d)`` applied to the query.
    """

    def __init__(self, d_model: int, query_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_dim, d_model)
        self.scale = 1.0 / math.sqrt(d_model)

    def forward(self, h: Tensor, valid: Tensor, query: Tensor) -> Tensor:
        """``h`` and ``valid`` may have one row against ``B`` query rows (one user's
        sequence against ``B`` candidates: ``B x T`` scores, no ``B``-fold copy of ``h``)."""
        q = self.query(query).to(h.dtype)
        if h.shape[0] == 1 and q.shape[0] != 1:
            scores = (q @ h[0].T).float() * self.scale
            weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
            return weights.to(h.dtype) @ h[0]
        scores = torch.einsum("btd,bd->bt", h, q) * self.scale
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # bf16 -> fp32
        weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
        return torch.einsum("bt,btd->bd", weights.to(h.dtype), h)


class GatedTargetAttention(nn.Module):
    """Count-capable target attention (DIN without the softmax, plus recency).

    Per head ``j`` (``d / heads`` wide): ``g_t = sigmoid(q_j^T k_{j,t} / sqrt(d_j) + b_j)
    * exp(-λ_j age_t)`` and ``out_j = Σ_t g_t v_{j,t}`` over valid ``t``: unnormalised, so
    three recent matching items weigh three times one, and each head learns its own time
    decay ``λ_j = softplus(ρ_j)`` per day (initial half-lives spread from 0.5 to 30 days).
    ``h: B x T x d``, ``valid: B x T``, ``query: B x d_q``, ``age_days: B x T`` -> ``B x d``.
    """

    def __init__(self, d_model: int, query_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(query_dim, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.gate_bias = nn.Parameter(torch.full((heads,), -2.0))
        half_lives = torch.logspace(math.log10(0.5), math.log10(30.0), heads)
        rate = math.log(2.0) / half_lives  # per day; store softplus^-1(rate)
        self.decay = nn.Parameter(torch.log(torch.expm1(rate)))
        self.scale = 1.0 / math.sqrt(d_model // heads)

    def forward(self, h: Tensor, valid: Tensor, query: Tensor, age_days: Tensor) -> Tensor:
        """``h``, ``valid`` and ``age_days`` may have one row against ``B`` query rows (one
        user against ``B`` candidates): keys are then computed once, not ``B`` times."""
        if h.shape[0] == 1 and query.shape[0] != 1:
            return self._one_user(h[0], valid[0], query, age_days[0])
        B, T, d = h.shape
        q = self.query(query).to(h.dtype).view(B, self.heads, -1)  # B x J x d_j
        k = self.key(h).view(B, T, self.heads, -1)  # B x T x J x d_j
        scores = torch.einsum("btjd,bjd->btj", k, q).float() * self.scale + self.gate_bias
        decay = torch.nn.functional.softplus(self.decay) * age_days.float()[..., None]
        gates = torch.sigmoid(scores) * torch.exp(-decay) * valid[..., None]  # B x T x J
        v = h.view(B, T, self.heads, -1)
        return torch.einsum("btj,btjd->bjd", gates.to(h.dtype), v).reshape(B, d)

    def _one_user(self, h: Tensor, valid: Tensor, query: Tensor, age_days: Tensor) -> Tensor:
        """:meth:`forward` for ``h: T x d``, ``valid``/``age_days: T``, ``query: N x d_q``."""
        T, d = h.shape
        N = query.shape[0]
        q = self.query(query).to(h.dtype).view(N, self.heads, -1)  # N x J x d_j
        k = self.key(h).view(T, self.heads, -1)  # T x J x d_j, once per request
        scores = torch.einsum("tjd,njd->ntj", k, q).float() * self.scale + self.gate_bias
        decay = torch.nn.functional.softplus(self.decay) * age_days.float()[:, None]  # T x J
        gates = torch.sigmoid(scores) * (torch.exp(-decay) * valid[:, None])  # N x T x J
        v = h.view(T, self.heads, -1)
        return torch.einsum("ntj,tjd->njd", gates.to(h.dtype), v).reshape(N, d)


class SequenceTower(nn.Module):
    """One sequence's item projection, pooling, token projection and SSL projections."""

    def __init__(
        self,
        feature: SequenceFeature,
        tables: EmbeddingTables,
        config: SequenceConfig,
        dim: int,
        ssl_dim: int,
        candidates: list[CategoricalFeature] | None = None,
    ) -> None:
        super().__init__()
        d = config.d_model
        self.feature = feature
        self.token_kinds = list(config.tokens)
        self.causal = config.causal
        width = sum(tables.width(f) for f in feature.fields) + NUM_TIME_FEATURES
        self.item_proj = nn.Linear(width, d)
        self.type_embedding = nn.Parameter(torch.randn(d) * 0.02) if config.shared else None
        self.mask_embedding = None if config.causal else nn.Parameter(torch.randn(d) * 0.02)
        self.pool: TargetAttentionPooling | GatedTargetAttention | None = None
        if "target_attention" in self.token_kinds:
            self.pool = (
                GatedTargetAttention(d, dim, config.target_heads)
                if config.target_attention == "gated"
                else TargetAttentionPooling(d, dim)
            )
        self.match = (
            CandidateMatchCounts(
                feature,
                candidates or [],
                tables,
                config.match_half_lives_hours,
                config.match_split_max_rows,
                d,
                config.match_bins,
            )
            if "match" in self.token_kinds
            else None
        )
        self.empty = nn.Parameter(torch.randn(len(self.token_kinds), d) * 0.02)
        self.token_proj = nn.Linear(d, dim)
        self.ssl_proj = nn.Linear(d, ssl_dim)
        self.target_proj = nn.Linear(tables.width(feature.target), ssl_dim)

    def embed_items(
        self, tables: EmbeddingTables, seq: SequenceBatch, mlm: Tensor | None
    ) -> Tensor:
        """``B x T x d_model`` item inputs (before position embedding)."""
        parts = [tables(f, seq.ids[f.name]) for f in self.feature.fields]
        parts.append(seq.time.to(parts[0].dtype))
        x = self.item_proj(torch.cat(parts, dim=-1))
        if self.type_embedding is not None:
            x = x + self.type_embedding
        if mlm is not None:
            if self.mask_embedding is None:
                raise ValueError(
                    "an MLM mask needs a bidirectional encoder: set model.sequence.causal: false"
                )
            x = torch.where(mlm[..., None], self.mask_embedding.to(x.dtype), x)
        return x

    def tokens(
        self, h: Tensor, seq: SequenceBatch, query: Tensor, candidates: dict[str, Tensor]
    ) -> Tensor:
        """Encoder outputs ``B x T x d_model`` -> ``B x k x D`` tokens (empty rows: learned;
        ``candidates``: the candidate ad's categorical ids, for the ``match`` token).

        One user against ``N`` candidates: ``h`` and ``seq`` with one row, ``query`` and
        ``candidates`` with ``N``; the user-only tokens are computed once and broadcast."""
        B, T, _ = h.shape
        n = query.shape[0]
        empty_row = seq.lengths == 0
        pooled: list[Tensor] = []
        for kind in self.token_kinds:
            if kind == "match":
                assert self.match is not None
                pooled.append(self.match(seq, candidates).to(h.dtype))
            elif T == 0:
                pooled.append(h.new_zeros(B, h.shape[-1]))
            elif kind == "last":
                index = (seq.lengths - 1).clamp(min=0)
                pooled.append(h[torch.arange(B, device=h.device), index])
            elif kind == "mean":
                m = seq.mask[..., None].to(h.dtype)
                pooled.append((h * m).sum(1) / seq.lengths.clamp(min=1)[:, None].to(h.dtype))
            else:
                assert self.pool is not None
                first = torch.arange(T, device=h.device)[None] == 0
                valid = seq.mask | (first & empty_row[:, None])
                if isinstance(self.pool, GatedTargetAttention):
                    age_days = torch.expm1(seq.time[..., 1].float()) / 86400.0
                    pooled.append(self.pool(h, seq.mask, query, age_days))
                else:
                    pooled.append(self.pool(h, valid, query))
        stacked = torch.stack([p.expand(n, -1) for p in pooled], dim=1)  # N x k x d_model
        stacked = torch.where(empty_row[:, None, None], self.empty.to(stacked.dtype), stacked)
        return self.token_proj(stacked)

    def embed_targets(self, tables: EmbeddingTables, ids: Tensor) -> Tensor:
        """Target-field ids ``(...)`` -> ``(..., d_ssl)`` (SSL positives and negatives)."""
        return self.target_proj(tables(self.feature.target, ids))


class SequenceEncoders(nn.Module):
    """All behaviour sequences -> ``B x L_s x D`` tokens + per-sequence SSL encodings."""

    def __init__(
        self,
        sequences: list[SequenceFeature],
        tables: EmbeddingTables,
        config: SequenceConfig,
        dim: int,
        ssl_dim: int,
        candidates: list[CategoricalFeature] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.max_lens = {s.name: config.max_len(s) for s in sequences}
        self.towers = nn.ModuleDict(
            {s.name: SequenceTower(s, tables, config, dim, ssl_dim, candidates) for s in sequences}
        )
        if config.shared and sequences:
            shared = SequenceTransformer(config, max(self.max_lens.values()))
            self.encoders = nn.ModuleDict({"shared": shared})
        else:
            self.encoders = nn.ModuleDict(
                {s.name: SequenceTransformer(config, self.max_lens[s.name]) for s in sequences}
            )
        self.token_names = [
            f"sequence:{s.name}:{kind}" for s in sequences for kind in config.tokens
        ]

    def encoder(self, name: str) -> SequenceTransformer:
        enc = self.encoders["shared" if self.config.shared else name]
        assert isinstance(enc, SequenceTransformer)
        return enc

    def tower(self, name: str) -> SequenceTower:
        tower = self.towers[name]
        assert isinstance(tower, SequenceTower)
        return tower

    def forward(
        self,
        tables: EmbeddingTables,
        sequences: dict[str, SequenceBatch],
        query: Tensor | None,
        mlm_mask: dict[str, Tensor] | None = None,
        ssl: bool = True,
        candidates: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor | None, dict[str, SequenceEncoding]]:
        """-> (``B x L_s x D`` tokens or None without sequences, encodings by name).

        ``query``: ``B x D`` candidate-ad summary (None: a learned constant query);
        ``candidates``: categorical ids ``B`` by feature name (the ``match`` token's);
        ``mlm_mask``: per sequence ``B x T`` bool, positions whose item input is masked;
        ``ssl``: False skips the per-position SSL projection (serving; no encodings).
        """
        tokens: list[Tensor] = []
        encodings: dict[str, SequenceEncoding] = {}
        for name in self.towers:
            tower = self.tower(name)
            mlm = None if mlm_mask is None else mlm_mask.get(name)
            seq, x, mlm = self._encode(name, tables, sequences[name], mlm)
            tokens.append(tower.tokens(x, seq, self._query(query, seq), candidates or {}))
            if not ssl:
                continue
            target = tower.feature.target.name
            encodings[name] = SequenceEncoding(
                hidden=tower.ssl_proj(x), mask=seq.mask, target_ids=seq.ids[target], mlm_mask=mlm
            )
        if not tokens:
            return None, encodings
        return torch.cat(tokens, dim=1), encodings

    def for_candidates(
        self,
        tables: EmbeddingTables,
        sequences: dict[str, SequenceBatch],
        query: Tensor | None,
        candidates: dict[str, Tensor],
        num_candidates: int,
    ) -> Tensor | None:
        """One user's sequences (``1 x T`` each) against ``N`` candidates -> ``N x L_s x D``.

        The user side (item embeddings, the Transformer encoders) runs once; only the
        candidate-dependent pooling (target attention, ``match``) runs per candidate, on
        one user row against ``N`` query rows (keys and user-only tokens once). Equal to :meth:`forward` on
        the user's row repeated ``N`` times. ``query``: ``N x D``; ``candidates``: ids ``N``.
        """
        tokens: list[Tensor] = []
        for name in self.towers:
            seq, x, _ = self._encode(name, tables, sequences[name], None)
            if seq.mask.shape[0] != 1:
                raise ValueError(
                    f"sequence {name!r}: expected one user row, got {seq.mask.shape[0]}"
                )
            wide = _broadcast_rows(seq, num_candidates)
            tokens.append(self.tower(name).tokens(x, seq, self._query(query, wide), candidates))
        return torch.cat(tokens, dim=1) if tokens else None

    def _encode(
        self, name: str, tables: EmbeddingTables, seq: SequenceBatch, mlm: Tensor | None
    ) -> tuple[SequenceBatch, Tensor, Tensor | None]:
        """The newest ``max_len`` items, their encoder outputs ``B x T x d_model``, the MLM
        mask cut the same way."""
        seq, mlm = recent_window(seq, self.max_lens[name], mlm, self.config.max_age_days)
        x = self.tower(name).embed_items(tables, seq, mlm)
        if seq.mask.shape[1] > 0:
            key_mask = None if self.config.causal else key_padding_mask(seq.mask)
            x = self.encoder(name)(x, key_mask)
        return seq, x, mlm

    def _query(self, query: Tensor | None, seq: SequenceBatch) -> Tensor:
        return query if query is not None else seq.time.new_zeros(seq.mask.shape[0], self.dim)


def _broadcast_rows(seq: SequenceBatch, n: int) -> SequenceBatch:
    """A one-row :class:`SequenceBatch` seen as ``n`` identical rows (expanded views)."""
    return SequenceBatch(
        ids={k: v.expand(n, -1) for k, v in seq.ids.items()},
        time=seq.time.expand(n, -1, -1),
        mask=seq.mask.expand(n, -1),
        lengths=seq.lengths.expand(n),
    )
