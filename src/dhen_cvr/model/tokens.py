"""Feature tokens: pre-processing and the unified dimension projection (paper 3.1).

Every non-sequence feature (or dense feature group) becomes one token in ``R^D``:

- dense features: ``log1p`` where flagged, min-max with fitted statistics, clipped to
  ``[0, 1]`` (:class:`DenseScaler`), then grouped into tokens by ``group`` (or, if unset,
  by category; with ``dense_tokens="feature"`` one token per feature), each group
  ``Linear(n_group -> D)``, or with ``dense_bins = T > 0`` ``Linear(n_group * T -> D)`` of
  the values' piecewise-linear encoding (:mod:`dhen_cvr.model.piecewise`);
- pre-trained vectors: ``BatchNorm1d(dim) -> Linear(dim -> D)``, one token each;
- categorical ids (the candidate ad's ids included): a row of its (possibly shared)
  embedding table, ``Linear(width -> D)`` when the width differs from ``D``.

The output is ``B x L_f x D`` with :attr:`FeatureTokenizer.token_names`; behaviour
sequences add their own tokens (:mod:`dhen_cvr.model.sequence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from dhen_cvr.data.spec import FeatureCategory, FeatureSpec
from dhen_cvr.data.stats import MinMaxStats
from dhen_cvr.model.piecewise import PiecewiseLinearEncoding

if TYPE_CHECKING:
    from dhen_cvr.data.spec import CategoricalFeature, CategoricalField

    IdFeature = CategoricalFeature | CategoricalField

__all__ = ["DenseScaler", "DenseTokens", "EmbeddingTables", "FeatureTokenizer"]

# How dense features become tokens: one per group (spec ``group``, else category) or one each.
DenseTokens = Literal["group", "feature"]


class DenseScaler(nn.Module):
    """Raw dense values ``B x n`` -> ``[0, 1]`` (paper 3.1 step 1).

    ``x' = clip((f(x) - min) / (max - min), 0, 1)`` with ``f = log1p(max(x, 0))`` where the
    feature is flagged ``log1p`` and the identity elsewhere; ``min``/``max`` are fitted on
    ``f(x)`` over the training days and live in buffers, so they travel with the weights.
    The same map as :func:`dhen_cvr.data.stats.transform_dense`, kept in buffers so it is
    part of the exported model. A constant feature (``max == min``) maps to 0. Before :meth:`set_stats` the range is
    ``[0, 1]`` (the trainer fits and sets the statistics before the first step).
    """

    minimum: Tensor
    maximum: Tensor
    log1p: Tensor

    def __init__(self, names: Sequence[str], log1p: Sequence[bool]) -> None:
        super().__init__()
        if len(names) != len(log1p):
            raise ValueError(f"{len(names)} dense names but {len(log1p)} log1p flags")
        self.names = list(names)
        n = len(self.names)
        self.register_buffer("minimum", torch.zeros(n))
        self.register_buffer("maximum", torch.ones(n))
        self.register_buffer("log1p", torch.tensor(list(log1p), dtype=torch.bool))

    def set_stats(self, stats: MinMaxStats) -> None:
        """Copy the statistics of this scaler's features (matched by name) into the buffers."""
        index = {name: i for i, name in enumerate(stats.names)}
        missing = [n for n in self.names if n not in index]
        if missing:
            raise ValueError(f"dense statistics lack feature(s) {missing}")
        rows = [index[n] for n in self.names]
        flags = [bool(stats.log1p[i]) for i in rows]
        if flags != self.log1p.tolist():
            raise ValueError(
                f"dense statistics were fitted with log1p flags {flags} but the spec says "
                f"{self.log1p.tolist()} for {self.names}"
            )
        with torch.no_grad():
            dev = self.minimum.device
            self.minimum.copy_(torch.tensor([float(stats.minimum[i]) for i in rows], device=dev))
            self.maximum.copy_(torch.tensor([float(stats.maximum[i]) for i in rows], device=dev))

    def forward(self, x: Tensor) -> Tensor:
        """``B x n`` raw -> ``B x n`` in ``[0, 1]`` (computed in float32)."""
        x = x.float()
        x = torch.where(self.log1p, torch.log1p(x.clamp(min=0)), x)
        span = self.maximum - self.minimum
        scaled = ((x - self.minimum) / span.clamp(min=1e-12)).clamp(0.0, 1.0)
        return torch.where(span > 0, scaled, torch.zeros_like(scaled))


class EmbeddingTables(nn.Module):
    """One ``nn.Embedding`` per shared table name (``spec.embedding_tables()``).

    Row 0 is padding (kept at zero, no gradient). A table's width is the ``embedding_dim``
    override of its members (they must agree) or ``default_dim``. Rows are initialised
    ``N(0, 1 / width)`` so a row has about unit norm.
    """

    def __init__(self, spec: FeatureSpec, default_dim: int) -> None:
        super().__init__()
        widths: dict[str, int] = {}
        owner: dict[str, str] = {}
        for item in spec.id_features():
            table = item.table_name
            width = item.embedding_dim
            if width is None:
                continue
            if table in widths and widths[table] != width:
                raise ValueError(
                    f"features {owner[table]!r} and {item.name!r} share table {table!r} but "
                    f"ask for embedding_dim {widths[table]} and {width}"
                )
            widths[table], owner[table] = width, item.name
        self.tables = nn.ModuleDict()
        for table, rows in spec.embedding_tables().items():
            width = widths.get(table, default_dim)
            emb = nn.Embedding(rows, width, padding_idx=0)
            nn.init.normal_(emb.weight, std=width**-0.5)
            with torch.no_grad():
                emb.weight[0].zero_()
            self.tables[table] = emb

    def width(self, feature: IdFeature) -> int:
        """Embedding width of a categorical feature or sequence field."""
        return self.table(feature).embedding_dim

    def table(self, feature: IdFeature) -> nn.Embedding:
        table = self.tables[feature.table_name]
        assert isinstance(table, nn.Embedding)
        return table

    def forward(self, feature: IdFeature, ids: Tensor) -> Tensor:
        """``ids (...)`` -> ``(..., width)``."""
        return self.table(feature)(ids)


class FeatureTokenizer(nn.Module):
    """Dense groups, pre-trained vectors and categorical ids -> ``B x L_f x D``.

    ``dense_input_names`` is the column order of ``Batch.dense`` (the spec's dense features
    *before* any category was dropped); dropped columns are skipped, so the same batch
    feeds a full model and an ablated one.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        tables: EmbeddingTables,
        dim: int,
        dense_input_names: Sequence[str] | None = None,
        *,
        dense_bins: int = 0,
        dense_tokens: DenseTokens = "group",
    ) -> None:
        super().__init__()
        self.dim = dim
        dense = spec.dense
        names = [f.name for f in dense]
        inputs = list(dense_input_names) if dense_input_names is not None else names
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ValueError(f"dense features {missing} are not among the batch columns")
        self.dense_input_width = len(inputs)
        self.scaler = DenseScaler(names, [f.log1p for f in dense])
        self.register_buffer(
            "dense_columns", torch.tensor([inputs.index(n) for n in names], dtype=torch.long)
        )
        self.dense_columns: Tensor

        groups: dict[str, list[int]] = {}
        categories: dict[str, FeatureCategory] = {}
        for i, f in enumerate(dense):
            key = f.name if dense_tokens == "feature" else f.group or f.category.value
            groups.setdefault(key, []).append(i)
            categories.setdefault(key, f.category)
        self.dense_groups = list(groups)
        self._dense_group_index = [groups[g] for g in self.dense_groups]
        self.dense_encoding = PiecewiseLinearEncoding(dense_bins) if dense_bins else None
        bins = max(dense_bins, 1)
        self.dense_proj = nn.ModuleList(nn.Linear(len(ix) * bins, dim) for ix in groups.values())

        self.pretrained_names = [f.name for f in spec.pretrained]
        self.pretrained_norm = nn.ModuleList(nn.BatchNorm1d(f.dim) for f in spec.pretrained)
        self.pretrained_proj = nn.ModuleList(nn.Linear(f.dim, dim) for f in spec.pretrained)

        self.categorical = list(spec.categorical)
        self.categorical_proj = nn.ModuleList(
            nn.Identity() if tables.width(f) == dim else nn.Linear(tables.width(f), dim)
            for f in self.categorical
        )

        self.token_names: list[str] = (
            [f"dense:{g}" for g in self.dense_groups]
            + [f"pretrained:{n}" for n in self.pretrained_names]
            + [f"categorical:{f.name}" for f in self.categorical]
        )
        token_category = (
            [categories[g] for g in self.dense_groups]
            + [f.category for f in spec.pretrained]
            + [f.category for f in self.categorical]
        )
        self.candidate_indices = [
            i for i, c in enumerate(token_category) if c == FeatureCategory.candidate
        ]
        first_id = len(self.dense_groups) + len(self.pretrained_names)
        id_candidates = [i for i in self.candidate_indices if i >= first_id]
        # The token that stands for the ad (crossing modules' target): its first id feature.
        ranked = id_candidates + self.candidate_indices
        self.candidate_token: int | None = ranked[0] if ranked else None

    @property
    def num_tokens(self) -> int:
        return len(self.token_names)

    def forward(
        self,
        tables: EmbeddingTables,
        dense: Tensor,
        pretrained: dict[str, Tensor],
        categorical: dict[str, Tensor],
    ) -> Tensor:
        """Raw batch parts -> ``B x L_f x D`` (``L_f`` may be 0 for a sequence-only spec).

        ``tables`` are the model's shared embedding tables (owned by the model, used here
        and by the sequence encoders)."""
        tokens: list[Tensor] = []
        if self.dense_groups:
            if dense.shape[1] == self.dense_input_width:
                dense = dense.index_select(1, self.dense_columns)
            elif dense.shape[1] != len(self.scaler.names):
                raise ValueError(
                    f"Batch.dense has {dense.shape[1]} columns; expected "
                    f"{self.dense_input_width} (spec order) or {len(self.scaler.names)}"
                )
            scaled = self.scaler(dense)
            for index, proj in zip(self._dense_group_index, self.dense_proj, strict=True):
                group = scaled[:, index]
                if self.dense_encoding is not None:
                    group = self.dense_encoding(group)
                tokens.append(proj(group))
        for name, norm, proj in zip(
            self.pretrained_names, self.pretrained_norm, self.pretrained_proj, strict=True
        ):
            tokens.append(proj(norm(pretrained[name].float())))
        for feature, proj in zip(self.categorical, self.categorical_proj, strict=True):
            tokens.append(proj(tables(feature, categorical[feature.name])))
        if not tokens:
            return dense.new_zeros(dense.shape[0], 0, self.dim)
        return torch.stack(tokens, dim=1)

    def candidate_summary(self, tokens: Tensor) -> Tensor | None:
        """Mean of the candidate-ad tokens, ``B x D`` (the target-attention query), or None."""
        if not self.candidate_indices:
            return None
        return tokens[:, self.candidate_indices].mean(dim=1)
