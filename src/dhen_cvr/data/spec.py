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

Side tables and derived features (no rewriting of the logs)::

    lookups:                         # a Parquet file keyed by an id (path: relative to
      - {name: items, path: items.parquet, key: item_id, columns: [topic, advertiser]}
    features:                        # ... the spec's folder, or absolute)
      - {name: ad_topic, role: categorical, category: candidate, column: ad_id,
         lookup: items.topic, vocab_size: 24, table: topic}
      - {name: hour, role: categorical, category: context, derive: hour_of_day}
      - name: org                    # a sequence field may look its item up too
        ...
        fields:
          - {name: org_topic, column: org_item, lookup: items.topic, vocab_size: 24, table: topic}

``lookup: TABLE.COLUMN`` reads the id column (``column``, default the name), finds each id
in the side table's ``key`` and takes ``COLUMN`` (an id missing from the side table is
OOV). ``derive: hour_of_day | day_of_week`` computes the id from the request time (UTC
shifted by ``utc_offset_hours``; Monday is 0) and needs no column.

Categories decide what the paper's Figure 6 ablation drops (``train --set
model.drop_categories=[...]``): ``demographic`` (who the user is: age, gender, country),
``counting`` (how often the user did something: conversion counts), ``categorical``
(other user ids: a predicted interest), ``pretrained`` (user embedding vectors),
``sequence`` (behaviour sequences), ``candidate`` (the ad being scored: its id,
advertiser, embedding; never dropped by the user-side ablation) and ``context`` (the
request: hour, device, placement).

The data folder keeps the spec in ``_spec.yaml`` (underscore-prefixed: pyarrow,
DuckDB and Spark skip it when reading the folder); ``spec.yaml`` is still read, and
every command takes ``--spec PATH`` to use a spec kept elsewhere
(:func:`resolve_spec_path`).

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
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "LEGACY_SPEC_FILE",
    "SPEC_FILE",
    "USER_CATEGORIES",
    "CategoricalFeature",
    "CategoricalField",
    "DenseFeature",
    "FeatureCategory",
    "FeatureSpec",
    "LabelSpec",
    "LookupSpec",
    "PretrainedFeature",
    "SamplingSpec",
    "SequenceFeature",
    "SpecError",
    "load_data_spec",
    "load_spec",
    "resolve_spec_path",
]

SPEC_FILE = "_spec.yaml"  # skipped by Parquet dataset readers (leading underscore)
LEGACY_SPEC_FILE = "spec.yaml"
DERIVED_VOCAB = {"hour_of_day": 24, "day_of_week": 7}


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
    ``lookup: TABLE.COLUMN`` maps the column's ids through a side table of the spec's
    ``lookups`` first (the id's attribute is what gets embedded).
    """

    name: str
    vocab_size: int | None = Field(default=None, gt=0)
    hash_buckets: int | None = Field(default=None, gt=0)
    table: str | None = None
    embedding_dim: int | None = Field(default=None, gt=0)
    lookup: str | None = Field(default=None, pattern=r"^[^.]+\.[^.]+$")

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
    """An id (int or string) with a learned embedding; or, with ``derive``, an id
    computed from the request time (``hour_of_day``: 0..23, ``day_of_week``: 0..6 with
    Monday 0, in UTC shifted by ``utc_offset_hours``; ``vocab_size`` defaults to 24 / 7)."""

    role: Literal["categorical"]
    category: FeatureCategory
    column: str | None = None
    derive: Literal["hour_of_day", "day_of_week"] | None = None
    utc_offset_hours: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _derived_vocab(cls, data: object) -> object:
        if (
            isinstance(data, dict)
            and data.get("derive") in DERIVED_VOCAB
            and data.get("vocab_size") is None
            and data.get("hash_buckets") is None
        ):
            data = {**data, "vocab_size": DERIVED_VOCAB[data["derive"]]}
        return data

    @model_validator(mode="after")
    def _derived_has_no_column(self) -> CategoricalFeature:
        if self.derive is not None and (self.column is not None or self.lookup is not None):
            raise ValueError(
                "a derived feature is computed from the request time: drop column/lookup"
            )
        if self.utc_offset_hours is not None and self.derive is None:
            raise ValueError("utc_offset_hours only applies to a derived (derive:) feature")
        return self

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


class LookupSpec(_Strict):
    """A side table: a Parquet file with one row per ``key`` value and attribute
    ``columns`` (e.g. item -> topic, advertiser). ``path`` is relative to the spec's
    folder unless absolute (:func:`load_spec` makes it absolute)."""

    name: str = Field(pattern=r"^[^.]+$")
    path: str
    key: str
    columns: list[str] = Field(min_length=1)


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
    lookups: list[LookupSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lookups_exist(self) -> FeatureSpec:
        known = {lk.name: lk for lk in self.lookups}
        if len(known) != len(self.lookups):
            raise ValueError("duplicate lookup name(s)")
        for item in self.id_features():
            if item.lookup is None:
                continue
            table, column = item.lookup.split(".")
            if table not in known:
                raise ValueError(
                    f"feature {item.name!r}: lookup {item.lookup!r} names no entry of "
                    f"lookups (known: {sorted(known)})"
                )
            if column not in known[table].columns:
                raise ValueError(
                    f"feature {item.name!r}: lookup {item.lookup!r}: {column!r} is not one of "
                    f"the columns {known[table].columns} of lookup {table!r}"
                )
        return self

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

    def lookup_of(
        self, item: CategoricalFeature | CategoricalField
    ) -> tuple[LookupSpec, str] | None:
        """(side table, attribute column) of an id feature with ``lookup``, else None."""
        if item.lookup is None:
            return None
        table, column = item.lookup.split(".")
        return next(lk for lk in self.lookups if lk.name == table), column

    def with_lookup_paths_from(self, base: str | Path) -> FeatureSpec:
        """A copy whose relative lookup paths are made absolute against folder ``base``."""
        if not self.lookups:
            return self
        lookups = [
            lk.model_copy(update={"path": str((Path(base) / lk.path).resolve())})
            for lk in self.lookups
        ]
        return self.model_copy(update={"lookups": lookups})

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
            elif not (isinstance(f, CategoricalFeature) and f.derive is not None):
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

    def with_ssl_targets(self, targets: Mapping[str, str]) -> FeatureSpec:
        """A copy whose named sequences predict the given field in the self-supervised
        loss (``{sequence: field}``, e.g. ``{org: org_topic}``), the others unchanged."""
        sequences = {s.name: s for s in self.sequences}
        unknown = sorted(set(targets) - set(sequences))
        if unknown:
            raise SpecError(
                f"ssl_targets names unknown sequences {unknown}; known: {sorted(sequences)}"
            )
        for name, field in targets.items():
            fields = [f.name for f in sequences[name].fields]
            if field not in fields:
                raise SpecError(
                    f"ssl_targets: {field!r} is not a field of sequence {name!r}; "
                    f"its fields: {fields}"
                )
        features = [
            f.model_copy(update={"target_field": targets[f.name]})
            if isinstance(f, SequenceFeature) and f.name in targets
            else f
            for f in self.features
        ]
        return self.model_copy(update={"features": features})

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        if not data.get("lookups"):
            data.pop("lookups", None)
        return yaml.safe_dump(data, sort_keys=False)

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
    return FeatureSpec.from_dict(data, str(p)).with_lookup_paths_from(p.parent)


def resolve_spec_path(data_dir: str | Path, spec: str | Path | None = None) -> Path:
    """The spec file of a data folder: ``spec`` when given (a file, or a folder holding
    one), else ``DATA/_spec.yaml``, else the legacy ``DATA/spec.yaml``."""
    if spec is not None:
        path = Path(spec)
        if path.is_dir():
            found = _spec_in(path)
            if found is None:
                raise SpecError(
                    f"--spec {path} is a folder without {SPEC_FILE} or {LEGACY_SPEC_FILE}"
                )
            return found
        if not path.is_file():
            raise SpecError(f"feature spec {path} does not exist")
        return path
    found = _spec_in(Path(data_dir))
    if found is None:
        raise SpecError(
            f"{data_dir} has no {SPEC_FILE} (or {LEGACY_SPEC_FILE}); pass --spec PATH, or "
            f"draft one with: dhen-cvr init-spec {data_dir} --out {Path(data_dir) / SPEC_FILE}"
        )
    return found


def _spec_in(folder: Path) -> Path | None:
    for name in (SPEC_FILE, LEGACY_SPEC_FILE):
        if (folder / name).is_file():
            return folder / name
    return None


def load_data_spec(data_dir: str | Path, spec: str | Path | None = None) -> FeatureSpec:
    """:func:`load_spec` of :func:`resolve_spec_path` (``--spec`` or the data folder's)."""
    return load_spec(resolve_spec_path(data_dir, spec))
