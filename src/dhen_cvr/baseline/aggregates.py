"""Spec-derived features for the GBDT baseline (DESIGN 6b): a :class:`Batch` -> numpy.

Everything is derived from the feature spec alone (roles, categories, shared embedding
tables, vocabulary sizes), never from knowledge of how the data was generated. Columns,
in this order (names readable, and legal LightGBM feature names):

flat
    every dense column as logged (``user_age``); every pretrained component
    (``user_emb.3``); every categorical id as mapped by the reader (``ad_id``), a LightGBM
    categorical when its table has at most ``max_categorical_rows`` rows, a plain
    integer otherwise; ``request.hour`` (UTC hour of an integer request time, when the
    caller passes the request times); the dot product and cosine of every user-side
    pretrained vector with every candidate-side one of the same width
    (``dot.user_emb.ad_emb``, ``cos.user_emb.ad_emb``).
per sequence ``S``
    ``S.length``; ``S.count_<w>`` (items younger than each window ``w``);
    ``S.age_newest`` (seconds; :data:`NONE_AGE` when empty); ``S.newest.<field>`` (the
    newest item's small-table fields, categorical); ``S.<field>=<v>.count_<w>`` (items
    with a small-vocabulary field, e.g. an action type, equal to raw value ``v``).
candidate-matched, for each sequence field that shares an embedding table with a
``candidate``-category categorical feature (``ads_advertiser`` and ``advertiser_id``)
    ``S.<field>=<cand>.count`` and ``.count_<w>`` (items whose id equals the
    candidate's), ``.age_last`` (seconds since the newest such item, :data:`NONE_AGE`
    when none) and, per small-vocabulary field of the same sequence,
    ``S.<field>=<cand>.<small>=<v>.count`` / ``.count_<w>`` / ``.age_last``; plus
    ``same.<user feature>=<cand>`` (1 when a user-side categorical equals the
    candidate's id in a shared table, e.g. a predicted interest vs the ad's topic).

Ages come from the reader's time features (``expm1`` of ``log(request - t + 1)``,
rounded to whole seconds). Sequences hold the newest ``max_len`` items, so every count
is over those. Padding and out-of-vocabulary ids never match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dhen_cvr.data.batch import Batch, SequenceBatch
from dhen_cvr.data.spec import (
    USER_CATEGORIES,
    CategoricalFeature,
    CategoricalField,
    FeatureCategory,
    FeatureSpec,
    SequenceFeature,
)

__all__ = [
    "NONE_AGE",
    "FeatureBuilder",
    "FeatureConfig",
    "MatchedPair",
    "matched_pairs",
    "parse_window",
    "sequence_aggregates",
]

# "Never": the age of the newest (matching) item when there is none, in seconds (~32 years).
NONE_AGE = 1e9

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_WINDOW = re.compile(r"^(\d+)([smhdw])$")


def parse_window(text: str) -> int:
    """``"1h"`` -> 3600, ``"3d"`` -> 259200 (units s, m, h, d, w)."""
    m = _WINDOW.match(text.strip())
    if not m or int(m[1]) <= 0:
        raise ValueError(f"window {text!r} must look like 30m, 1h, 3d or 2w")
    return int(m[1]) * _UNITS[m[2]]


class FeatureConfig(BaseModel):
    """Which spec-derived columns to build; the defaults are the full baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sequence_windows: list[str] = Field(default=["1h", "1d", "3d", "7d"])
    matched_windows: list[str] = Field(default=["1d", "3d", "7d"])
    # Tables with at most this many rows (padding and OOV included) are LightGBM
    # categoricals; larger ones are plain integers.
    max_categorical_rows: int = Field(default=256, ge=2)
    # Sequence fields with at most this vocabulary split the counts by their value.
    split_max_vocab: int = Field(default=8, ge=0)
    sequence: bool = True  # per-sequence aggregates
    matched: bool = True  # candidate-matched aggregates (and same.* flags)
    pretrained_dot: bool = True  # dot / cosine of user x candidate pretrained vectors
    request_hour: bool = True  # request.hour when the request time is an integer

    @field_validator("sequence_windows", "matched_windows")
    @classmethod
    def _windows(cls, value: list[str]) -> list[str]:
        for w in value:
            parse_window(w)
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate window in {value}")
        return value


@dataclass(frozen=True)
class MatchedPair:
    """A sequence field that shares an embedding table with a candidate feature."""

    sequence: SequenceFeature
    field: CategoricalField
    candidate: CategoricalFeature

    @property
    def prefix(self) -> str:
        return f"{self.sequence.name}.{self.field.name}={self.candidate.name}"


def matched_pairs(spec: FeatureSpec) -> list[MatchedPair]:
    """Every (sequence, field, candidate feature) with the same ``table_name``."""
    candidates = [c for c in spec.categorical if c.category == FeatureCategory.candidate]
    return [
        MatchedPair(seq, fld, cand)
        for seq in spec.sequences
        for fld in seq.fields
        for cand in candidates
        if fld.table_name == cand.table_name
    ]


def _small_fields(seq: SequenceFeature, max_vocab: int) -> list[CategoricalField]:
    """Fields with a small integer vocabulary (action types): counts split by value."""
    return [f for f in seq.fields if f.vocab_size is not None and f.vocab_size <= max_vocab]


def _ages(seq: SequenceBatch) -> np.ndarray:
    """``B x T`` float64 item ages in whole seconds (:data:`NONE_AGE` at padding)."""
    age = np.rint(np.expm1(seq.time[..., 1].double().numpy()))
    return np.where(seq.mask.numpy(), age, NONE_AGE)


def _age_last(hit: np.ndarray, age: np.ndarray) -> np.ndarray:
    return np.where(hit, age, np.inf).min(axis=1, initial=np.inf).clip(max=NONE_AGE)


def _newest(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The newest item's id per row (0 = padding for an empty sequence)."""
    if ids.shape[1] == 0:
        return np.zeros(len(ids), np.int64)
    at = np.clip(lengths - 1, 0, None)
    return np.where(lengths > 0, np.take_along_axis(ids, at[:, None], axis=1)[:, 0], 0)


Columns = dict[str, np.ndarray]


class _SequenceGroup:
    """The columns of one sequence: its own aggregates and its candidate matches."""

    def __init__(
        self, seq: SequenceFeature, pairs: list[MatchedPair], config: FeatureConfig
    ) -> None:
        self.seq = seq
        self.pairs = pairs
        self.config = config
        self.windows = [(w, parse_window(w)) for w in config.sequence_windows]
        self.matched_windows = [(w, parse_window(w)) for w in config.matched_windows]
        self.small = _small_fields(seq, config.split_max_vocab)
        self.newest = [f for f in seq.fields if f.num_rows <= config.max_categorical_rows]

    def _counts(
        self,
        out: Columns,
        name: str,
        hit: np.ndarray,
        age: np.ndarray,
        windows: list[tuple[str, int]],
    ) -> None:
        for w, seconds in windows:
            out[f"{name}.count_{w}"] = (hit & (age <= seconds)).sum(axis=1)

    def own(self, s: SequenceBatch) -> Columns:
        name = self.seq.name
        mask, lengths = s.mask.numpy(), s.lengths.numpy()
        age = _ages(s)
        out: Columns = {f"{name}.length": lengths}
        self._counts(out, name, mask, age, self.windows)
        out[f"{name}.age_newest"] = _age_last(mask, age)
        for f in self.newest:
            out[f"{name}.newest.{f.name}"] = _newest(s.ids[f.name].numpy(), lengths)
        for f in self.small:
            ids = s.ids[f.name].numpy()
            assert f.vocab_size is not None
            for v in range(f.vocab_size):  # raw value v is mapped id v + 1
                self._counts(out, f"{name}.{f.name}={v}", mask & (ids == v + 1), age, self.windows)
        return out

    def matched(self, s: SequenceBatch, candidates: dict[str, np.ndarray]) -> Columns:
        mask = s.mask.numpy()
        age = _ages(s)
        out: Columns = {}
        for pair in self.pairs:
            cand = candidates[pair.candidate.name]
            oov = pair.candidate.num_rows - 1
            hit = mask & (s.ids[pair.field.name].numpy() == cand[:, None]) & (cand[:, None] != oov)
            self._matched(out, pair.prefix, hit, age)
            for f in self.small:
                if f.name == pair.field.name:
                    continue
                ids = s.ids[f.name].numpy()
                assert f.vocab_size is not None
                for v in range(f.vocab_size):
                    self._matched(out, f"{pair.prefix}.{f.name}={v}", hit & (ids == v + 1), age)
        return out

    def _matched(self, out: Columns, name: str, hit: np.ndarray, age: np.ndarray) -> None:
        out[f"{name}.count"] = hit.sum(axis=1)
        self._counts(out, name, hit, age, self.matched_windows)
        out[f"{name}.age_last"] = _age_last(hit, age)


def _candidate_ids(batch: Batch, spec: FeatureSpec) -> dict[str, np.ndarray]:
    return {
        c.name: batch.categorical[c.name].numpy()
        for c in spec.categorical
        if c.category == FeatureCategory.candidate
    }


def sequence_aggregates(
    batch: Batch, spec: FeatureSpec, config: FeatureConfig | None = None
) -> dict[str, np.ndarray]:
    """The per-sequence and candidate-matched columns of ``batch``, by name (``B`` each).

    Honours ``config.sequence`` / ``config.matched``; the flat columns are
    :class:`FeatureBuilder`'s."""
    config = config or FeatureConfig()
    pairs = matched_pairs(spec)
    cands = _candidate_ids(batch, spec)
    out: Columns = {}
    for seq in spec.sequences:
        group = _SequenceGroup(seq, [p for p in pairs if p.sequence.name == seq.name], config)
        s = batch.sequences[seq.name]
        if config.sequence:
            out.update(group.own(s))
        if config.matched:
            out.update(group.matched(s, cands))
    return out


@dataclass(frozen=True)
class _Block:
    names: list[str]
    categorical: list[str]
    compute: Callable[[Batch, np.ndarray | None], Columns]


class FeatureBuilder:
    """The baseline's feature matrix for a spec: ``names``, which of them are
    ``categorical``, and :meth:`transform` (a :class:`Batch` -> ``B x F`` float32).

    ``request_time``: whether :meth:`transform` will be given integer request times (unix
    seconds) for ``request.hour``."""

    def __init__(
        self, spec: FeatureSpec, config: FeatureConfig | None = None, *, request_time: bool = False
    ) -> None:
        self.spec = spec
        self.config = config = config or FeatureConfig()
        self.uses_request_time = request_time and config.request_hour
        self._blocks = self._plan()
        self.names = [n for b in self._blocks for n in b.names]
        self.categorical = [n for b in self._blocks for n in b.categorical]
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise ValueError(f"feature names collide: {dup}")

    # ---- planning: names from the spec, without data -------------------------------
    def _plan(self) -> list[_Block]:
        spec, config = self.spec, self.config
        blocks = [self._flat()]
        if config.pretrained_dot and (pairs := self._pretrained_pairs()):
            blocks.append(self._dots(pairs))
        if config.matched:
            blocks.append(self._same())
        if config.sequence or config.matched:
            # names: run the sequence code on an empty batch of the spec's shape
            empty = _empty_batch(spec)
            names = list(sequence_aggregates(empty, spec, config))
            small_rows = {
                f"{s.name}.newest.{f.name}"
                for s in spec.sequences
                for f in s.fields
                if f.num_rows <= config.max_categorical_rows
            }
            blocks.append(
                _Block(
                    names,
                    [n for n in names if n in small_rows],
                    lambda b, _t: sequence_aggregates(b, spec, config),
                )
            )
        return blocks

    def _flat(self) -> _Block:
        spec, config = self.spec, self.config
        names = [d.name for d in spec.dense]
        names += [f"{p.name}.{i}" for p in spec.pretrained for i in range(p.dim)]
        names += [c.name for c in spec.categorical]
        cat = [c.name for c in spec.categorical if c.num_rows <= config.max_categorical_rows]
        if self.uses_request_time:
            names.append("request.hour")
            cat.append("request.hour")

        def compute(batch: Batch, request_time: np.ndarray | None) -> Columns:
            out: Columns = {}
            dense = batch.dense.numpy()
            for j, d in enumerate(spec.dense):
                out[d.name] = dense[:, j]
            for p in spec.pretrained:
                vec = batch.pretrained[p.name].numpy()
                for i in range(p.dim):
                    out[f"{p.name}.{i}"] = vec[:, i]
            for c in spec.categorical:
                out[c.name] = batch.categorical[c.name].numpy()
            if self.uses_request_time:
                if request_time is None:
                    raise ValueError("this FeatureBuilder needs the request times")
                out["request.hour"] = (np.asarray(request_time, np.int64) % 86_400) // 3600
            return out

        return _Block(names, cat, compute)

    def _pretrained_pairs(self) -> list[tuple[str, str]]:
        user = [p for p in self.spec.pretrained if p.category.value in USER_CATEGORIES]
        cand = [p for p in self.spec.pretrained if p.category == FeatureCategory.candidate]
        return [(u.name, c.name) for u in user for c in cand if u.dim == c.dim]

    def _dots(self, pairs: list[tuple[str, str]]) -> _Block:
        names = [f"{kind}.{u}.{c}" for u, c in pairs for kind in ("dot", "cos")]

        def compute(batch: Batch, _t: np.ndarray | None) -> Columns:
            out: Columns = {}
            for u, c in pairs:
                a = batch.pretrained[u].double().numpy()
                b = batch.pretrained[c].double().numpy()
                dot = (a * b).sum(axis=1)
                norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                out[f"dot.{u}.{c}"] = dot
                out[f"cos.{u}.{c}"] = np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)
            return out

        return _Block(names, [], compute)

    def _same(self) -> _Block:
        spec = self.spec
        user = [c for c in spec.categorical if c.category.value in USER_CATEGORIES]
        cand = [c for c in spec.categorical if c.category == FeatureCategory.candidate]
        pairs = [(u, c) for u in user for c in cand if u.table_name == c.table_name]
        names = [f"same.{u.name}={c.name}" for u, c in pairs]

        def compute(batch: Batch, _t: np.ndarray | None) -> Columns:
            out: Columns = {}
            for u, c in pairs:
                a, b = batch.categorical[u.name].numpy(), batch.categorical[c.name].numpy()
                out[f"same.{u.name}={c.name}"] = (a == b) & (b != c.num_rows - 1)
            return out

        return _Block(names, [], compute)

    # ---- data -------------------------------------------------------------------
    def transform(self, batch: Batch, request_time: np.ndarray | None = None) -> np.ndarray:
        """``B x len(names)`` float32 (ids are exact below 2**24)."""
        out = np.empty((len(batch), len(self.names)), np.float32)
        j = 0
        for block in self._blocks:
            cols = block.compute(batch, request_time)
            if list(cols) != block.names:
                raise AssertionError("feature columns out of step with their names")
            for name in block.names:
                out[:, j] = cols[name]
                j += 1
        return out


def _empty_batch(spec: FeatureSpec) -> Batch:
    """A zero-row batch shaped like the reader's for ``spec`` (to list column names)."""
    import torch

    return Batch(
        dense=torch.zeros(0, len(spec.dense)),
        pretrained={p.name: torch.zeros(0, p.dim) for p in spec.pretrained},
        categorical={c.name: torch.zeros(0, dtype=torch.long) for c in spec.categorical},
        sequences={
            s.name: SequenceBatch(
                ids={f.name: torch.zeros(0, 1, dtype=torch.long) for f in s.fields},
                time=torch.zeros(0, 1, 2),
                mask=torch.zeros(0, 1, dtype=torch.bool),
                lengths=torch.zeros(0, dtype=torch.long),
            )
            for s in spec.sequences
        },
        labels=torch.zeros(0, len(spec.labels)),
        label_mask=torch.zeros(0, len(spec.labels)),
        inclusion_prob=torch.ones(0),
        weight=torch.ones(0),
    )
