"""Population attribute shares of the candidate, as tokens (beyond the paper).

For a sequence with a ``key`` field (e.g. ``conv_advertiser``) and a ``target`` field
(e.g. ``conv_action``, the conversion type), count over the training days' logged items
how often each key id comes with each target value, ``n[k, v]``, and turn the counts into
smoothed log shares relative to the overall share ``pi_v``:

    s[k, v] = log((n[k, v] + alpha pi_v) / (n[k] + alpha)) - log(pi_v)

The candidate feature that shares the key's embedding table (``advertiser_id``) looks its
row up, ``Linear(V -> D)(s[id])`` is one more feature token (``B x 1 x D`` per entry). It
hands the model a statistic pooled over all users' histories, an advertiser's
conversion-type mix, that neither its own user's sequence nor a few CVR positives per id
can teach it: a target encoding learnt from the logs, not from the labels. The table is a
buffer (saved, exported); zero until :meth:`AttributeShareTokens.set_counts`.

``attribute_shares: auto`` derives the entries from the spec alone
(:func:`auto_share_configs`): in every sequence, each field that shares an embedding table
with a candidate feature (a key the candidate can look up) against each small-vocabulary
field that matches no candidate (an action or conversion type, as the ``match`` token's
splits in :mod:`~dhen_cvr.model.matching`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dhen_cvr.data.spec import (
    CategoricalFeature,
    CategoricalField,
    FeatureCategory,
    SequenceFeature,
    SpecError,
)
from dhen_cvr.model.tokens import EmbeddingTables

__all__ = [
    "AttributeShareConfig",
    "AttributeShareTokens",
    "auto_share_configs",
    "share_fields",
]


class AttributeShareConfig(BaseModel):
    """One share table: ``target`` values per ``key`` id among ``sequence``'s items;
    ``smoothing`` is ``alpha`` (pseudo-items at the overall share); ``use``: ``token`` (a
    feature token), ``logit`` (a per-head linear term ``w_h . s[id]`` added to each head's
    logit, zero at init) or ``both``."""

    model_config = ConfigDict(extra="forbid")

    sequence: str
    key: str
    target: str
    smoothing: float = Field(default=20.0, ge=0)
    use: Literal["token", "logit", "both"] = "both"

    @property
    def name(self) -> str:
        return f"{self.sequence}.{self.key}->{self.target}"


def share_fields(
    sequences: list[SequenceFeature], config: AttributeShareConfig
) -> tuple[CategoricalField, CategoricalField]:
    """The ``(key, target)`` fields of an entry; :class:`SpecError` naming what is wrong."""
    by_name = {s.name: s for s in sequences}
    if config.sequence not in by_name:
        raise SpecError(
            f"attribute_shares: unknown sequence {config.sequence!r}; known: {sorted(by_name)}"
        )
    fields = {f.name: f for f in by_name[config.sequence].fields}
    missing = [n for n in (config.key, config.target) if n not in fields]
    if missing or config.key == config.target:
        raise SpecError(
            f"attribute_shares: {config.name} needs two different fields of sequence "
            f"{config.sequence!r}; its fields: {sorted(fields)}"
        )
    return fields[config.key], fields[config.target]


def auto_share_configs(
    sequences: list[SequenceFeature],
    candidates: list[CategoricalFeature],
    tables: EmbeddingTables,
    split_max_rows: int,
) -> list[AttributeShareConfig]:
    """The entries ``attribute_shares: auto`` stands for, in spec order: per sequence, every
    ``key`` field whose table a candidate feature shares, against every ``target`` field
    whose table has at most ``split_max_rows`` rows (padding and OOV included) and is
    shared with no candidate. Empty when no sequence has both kinds."""
    candidate_tables = {c.table_name for c in candidates if c.category == FeatureCategory.candidate}
    entries = []
    for seq in sequences:
        keys = [f for f in seq.fields if f.table_name in candidate_tables]
        targets = [
            f
            for f in seq.fields
            if f.table_name not in candidate_tables
            and tables.table(f).num_embeddings <= split_max_rows
        ]
        entries += [
            AttributeShareConfig(sequence=seq.name, key=k.name, target=t.name)
            for k in keys
            for t in targets
        ]
    return entries


class AttributeShareTokens(nn.Module):
    """``categorical`` ids -> ``B x K x D``, one token per entry (entries of sequences the
    model does not encode are skipped)."""

    def __init__(
        self,
        sequences: list[SequenceFeature],
        candidates: list[CategoricalFeature],
        tables: EmbeddingTables,
        configs: list[AttributeShareConfig],
        dim: int,
        num_heads: int,
    ) -> None:
        super().__init__()
        present = {s.name for s in sequences}
        self.configs = [c for c in configs if c.sequence in present]
        self.candidate_names: list[str] = []
        self.projections = nn.ModuleList()
        self.logit_weights = nn.ModuleList()
        for i, config in enumerate(self.configs):
            key, target = share_fields(sequences, config)
            match = [
                f
                for f in candidates
                if f.category == FeatureCategory.candidate and f.table_name == key.table_name
            ]
            if not match:
                raise SpecError(
                    f"attribute_shares: {config.name}: no candidate feature shares table "
                    f"{key.table_name!r} with {config.key!r}"
                )
            self.candidate_names.append(match[0].name)
            rows, values = tables.table(key).num_embeddings, tables.table(target).num_embeddings
            self.register_buffer(f"share_{i}", torch.zeros(rows, values))
            self.projections.append(nn.Linear(values, dim))
            wide = nn.Linear(values, num_heads, bias=False)
            nn.init.zeros_(wide.weight)
            self.logit_weights.append(wide)

    @property
    def token_names(self) -> list[str]:
        return [f"shares:{c.name}" for c in self.configs if c.use != "logit"]

    def share_table(self, index: int) -> Tensor:
        table = getattr(self, f"share_{index}")
        assert isinstance(table, Tensor)
        return table

    @torch.no_grad()
    def set_counts(self, counts: list[Tensor]) -> None:
        """Install the smoothed log shares from ``rows(key) x rows(target)`` counts, one per
        entry in :attr:`configs` order (row / column 0, padding, is ignored)."""
        for i, (config, n) in enumerate(zip(self.configs, counts, strict=True)):
            table = self.share_table(i)
            if n.shape != table.shape:
                raise ValueError(
                    f"{config.name}: counts {tuple(n.shape)}, expected {tuple(table.shape)}"
                )
            n = n.double().clone()
            n[0], n[:, 0] = 0, 0
            prior = n.sum(0) / n.sum().clamp(min=1)
            share = (n + config.smoothing * prior) / (n.sum(1, keepdim=True) + config.smoothing)
            log_share = torch.where(
                prior > 0, share.clamp(min=1e-12).log() - prior.clamp(min=1e-12).log(), 0.0
            )
            log_share[0] = 0
            table.copy_(log_share.to(table.dtype))

    def forward(self, categorical: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """-> (``B x K x D`` tokens or None, ``B x H`` logit terms or None)."""
        tokens: list[Tensor] = []
        logits: Tensor | None = None
        for i, config in enumerate(self.configs):
            row = self.share_table(i)[categorical[self.candidate_names[i]]]  # B x V
            if config.use != "logit":
                tokens.append(self.projections[i](row))
            if config.use != "token":
                term = self.logit_weights[i](row)
                logits = term if logits is None else logits + term
        return (torch.stack(tokens, dim=1) if tokens else None), logits
