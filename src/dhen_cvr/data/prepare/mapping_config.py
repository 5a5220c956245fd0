"""The mapping YAML that turns a raw log into the section 2 format (pydantic, extra=forbid).

Two kinds, told apart by ``kind:``:

``kind: events`` (:class:`EventMapping`, ``prepare-events``): an event log with one row
per (user, item, event type, time). One example is written per *exposure* event
(``exposure``: one event type or a list); labels are later events of the same (user,
item) or a ``condition`` on the exposure row's own value (``rating >= 4``); sequences
are the user's earlier events::

    kind: events
    name: taobao-userbehavior
    source: {format: csv, column_names: [user_id, item_id, category_id, behavior, timestamp]}
    columns: {user: user_id, item: item_id, event: behavior, timestamp: timestamp,
              item_attributes: {category: category_id}}
    time: {unit: s, timezone: "+08:00", first_day: 2017-11-25, last_day: 2017-12-03}
    event_types: [pv, cart, fav, buy]
    exposure: pv
    labels:
      - {name: buy, events: [buy], window: 24h}
    sequences:
      - {name: org, events: [pv], max_len: 50, fields: [item, category]}
    counts:
      - {name: n_pv_1d, events: [pv], window: 1d, scope: user}

``kind: table`` (:class:`TableMapping`, ``prepare-table``): a flat impression table with a
click and a conversion column, categorical id columns and dense columns (Ali-CCP).

Durations are an integer number of seconds or a string ``<n>s|m|h|d`` (``90m``, ``24h``,
``7d``). Timezones are IANA names (``Asia/Shanghai``) or fixed offsets (``+08:00``).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dhen_cvr.data.spec import FeatureCategory
from dhen_cvr.errors import DhenCvrError

__all__ = [
    "ColumnsConfig",
    "CountRule",
    "DownSampling",
    "EventMapping",
    "HashConfig",
    "LabelRule",
    "MappingError",
    "NegativeSampling",
    "SequenceRule",
    "SourceConfig",
    "TableColumn",
    "TableMapping",
    "TimeConfig",
    "ValueCondition",
    "load_mapping",
    "load_preset",
    "parse_timezone",
    "preset_names",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_OFFSET = re.compile(r"^(?:UTC)?([+-])(\d{1,2})(?::?(\d{2}))?$")


class MappingError(DhenCvrError):
    """A mapping YAML or preset that cannot be used; the message names the bad entry."""


def _parse_duration(value: object) -> object:
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"cannot read duration {value!r}; use seconds or e.g. 90m, 24h, 7d")
        return int(m[1]) * _UNITS[m[2]]
    return value


Duration = Annotated[int, BeforeValidator(_parse_duration), Field(gt=0)]
"""Seconds; YAML may say ``24h``."""


def parse_timezone(name: str) -> dt.tzinfo:
    """``UTC``, ``+08:00``, ``UTC+8`` or an IANA name -> tzinfo."""
    if name.upper() == "UTC":
        return dt.timezone.utc
    m = _OFFSET.match(name)
    if m:
        minutes = int(m[2]) * 60 + int(m[3] or 0)
        sign = -1 if m[1] == "-" else 1
        return dt.timezone(sign * dt.timedelta(minutes=minutes))
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r}; use an IANA name or an offset like +08:00"
        ) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """How to read the files. ``format: auto`` picks by extension (``.parquet``/``.pq``
    -> Parquet, anything else -> CSV, ``.gz``/``.bz2``/``.zst`` decompressed).
    ``column_names`` is for CSV files without a header row. ``id_type`` forces the user,
    item and attribute columns to ``int`` or ``string`` (``auto``: as the reader infers
    from the first block)."""

    format: Literal["auto", "csv", "parquet"] = "auto"
    column_names: list[str] | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    id_type: Literal["auto", "int", "string"] = "auto"


class ColumnsConfig(_Strict):
    """Source column names. ``item_attributes`` maps an attribute name (used for output
    columns: ``item_<name>``, ``<sequence>_<name>``) to its source column."""

    user: str
    item: str
    event: str
    timestamp: str
    item_attributes: dict[str, str] = Field(default_factory=dict)

    def source_columns(self) -> list[str]:
        return list(
            dict.fromkeys(
                [self.user, self.item, self.event, self.timestamp, *self.item_attributes.values()]
            )
        )


class TimeConfig(_Strict):
    """Timestamps: numeric unix time in ``unit``, or strings parsed with the strptime
    ``format`` as local time in ``timezone``. Output days (``dt=``) and the window are in
    ``timezone``. Events before ``first_day`` 00:00 or from ``last_day + 1`` 00:00 on are
    dropped and counted (``out_of_window``); both ends are inclusive days."""

    unit: Literal["s", "ms", "us", "ns"] = "s"
    format: str | None = None
    timezone: str = "UTC"
    first_day: dt.date | None = None
    last_day: dt.date | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        parse_timezone(value)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> TimeConfig:
        if self.first_day and self.last_day and self.last_day < self.first_day:
            raise ValueError(f"last_day {self.last_day} is before first_day {self.first_day}")
        return self

    @property
    def tz(self) -> dt.tzinfo:
        return parse_timezone(self.timezone)

    def window_seconds(self) -> tuple[int | None, int | None]:
        """Unix seconds ``[start, end)`` of the window (None = open)."""

        def midnight(day: dt.date) -> int:
            return int(dt.datetime.combine(day, dt.time(), tzinfo=self.tz).timestamp())

        start = midnight(self.first_day) if self.first_day else None
        end = midnight(self.last_day + dt.timedelta(days=1)) if self.last_day else None
        return start, end


class ValueCondition(_Strict):
    """A test on the exposure row's own ``column`` (a source column of the log):
    ``column op value``, e.g. ``{column: rating, op: ">=", value: 4}``. Ordering ops need
    numbers; ``==`` / ``!=`` also take strings. A null value fails the test."""

    column: str
    op: Literal["==", "!=", ">", ">=", "<", "<="]
    value: float | str

    @model_validator(mode="after")
    def _numeric_order(self) -> ValueCondition:
        if isinstance(self.value, str) and self.op not in ("==", "!="):
            raise ValueError(f"op {self.op!r} needs a number, got {self.value!r}")
        return self


class LabelRule(_Strict):
    """One head, defined by exactly one of:

    - ``events``: 1 when the same user has one of these events on the same item at a
      time ``t`` with ``exposure_ts <= t <= exposure_ts + window`` (both ends inclusive:
      one second after the window closes is a negative);
    - ``condition``: 1 when the exposure row's own value passes the test
      (:class:`ValueCondition`, e.g. ``rating >= 4``); 0 on sampled negatives;
    - ``exposure: true``: 1 on every real exposure, 0 on sampled negatives (needs
      ``negatives``).

    ``mask`` names another label: this head is defined only where that label is 1."""

    name: str
    events: list[str] = Field(default_factory=list)
    window: Duration = 86400
    exposure: bool = False
    condition: ValueCondition | None = None
    mask: str | None = None
    serve: bool = True

    @model_validator(mode="after")
    def _one_definition(self) -> LabelRule:
        if bool(self.events) + self.exposure + (self.condition is not None) != 1:
            raise ValueError(
                "give exactly one of 'events' (a list), 'condition' or 'exposure: true'"
            )
        return self


class SequenceRule(_Strict):
    """A named behaviour sequence: the user's events of ``events`` types strictly before
    the exposure time, oldest first, cut to the newest ``max_len``. ``fields`` per item:
    ``item`` (the item id), ``event`` (the event type, an id in ``event_types`` order) or
    an item attribute name."""

    name: str
    events: list[str] = Field(min_length=1)
    max_len: int = Field(default=50, gt=0)
    fields: list[str] = Field(default_factory=lambda: ["item"], min_length=1)


class CountRule(_Strict):
    """A counting feature (paper 2.3): how many of the user's ``events`` fell in
    ``[exposure_ts - window, exposure_ts)``. ``scope``: ``user`` (all items), ``item``
    (the exposed item) or an item attribute name (items sharing the exposed item's
    attribute, e.g. its category). Written as a dense feature, category ``counting``."""

    name: str
    events: list[str] = Field(min_length=1)
    window: Duration
    scope: str = "user"


class NegativeSampling(_Strict):
    """For logs with no negative exposures: ``per_exposure`` random items per exposure
    (drawn popularity-proportionally from the exposure events of users in the same hash
    bucket), skipping items the user ever interacted with; all event labels are 0."""

    per_exposure: int = Field(gt=0)


class DownSampling(_Strict):
    """Keep label-negative rows (every label in ``labels`` is 0; default: all event
    labels) with probability ``negative_rate``; kept rows get ``sample_rate`` = their
    inclusion probability and the spec records the rate (paper 5.1)."""

    negative_rate: float = Field(gt=0, le=1)
    labels: list[str] | None = None


class HashConfig(_Strict):
    """Hash buckets per id kind (``user``, ``item``, ``event`` is a vocabulary, or an
    attribute name / table column): an int, or ``auto`` = the next power of two >=
    ``factor`` x distinct ids seen, clamped to ``[min_buckets, max_buckets]``."""

    buckets: dict[str, int | Literal["auto"]] = Field(default_factory=dict)
    factor: float = Field(default=4.0, ge=1)
    min_buckets: int = Field(default=16, gt=0)
    max_buckets: int = Field(default=1 << 21, gt=0)

    def size(self, kind: str, distinct: int) -> int:
        fixed = self.buckets.get(kind, "auto")
        if fixed != "auto":
            return int(fixed)
        want = max(1, int(self.factor * max(distinct, 1)))
        return int(min(self.max_buckets, max(self.min_buckets, 1 << (want - 1).bit_length())))


class EventMapping(_Strict):
    """``prepare-events`` mapping: see the module docstring."""

    kind: Literal["events"] = "events"
    name: str = "events"
    source: SourceConfig = SourceConfig()
    columns: ColumnsConfig
    time: TimeConfig = TimeConfig()
    event_types: list[str] = Field(min_length=1)
    exposure: str | list[str]
    labels: list[LabelRule] = Field(min_length=1)
    sequences: list[SequenceRule] = Field(default_factory=list)
    counts: list[CountRule] = Field(default_factory=list)
    negatives: NegativeSampling | None = None
    downsample: DownSampling | None = None
    user_feature: bool = True
    hashing: HashConfig = HashConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> EventMapping:
        known = set(self.event_types)
        dup = [e for e, c in Counter(self.event_types).items() if c > 1]
        if dup:
            raise ValueError(f"event_types lists {dup} more than once")
        attrs = set(self.columns.item_attributes)
        if attrs & {"item", "event", "user"}:
            raise ValueError("item_attributes may not be named 'item', 'event' or 'user'")

        def check_events(where: str, events: list[str]) -> None:
            bad = [e for e in events if e not in known]
            if bad:
                raise ValueError(
                    f"{where}: event type(s) {bad} not in event_types {self.event_types}"
                )

        if not self.exposure_types:
            raise ValueError("exposure: give an event type or a list of them")
        check_events("exposure", self.exposure_types)
        label_names = [lb.name for lb in self.labels]
        for lb in self.labels:
            check_events(f"labels[{lb.name!r}]", lb.events)
            if lb.exposure and self.negatives is None:
                raise ValueError(
                    f"labels[{lb.name!r}]: 'exposure: true' is 1 on every row unless "
                    "'negatives' sampling is on"
                )
            if lb.mask is not None and (lb.mask not in label_names or lb.mask == lb.name):
                raise ValueError(f"labels[{lb.name!r}]: mask {lb.mask!r} is not another label")
        for seq in self.sequences:
            check_events(f"sequences[{seq.name!r}]", seq.events)
            bad = [f for f in seq.fields if f not in {"item", "event"} | attrs]
            if bad:
                raise ValueError(
                    f"sequences[{seq.name!r}]: unknown field(s) {bad}; use item, event or an "
                    f"item attribute {sorted(attrs)}"
                )
        for cnt in self.counts:
            check_events(f"counts[{cnt.name!r}]", cnt.events)
            if cnt.scope not in {"user", "item"} | attrs:
                raise ValueError(
                    f"counts[{cnt.name!r}]: scope {cnt.scope!r} is not user, item or an item "
                    f"attribute {sorted(attrs)}"
                )
        if self.downsample and self.downsample.labels:
            bad = [n for n in self.downsample.labels if n not in label_names]
            if bad:
                raise ValueError(f"downsample.labels: {bad} are not labels {label_names}")
        if self.source.column_names is not None:
            missing = [c for c in self.source_columns() if c not in self.source.column_names]
            if missing:
                raise ValueError(f"columns {missing} are not in source.column_names")
        outputs = self.output_columns()
        clash = [n for n, c in Counter(outputs).items() if c > 1]
        if clash:
            raise ValueError(f"output column name(s) {clash} used twice; rename a label/count")
        return self

    # ---- derived names -----------------------------------------------------------
    @property
    def exposure_types(self) -> list[str]:
        """The event types that are exposures (one example each)."""
        return [self.exposure] if isinstance(self.exposure, str) else list(self.exposure)

    @property
    def condition_labels(self) -> list[LabelRule]:
        return [lb for lb in self.labels if lb.condition is not None]

    def source_columns(self) -> list[str]:
        """Every source column read: the mapped ones, then label condition columns."""
        conditions = [lb.condition.column for lb in self.labels if lb.condition is not None]
        return list(dict.fromkeys([*self.columns.source_columns(), *conditions]))

    @property
    def attributes(self) -> list[str]:
        return list(self.columns.item_attributes)

    @staticmethod
    def item_column(attr: str | None = None) -> str:
        """Output column of the candidate item id (``item_id``) or attribute (``item_<a>``)."""
        return "item_id" if attr is None else f"item_{attr}"

    @staticmethod
    def sequence_column(seq: str, field: str) -> str:
        return f"{seq}_{field}"

    @property
    def downsample_labels(self) -> list[str]:
        if self.downsample is None:
            return []
        if self.downsample.labels:
            return list(self.downsample.labels)
        return [lb.name for lb in self.labels if not lb.exposure]  # events and conditions

    def output_columns(self) -> list[str]:
        cols = ["ts", "user_id", self.item_column()]
        cols += [self.item_column(a) for a in self.attributes]
        for seq in self.sequences:
            cols.append(self.sequence_column(seq.name, "ts"))
            cols += [self.sequence_column(seq.name, f) for f in seq.fields]
        cols += [c.name for c in self.counts]
        cols += [lb.name for lb in self.labels]
        if self.downsample is not None:
            cols.append("sample_rate")
        return cols


class TableColumn(_Strict):
    """One feature column of a flat table. ``name`` is the output column and feature
    name (default: ``column``)."""

    column: str
    name: str | None = None
    category: FeatureCategory
    log1p: bool = False

    @property
    def out(self) -> str:
        return self.name or self.column


class TableMapping(_Strict):
    """``prepare-table`` mapping for flat impression tables (Ali-CCP style).

    ``click`` / ``conversion`` name 0/1 label columns (output names ``click_label`` /
    ``conversion_label``, default: the source names). ``user`` optionally names the
    user-id *feature* (by output name) used as the spec's ``user_id``.
    """

    kind: Literal["table"] = "table"
    name: str = "table"
    click: str
    conversion: str
    click_label: str | None = None
    conversion_label: str | None = None
    categorical: list[TableColumn] = Field(default_factory=list)
    dense: list[TableColumn] = Field(default_factory=list)
    user: str | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    hashing: HashConfig = HashConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TableMapping:
        outs = [*self.label_names, *(c.out for c in self.categorical), *(c.out for c in self.dense)]
        clash = [n for n, c in Counter([*outs, "ts"]).items() if c > 1]
        if clash:
            raise ValueError(f"output column name(s) {clash} used twice")
        srcs = [self.click, self.conversion, *(c.column for c in self.categorical + self.dense)]
        dup = [n for n, c in Counter(srcs).items() if c > 1]
        if dup:
            raise ValueError(f"source column(s) {dup} mapped twice")
        if self.user is not None and self.user not in {c.out for c in self.categorical}:
            raise ValueError(f"user {self.user!r} is not a categorical column's output name")
        return self

    @property
    def label_names(self) -> list[str]:
        return [self.click_label or self.click, self.conversion_label or self.conversion]

    def source_columns(self) -> list[str]:
        return [self.click, self.conversion, *(c.column for c in self.categorical + self.dense)]


Mapping = EventMapping | TableMapping


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid mapping {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "mapping"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def _parse(data: object, source: str) -> Mapping:
    if not isinstance(data, dict):
        raise MappingError(f"mapping {source} must be a YAML mapping, got {type(data).__name__}")
    kind = data.get("kind", "events")
    model: type[EventMapping] | type[TableMapping]
    if kind == "events":
        model = EventMapping
    elif kind == "table":
        model = TableMapping
    else:
        raise MappingError(f"mapping {source}: kind must be 'events' or 'table', got {kind!r}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise MappingError(_describe(err, source)) from None


def _read_yaml(text: str, source: str) -> Mapping:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MappingError(f"mapping {source} is not valid YAML: {err}") from None
    return _parse(data, source)


def load_mapping(path: str | Path) -> Mapping:
    """Read and validate a mapping YAML (``kind: events`` or ``kind: table``)."""
    p = Path(path)
    if not p.is_file():
        raise MappingError(f"mapping {p} does not exist")
    return _read_yaml(p.read_text(), str(p))


def preset_names() -> list[str]:
    """Names of the built-in presets (``dhen_cvr/data/prepare/presets/*.yaml``)."""
    root = resources.files("dhen_cvr.data.prepare.presets")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> Mapping:
    """A built-in mapping by name (``taobao``, ``aliccp``)."""
    if name not in preset_names():
        raise MappingError(f"unknown preset {name!r}; built-in presets: {preset_names()}")
    text = (resources.files("dhen_cvr.data.prepare.presets") / f"{name}.yaml").read_text()
    return _read_yaml(text, f"preset {name!r}")
