"""The feature spec: which Parquet column plays which role (DESIGN section 2).

A spec is a YAML file validated by pydantic. Every column the model reads is named here,
with its *role* (how it is encoded) and its *category* (which paper Figure 6 group it
belongs to, so a whole category can be dropped by name)::

    name: my-logs
    request_time: ts                 # int64 unix seconds of the impression
    user_id: user_id                 # optional; never a feature, used for grouping
    features:
      - {name: age, role: dense, category: demographic}
      - {name: n_conv_7d, role: dense, category: counting, log1p: true}
      - {name: gender, role: categorical, category: demographic, vocab_size: 3}
      - {name: user_emb, role: pretrained, category: pretrained, dim: 16}
      - {name: ad_id, role: categorical, category: candidate, hash_buckets: 50000, table: item}
      - name: org                    # a behaviour sequence, S_org
        role: sequence
        category: sequence
        max_len: 500
        timestamp: org_ts            # list<int64> column, ascending, < request_time
        fields:
          - {name: org_item, hash_buckets: 50000, table: item}   # list<int|str> column
          - {name: org_action, vocab_size: 4}
    labels:
      - {name: click, serve: false}
      - {name: checkout, mask: click}   # optional mask column: loss only where mask == 1
    sampling: {negative_rate: 0.05, inclusion_column: sample_rate}

Roles: ``dense`` (float scalar), ``pretrained`` (fixed-size float vector),
``categorical`` (int or string id), ``sequence`` (list columns, one per item field, plus a
timestamp list). Categories: ``demographic``, ``counting``, ``categorical``,
``pretrained``, ``sequence`` (user side, Figure 6), ``candidate`` (the ad) and
``context`` (the request). Categorical id mapping (``vocab_size`` or ``hash_buckets``,
index 0 reserved for padding, one out-of-vocabulary bucket at the end) lives in
:mod:`dhen_cvr.data.mapping`.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "USER_CATEGORIES",
    "CategoricalFeature",
    "CategoricalField",
    "DenseFeature",
    "FeatureCategory",
    "FeatureSpec",
    "LabelSpec",
    "PretrainedFeature",
    "SamplingSpec",
    "SequenceFeature",
    "SpecError",
    "load_spec",
]


class SpecError(ValueError):
    """A feature spec that cannot be used; the message names the offending entry."""


class FeatureCategory(str, Enum):
    """Feature groups of paper Figure 6 (user side) plus the ad and the request."""

    demographic = "demographic"
    counting = "counting"
    categorical = "categorical"
    pretrained = "pretrained"
    sequence = "sequence"
    candidate = "candidate"
    context = "context"


USER_CATEGORIES: frozenset[str] = frozenset(
    {"demographic", "counting", "categorical", "pretrained", "sequence"}
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _IdMapping(_Strict):
    """How raw ids become embedding rows: exactly one of ``vocab_size`` / ``hash_buckets``.

    ``vocab_size: N``: integer ids in ``[0, N)`` map to ``1..N``; anything else (negative,
    too large, null, a string) goes to the OOV row ``N + 1``.
    ``hash_buckets: H``: any int or string is hashed to ``1..H``; null goes to ``H + 1``.
    Row 0 is padding. ``table`` names a shared embedding table (e.g. ``item`` for the
    candidate ad id and every sequence's item field); members must map ids identically.
    ``embedding_dim`` overrides the model's default width for this table.
    """

    name: str
    vocab_size: int | None = Field(default=None, gt=0)
    hash_buckets: int | None = Field(default=None, gt=0)
    table: str | None = None
    embedding_dim: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_mapping(self) -> _IdMapping:
        if (self.vocab_size is None) == (self.hash_buckets is None):
            raise ValueError("give exactly one of vocab_size or hash_buckets")
        return self

    @property
    def num_rows(self) -> int:
        """Embedding rows: padding + ids + OOV."""
        n = self.vocab_size if self.vocab_size is not None else self.hash_buckets
        assert n is not None
        return n + 2

    @property
    def table_name(self) -> str:
        return self.table or self.name

    @property
    def mapping_key(self) -> tuple[str, int]:
        if self.vocab_size is not None:
            return ("vocab", self.vocab_size)
        assert self.hash_buckets is not None
        return ("hash", self.hash_buckets)


class DenseFeature(_Strict):
    """A continuous scalar; min-max normalised to [0, 1] with training-day statistics."""

    name: str
    role: Literal["dense"]
    category: FeatureCategory
    column: str | None = None
    log1p: bool = False  # apply log(1 + max(x, 0)) before min-max (counts)
    group: str | None = None  # dense features sharing a group become one token

    @property
    def source(self) -> str:
        return self.column or self.name


class PretrainedFeature(_Strict):
    """A fixed-size float vector (e.g. a pre-trained user embedding); BatchNorm in the model."""

    name: str
    role: Literal["pretrained"]
    category: FeatureCategory
    dim: int = Field(gt=0)
    column: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


class CategoricalFeature(_IdMapping):
    """An id (int or string) with a learned embedding."""

    role: Literal["categorical"]
    category: FeatureCategory
    column: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


class CategoricalField(_IdMapping):
    """One field of a sequence item (a ``list<int|str>`` column)."""

    column: str | None = None

    @property
    def source(self) -> str:
        return self.column or self.name


class SequenceFeature(_Strict):
    """A user behaviour sequence (paper eq. 1): parallel list columns, oldest item first.

    Items are cut to the most recent ``max_len``. ``timestamp`` is a ``list<int64>``
    column of unix seconds, non-decreasing and strictly before the request time.
    ``target_field`` is the field the self-supervised loss predicts (default: the first).
    """

    name: str
    role: Literal["sequence"]
    category: FeatureCategory = FeatureCategory.sequence
    max_len: int = Field(default=500, gt=0)
    timestamp: str
    fields: list[CategoricalField] = Field(min_length=1)
    target_field: str | None = None

    @model_validator(mode="after")
    def _target_is_a_field(self) -> SequenceFeature:
        names = [f.name for f in self.fields]
        if self.target_field is not None and self.target_field not in names:
            raise ValueError(f"target_field {self.target_field!r} is not one of its fields {names}")
        return self

    @property
    def target(self) -> CategoricalField:
        name = self.target_field or self.fields[0].name
        return next(f for f in self.fields if f.name == name)


Feature = Annotated[
    DenseFeature | PretrainedFeature | CategoricalFeature | SequenceFeature,
    Field(discriminator="role"),
]


class LabelSpec(_Strict):
    """One prediction head. ``mask`` names a 0/1 column; the head's loss and metrics use
    only rows where it is 1 (e.g. CVR defined on clicked rows). ``serve: false`` heads
    (the CTR head, paper 2.2) train but are not exported."""

    name: str
    column: str | None = None
    mask: str | None = None
    serve: bool = True

    @property
    def source(self) -> str:
        return self.column or self.name


class SamplingSpec(_Strict):
    """Negative down-sampling (paper 5.1: every converting impression kept, the rest kept
    at rate ``negative_rate``).

    A row is kept for sure when any label of ``keep_labels`` is 1 (default: every served
    label, i.e. any conversion), else with probability ``r = negative_rate``. For head
    ``h`` the full-population probability is then ``p_h = r p_s,h / (1 - (1 - r) a_s)``
    with ``a_s`` the sampled-data probability that any keep label is 1 (the model learns
    it with an extra "any keep label" head; DESIGN 10). With a single keep label this is
    the familiar ``p = p_s / (p_s + (1 - p_s) / r)``.
    ``inclusion_column`` optionally names a per-row column with the probability that the
    row was kept (1 for converting rows, r for the rest); evaluation weights rows by its
    inverse so calibration is measured on the full population.
    """

    negative_rate: float = Field(default=1.0, gt=0, le=1)
    inclusion_column: str | None = None
    keep_labels: list[str] | None = None


class FeatureSpec(_Strict):
    """The whole data contract for one data set."""

    name: str = "dataset"
    request_time: str
    user_id: str | None = None
    features: list[Feature]
    labels: list[LabelSpec] = Field(min_length=1)
    sampling: SamplingSpec = SamplingSpec()
    weight_column: str | None = None
    oracle_prefix: str = "oracle_"

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        names = [f.name for f in self.features]
        for seq in self.sequences:
            names.extend(fld.name for fld in seq.fields)
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise ValueError(f"duplicate feature name(s): {sorted(dup)}")
        label_dup = [n for n, c in Counter(lb.name for lb in self.labels).items() if c > 1]
        if label_dup:
            raise ValueError(f"duplicate label name(s): {sorted(label_dup)}")
        tables: dict[str, tuple[str, tuple[str, int], str]] = {}
        for item in self.id_features():
            key = item.mapping_key
            prev = tables.setdefault(item.table_name, (item.name, key, ""))
            if prev[1] != key:
                raise ValueError(
                    f"feature {item.name!r} shares table {item.table_name!r} with {prev[0]!r} "
                    f"but maps ids differently ({key} vs {prev[1]})"
                )
        unknown = sorted(set(self.sampling.keep_labels or []) - set(self.label_names))
        if unknown:
            raise ValueError(
                f"sampling.keep_labels names {unknown}, which are not labels "
                f"(labels: {self.label_names})"
            )
        return self

    # ---- views -------------------------------------------------------------------
    @property
    def dense(self) -> list[DenseFeature]:
        return [f for f in self.features if isinstance(f, DenseFeature)]

    @property
    def pretrained(self) -> list[PretrainedFeature]:
        return [f for f in self.features if isinstance(f, PretrainedFeature)]

    @property
    def categorical(self) -> list[CategoricalFeature]:
        return [f for f in self.features if isinstance(f, CategoricalFeature)]

    @property
    def sequences(self) -> list[SequenceFeature]:
        return [f for f in self.features if isinstance(f, SequenceFeature)]

    @property
    def label_names(self) -> list[str]:
        return [lb.name for lb in self.labels]

    @property
    def keep_label_names(self) -> list[str]:
        """Labels whose positive keeps a row through down-sampling (``sampling.keep_labels``,
        default: every served label); empty when nothing is down-sampled."""
        if self.sampling.negative_rate >= 1.0:
            return []
        if self.sampling.keep_labels is not None:
            return list(self.sampling.keep_labels)
        return [lb.name for lb in self.labels if lb.serve]

    def id_features(self) -> list[CategoricalFeature | CategoricalField]:
        """Every id-mapped column: categorical features and every sequence field."""
        out: list[CategoricalFeature | CategoricalField] = list(self.categorical)
        for seq in self.sequences:
            out.extend(seq.fields)
        return out

    def embedding_tables(self) -> dict[str, int]:
        """Shared table name -> number of rows (padding and OOV included)."""
        return {f.table_name: f.num_rows for f in self.id_features()}

    def source_columns(self) -> list[str]:
        """Every Parquet column the reader needs (features, labels, masks, sampling)."""
        cols: list[str] = [self.request_time]
        for f in self.features:
            if isinstance(f, SequenceFeature):
                cols.append(f.timestamp)
                cols.extend(fld.source for fld in f.fields)
            else:
                cols.append(f.source)
        for lb in self.labels:
            cols.append(lb.source)
            if lb.mask:
                cols.append(lb.mask)
        if self.sampling.inclusion_column:
            cols.append(self.sampling.inclusion_column)
        if self.weight_column:
            cols.append(self.weight_column)
        return list(dict.fromkeys(cols))

    def without_categories(self, categories: list[str] | tuple[str, ...]) -> FeatureSpec:
        """A copy with every feature of the named categories removed (Figure 6 ablation)."""
        known = {c.value for c in FeatureCategory}
        unknown = sorted(set(categories) - known)
        if unknown:
            raise SpecError(f"unknown feature category {unknown}; known: {sorted(known)}")
        keep = [f for f in self.features if f.category.value not in set(categories)]
        return self.model_copy(update={"features": keep})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, data: object, source: str = "<spec>") -> FeatureSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise SpecError(_describe(err, data, source)) from None


def _entry_name(data: object, loc: tuple[int | str, ...]) -> str:
    """Human path of a validation error: ``features[3] ('age')``."""
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            node = node[key]
            label = node.get("name") if isinstance(node, dict) else None
            parts[-1] = f"{parts[-1]}[{key}]" + (f" ({label!r})" if label else "")
        elif isinstance(key, str):
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif key in {"dense", "pretrained", "categorical", "sequence"}:
                continue  # pydantic's union branch tag, not a path element
            parts.append(key)
    return ".".join(parts) or "spec"


def _describe(err: ValidationError, data: object, source: str) -> str:
    lines = [f"invalid feature spec {source}:"]
    for e in err.errors():
        where = _entry_name(data, tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "union_tag_invalid":
            msg = f"unknown role {(e.get('ctx') or {}).get('tag')!r}; expected one of dense, pretrained, categorical, sequence"
        elif e["type"] == "union_tag_not_found":
            msg = "missing 'role' (one of dense, pretrained, categorical, sequence)"
        elif e["type"] == "missing" and e["loc"] and e["loc"][-1] == "timestamp":
            msg = "a sequence needs a 'timestamp' list column"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def load_spec(path: str | Path) -> FeatureSpec:
    """Read and validate a spec YAML; raises :class:`SpecError` naming the bad entry."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"feature spec {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"feature spec {p} is not valid YAML: {err}") from None
    return FeatureSpec.from_dict(data, str(p))
