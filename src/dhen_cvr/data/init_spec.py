"""Draft a feature spec from a Parquet folder the project did not write (``dhen-cvr
init-spec``).

The draft comes from the Parquet schema, the column statistics in the footers of a
sample of files (min / max / nulls of every row group, also of list elements) and the
values of a few sampled row groups (list lengths, distinct strings, vector sizes).
Roles are guessed from the Arrow types:

==============================================  ======================================
column                                          drafted as
==============================================  ======================================
float scalar                                    ``dense`` (``log1p`` when count-like)
int / string / bool scalar                      ``categorical``: ``vocab_size`` = max
                                                id + 1, or ``hash_buckets`` (strings,
                                                negative or huge ids)
fixed-size float list (or constant length)      ``pretrained`` with its ``dim``
``P_ts`` / ``P_time`` / ``P_timestamp`` int     ``sequence`` ``P``; every other list
list + other ``P_*`` list columns               ``P_*`` column is one of its fields
0/1 int column named like a label               ``labels`` (click-like: ``serve: false``)
``sample_rate``-like float in (0, 1]            ``sampling.inclusion_column``
==============================================  ======================================

Every guess carries a ``# guessed:`` comment (roles, categories, vocab sizes, shared
tables); columns left out get a ``# dropped:`` line. Categories follow name patterns
and are the guesses most worth confirming (they decide the Figure 6 ablation).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from dhen_cvr.data.decode import parquet_files
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.data.writer import day_dirs
from dhen_cvr.errors import DhenCvrError

__all__ = ["ColumnProfile", "SpecDraft", "draft_spec", "profile_columns"]

HASH_ABOVE = 2_000_000  # ids at or above this (max id + 1) are hashed, not given a row each
_TIME_NAMES = (
    "ts",
    "timestamp",
    "request_time",
    "request_ts",
    "time",
    "event_time",
    "impression_time",
)
_USER_NAMES = ("user_id", "uid", "userid", "user")
_NOT_FEATURES = {  # name pattern -> why it is left out (a day key or a per-row id)
    re.compile(r"^(dt|date|day|ds|partition|part)$"): "looks like the day partition",
    re.compile(r"(^|_)(request|impression|imp|event|row|log|trace|session)_?id$"): (
        "looks like a per-row id (an embedding of it learns nothing that generalises)"
    ),
}
_INCLUSION = re.compile(r"(sample|sampling|inclusion|keep)_?(rate|prob|probability|weight)?$")
_SEQ_TIME = re.compile(r"^(?P<prefix>.+?)_(ts|time|times|timestamp|timestamps)$")
_LABEL_WORDS = {
    "click", "clicked", "conversion", "conv", "convert", "converted", "purchase", "buy",
    "bought", "checkout", "signup", "register", "install", "cart", "order", "lead",
    "subscribe", "label", "target", "like", "share", "follow", "download",
}  # fmt: skip
_CTR_WORDS = {"click", "clicked", "ctr"}
_CANDIDATE = re.compile(
    r"(^|_)(ad|ads|advertiser|item|campaign|creative|product|offer|cand|candidate|adgroup)(_|$)"
)
_CONTEXT = re.compile(
    r"(^|_)(hour|day|weekday|dow|device|os|page|slot|position|pos|placement|context|surface|app|browser|network|req|request)(_|$)"
)
_DEMOGRAPHIC = re.compile(
    r"(^|_)(age|gender|sex|country|city|region|language|lang|locale|zip|state|income|occupation)(_|$)"
)
_COUNTING = re.compile(r"(^n_|^num_|_num_|count|cnt|_n_|^total_|_total$|_\d+d$)")


# ---- what the files say about each column ----------------------------------------------
@dataclass
class ColumnProfile:
    """What the footers and a sample say about one top-level column."""

    name: str
    type: pa.DataType
    min: Any = None
    max: Any = None
    nulls: int = 0
    stats_complete: bool = True  # every sampled row group had min/max
    max_len: int = 0  # lists: longest list in the sample
    lengths: set[int] = field(default_factory=set)  # lists: distinct lengths in the sample
    distinct: int = 0  # strings: distinct values in the sample
    sample_min: Any = None
    sample_max: Any = None

    @property
    def value_type(self) -> pa.DataType:
        t = self.type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if _is_list(t):
            t = t.value_type
            if pa.types.is_dictionary(t):
                t = t.value_type
        return t

    @property
    def lo(self) -> Any:
        return self.min if self.stats_complete and self.min is not None else self.sample_min

    @property
    def hi(self) -> Any:
        return self.max if self.stats_complete and self.max is not None else self.sample_max


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


def _spread(items: list[Path], k: int) -> list[Path]:
    if len(items) <= k:
        return items
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


def _merge(a: Any, b: Any, fn: Any) -> Any:
    return b if a is None else a if b is None else fn(a, b)


def profile_columns(
    root: str | Path, *, max_files: int = 200, sample_files: int = 8
) -> tuple[list[ColumnProfile], int]:
    """Profile every column of the first file's schema from the footers of up to
    ``max_files`` files (spread over the days) and the first row group of
    ``sample_files`` of them; returns (profiles in schema order, files read)."""
    root = Path(root)
    if not root.is_dir():
        raise DhenCvrError(f"data folder {root} does not exist")
    files = _spread(parquet_files(day_dirs(root) or [root]), max_files)
    try:
        schema = pq.read_schema(files[0])
    except (pa.ArrowException, OSError) as err:
        raise DhenCvrError(f"{files[0]}: not a readable Parquet file ({err})") from None
    profiles = {f.name: ColumnProfile(f.name, f.type) for f in schema}
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowException, OSError) as err:
            raise DhenCvrError(f"{path}: not a readable Parquet file ({err})") from None
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                top = col.path_in_schema.split(".", 1)[0]
                prof = profiles.get(top)
                if prof is None:
                    continue
                st = col.statistics
                if st is None or not st.has_min_max:
                    prof.stats_complete = False
                else:
                    try:
                        prof.min = _merge(prof.min, st.min, min)
                        prof.max = _merge(prof.max, st.max, max)
                    except TypeError:  # leaves of different types (a struct column)
                        prof.stats_complete = False
                if st is not None and st.has_null_count and "." not in col.path_in_schema:
                    prof.nulls += st.null_count
    for path in _spread(files, sample_files):
        table = pq.ParquetFile(path).read_row_group(0)
        for prof in profiles.values():
            if prof.name in table.column_names:
                _sample(prof, table.column(prof.name).combine_chunks())
    return list(profiles.values()), len(files)


def _sample(prof: ColumnProfile, arr: pa.Array) -> None:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if _is_list(arr.type):
        if pa.types.is_fixed_size_list(arr.type):
            lengths = np.full(len(arr), arr.type.list_size)
        else:
            lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
        prof.lengths.update(int(x) for x in np.unique(lengths[np.asarray(arr.is_valid())]))
        prof.max_len = max(prof.max_len, int(lengths.max(initial=0)))
        arr = arr.flatten()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
    if _is_str(arr.type):
        prof.distinct = max(prof.distinct, int(pc.count_distinct(arr).as_py()))
    elif len(arr) and (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        mm = pc.min_max(arr).as_py()
        prof.sample_min = _merge(prof.sample_min, mm["min"], min)
        prof.sample_max = _merge(prof.sample_max, mm["max"], max)


# ---- the draft ----------------------------------------------------------------------------
@dataclass
class _Entry:
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # "# guessed: ..." lines


@dataclass
class SpecDraft:
    """A drafted spec: ``text`` (commented YAML), ``spec`` (the parsed spec), counts."""

    text: str
    spec: FeatureSpec
    guesses: int
    dropped: list[str]
    files_read: int


def _tokens(name: str) -> set[str]:
    return set(name.lower().split("_"))


def _is_label(p: ColumnProfile) -> bool:
    t = p.type
    if not (pa.types.is_boolean(t) or _is_int(t)):
        return False
    if not pa.types.is_boolean(t) and (p.lo is None or p.lo < 0 or p.hi is None or p.hi > 1):
        return False
    name = p.name.lower()
    return bool(_tokens(name) & _LABEL_WORDS) or name.startswith(("is_", "y_", "label"))


def _category(name: str, kind: str) -> tuple[str, str]:
    """(category, why) guessed from the column name; ``kind`` is the role."""
    low = name.lower()
    if kind == "dense" and _COUNTING.search(low):
        return "counting", "the name looks like a count"
    if _CANDIDATE.search(low):
        return "candidate", "the name looks like the ad / item being scored"
    if _CONTEXT.search(low):
        return "context", "the name looks like a property of the request"
    if _DEMOGRAPHIC.search(low):
        return "demographic", "the name looks like a user attribute"
    if kind == "pretrained":
        return "pretrained", "a user-side vector"
    if kind == "dense":
        return "demographic", "a user-side number (could be counting)"
    return "categorical", "a user-side id (could be demographic)"


def _nice_buckets(distinct: int) -> int:
    """A power of two with room for 4x the distinct values seen (at least 1024)."""
    return int(2 ** max(10, math.ceil(math.log2(max(4 * distinct, 1)))))


def _id_mapping(p: ColumnProfile) -> tuple[dict[str, Any], str]:
    """vocab_size / hash_buckets of an id column and why."""
    vt = p.value_type
    if pa.types.is_boolean(vt):
        return {"vocab_size": 2}, "a boolean: vocab_size 2"
    if _is_str(vt):
        n = _nice_buckets(p.distinct)
        return (
            {"hash_buckets": n},
            f"string ids are hashed; {p.distinct} distinct in the sample, {n} buckets",
        )
    lo, hi = p.lo, p.hi
    if hi is None:
        return {"hash_buckets": 1 << 20}, "no statistics: hashed into 2^20 buckets"
    if lo is not None and lo < 0:
        n = _nice_buckets(int(hi) - int(lo) + 1)
        return {"hash_buckets": n}, f"negative ids (min {lo}): hashed into {n} buckets"
    if int(hi) + 1 >= HASH_ABOVE:
        n = 1 << 20
        return {"hash_buckets": n}, f"max id {hi} is large: hashed into {n} buckets"
    return (
        {"vocab_size": int(hi) + 1},
        f"vocab_size {int(hi) + 1} = largest id seen ({hi}) + 1; larger ids will be OOV",
    )


def _sequence_groups(
    lists: dict[str, ColumnProfile],
) -> tuple[dict[str, tuple[str, list[str]]], list[str]]:
    """prefix -> (timestamp column, field columns), and list columns left over."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for name, p in lists.items():
        m = _SEQ_TIME.match(name)
        if m and (_is_int(p.value_type) or pa.types.is_timestamp(p.value_type)):
            groups.setdefault(m["prefix"], (name, []))
    used = {ts for ts, _ in groups.values()}
    left: list[str] = []
    for name, p in lists.items():
        if name in used:
            continue
        owner = max((pre for pre in groups if name.startswith(pre + "_")), key=len, default=None)
        if owner is not None and (_is_int(p.value_type) or _is_str(p.value_type)):
            groups[owner][1].append(name)
        else:
            left.append(name)
    return {k: v for k, v in groups.items() if v[1]}, left


def _table_of(name: str, prefix: str | None) -> str:
    """Shared-table guess: a field's name without its sequence prefix (``ads_item`` ->
    ``item``); a feature's name without ``_id`` and a leading word (``advertiser_id`` ->
    ``advertiser``, ``ad_topic`` -> ``topic``)."""
    if prefix is not None:
        return name[len(prefix) + 1 :]
    base = name[:-3] if name.endswith("_id") else name
    return base.split("_", 1)[1] if "_" in base else base


def draft_spec(root: str | Path, *, max_files: int = 200, name: str | None = None) -> SpecDraft:
    """Draft a commented spec for the Parquet folder ``root`` (see the module doc)."""
    root = Path(root)
    profiles, files_read = profile_columns(root, max_files=max_files)
    by_name = {p.name: p for p in profiles}
    dropped: list[str] = []
    taken: set[str] = set()
    header: list[str] = []

    # request time and user id
    times = [
        p
        for p in profiles
        if not _is_list(p.type) and (pa.types.is_timestamp(p.type) or _is_int(p.type))
    ]
    request = next((p for p in times if p.name.lower() in _TIME_NAMES), None)
    request_note = "named like a request time"
    if request is None:
        request = next(
            (
                p
                for p in times
                if _is_int(p.type)
                and p.lo is not None
                and p.hi is not None
                and 1e9 <= p.lo <= p.hi < 4e9
            ),
            None,
        )
        request_note = "an int column whose values look like unix seconds"
    if request is None:
        request_time = "TODO_request_time_column"
        header.append("# guessed: no request-time column found: name the int64 unix-seconds column")
    else:
        request_time = request.name
        taken.add(request.name)
        header.append(f"# guessed: request_time {request.name!r}: {request_note}")
    user = next(
        (p for p in profiles if p.name.lower() in _USER_NAMES and not _is_list(p.type)), None
    )
    if user is not None:
        taken.add(user.name)
        header.append(f"# guessed: user_id {user.name!r} (used for grouping, never a feature)")

    # labels, oracle columns, sampling, weights
    label_cols = [p for p in profiles if p.name not in taken and _is_label(p)]
    labels: list[_Entry] = []
    for p in label_cols:
        taken.add(p.name)
        ctr = bool(_tokens(p.name) & _CTR_WORDS) and len(label_cols) > 1
        data: dict[str, Any] = {"name": p.name, "serve": not ctr}
        why = "0/1 column named like a label (check its rate with `dhen-cvr inspect`)"
        notes = [f"# guessed: label: {why}"]
        if ctr:
            notes.append(
                "# guessed: serve: false: a click head trains beside the conversion heads "
                "but is not exported (give a conversion head mask: "
                f"{p.name} to learn it on clicked rows only)"
            )
        labels.append(_Entry(data, notes))
    oracle = [f"oracle_{lb.data['name']}" for lb in labels]
    for col in oracle:
        if col in by_name:
            taken.add(col)
            dropped.append(f"{col} (true probability of a head: read by evaluate, not a feature)")
    sampling: dict[str, Any] = {}
    sampling_notes: list[str] = []
    for p in profiles:
        if p.name in taken or not _is_float(p.type) or not _INCLUSION.search(p.name.lower()):
            continue
        if p.lo is not None and p.lo > 0 and p.hi is not None and p.hi <= 1:
            taken.add(p.name)
            rate = float(p.lo)
            sampling = {"inclusion_column": p.name}
            if rate < 1:
                sampling = {"negative_rate": round(rate, 6), **sampling}
            sampling_notes.append(
                f"# guessed: {p.name!r} is the probability a row was kept; negative_rate "
                f"{rate:g} = its smallest value (converting rows are kept with rate 1)"
            )
            break
    weight = next(
        (
            p
            for p in profiles
            if p.name not in taken and p.name.lower() in ("weight", "sample_weight")
        ),
        None,
    )
    if weight is not None:
        taken.add(weight.name)

    for p in profiles:
        skip = next((w for rx, w in _NOT_FEATURES.items() if rx.search(p.name.lower())), None)
        if p.name not in taken and skip is not None:
            taken.add(p.name)
            dropped.append(f"{p.name} ({skip})")

    # sequences
    lists = {p.name: p for p in profiles if p.name not in taken and _is_list(p.type)}
    vectors = {
        n: p
        for n, p in lists.items()
        if (
            _is_float(p.value_type) and (pa.types.is_fixed_size_list(p.type) or len(p.lengths) == 1)
        )
    }
    groups, left = _sequence_groups({n: p for n, p in lists.items() if n not in vectors})
    seq_entries: list[tuple[str, str, list[str]]] = [
        (k, ts, flds) for k, (ts, flds) in groups.items()
    ]
    for n in left:
        p = lists[n]
        reason = "a list column with no matching <prefix>_ts timestamp list"
        if _is_float(p.value_type):
            reason = "a float list of varying length (a pretrained vector needs one size)"
        dropped.append(f"{n} ({reason})")
        taken.add(n)

    # id mappings and shared tables (members of a table take the largest vocab)
    id_cols: dict[str, tuple[str | None, ColumnProfile]] = {}
    for prefix, ts, flds in seq_entries:
        taken.add(ts)
        for f in flds:
            id_cols[f] = (prefix, lists[f])
            taken.add(f)
    scalars = [p for p in profiles if p.name not in taken and not _is_list(p.type)]
    for p in scalars:
        if _is_int(p.type) or _is_str(p.value_type) or pa.types.is_boolean(p.type):
            id_cols[p.name] = (None, p)
    seq_tables = {_table_of(f, pre) for f, (pre, _) in id_cols.items() if pre is not None}
    table: dict[str, str] = {}
    for f, (pre, _) in id_cols.items():
        t = _table_of(f, pre)
        if pre is not None or t in seq_tables:
            table[f] = t
    members: dict[str, list[str]] = {}
    for f, t in table.items():
        members.setdefault(t, []).append(f)
    mapping: dict[str, tuple[dict[str, Any], str]] = {
        f: _id_mapping(p) for f, (_, p) in id_cols.items()
    }
    for t, cols in members.items():
        if len(cols) < 2:
            table.pop(cols[0])
            continue
        maps = [mapping[c][0] for c in cols]
        if all("vocab_size" in m for m in maps):
            size = max(m["vocab_size"] for m in maps)
            shared: dict[str, Any] = {"vocab_size": size}
            why = f"vocab_size {size} = largest id seen among them + 1"
        else:
            size = max(m.get("hash_buckets", 0) for m in maps) or 1 << 20
            shared, why = {"hash_buckets": size}, f"hashed into {size} buckets"
        for c in cols:
            own = mapping[c]
            others = ", ".join(x for x in cols if x != c)
            note = f"table {t!r} shared with {others} (same name ending); {why}"
            if own[0] != shared:
                note += f" (its own ids alone: {own[1]})"
            mapping[c] = (shared, note)

    # features
    features: list[_Entry] = []
    for p in scalars:
        if p.name not in id_cols and not _is_float(p.type):
            continue  # listed as dropped below
        if p.name in id_cols:
            m, why = mapping[p.name]
            cat, cwhy = _category(p.name, "categorical")
            data = {"name": p.name, "role": "categorical", "category": cat, **m}
            if p.name in table:
                data["table"] = table[p.name]
            notes = [f"# guessed: categorical ({p.type}); category {cat}: {cwhy}; {why}"]
        else:
            cat, cwhy = _category(p.name, "dense")
            count_like = cat == "counting" or bool(_COUNTING.search(p.name.lower()))
            data = {"name": p.name, "role": "dense", "category": cat}
            if count_like and (p.lo is None or p.lo >= 0):
                data["log1p"] = True
            notes = [
                f"# guessed: dense ({p.type}); category {cat}: {cwhy}"
                + ("; log1p: a count" if data.get("log1p") else "")
            ]
            if p.nulls:
                notes.append(
                    f"# guessed: {p.nulls} null value(s): validate will reject them; fill "
                    "them in the data or drop this feature"
                )
        features.append(_Entry(data, notes))
    for n, p in vectors.items():
        dim = p.type.list_size if pa.types.is_fixed_size_list(p.type) else next(iter(p.lengths))
        cat, cwhy = _category(n, "pretrained")
        features.append(
            _Entry(
                {"name": n, "role": "pretrained", "category": cat, "dim": int(dim)},
                [f"# guessed: pretrained vector of {dim} floats; category {cat}: {cwhy}"],
            )
        )
        taken.add(n)
    for prefix, ts, flds in seq_entries:
        max_len = max([lists[f].max_len for f in flds] + [lists[ts].max_len, 1])
        fields = []
        notes = [
            f"# guessed: sequence {prefix!r}: list columns {', '.join(flds)} with timestamp "
            f"list {ts!r}; max_len {max_len} = the longest list in the sample (newest kept)"
        ]
        for f in flds:
            m, why = mapping[f]
            fdata: dict[str, Any] = {"name": f, **m}
            if f in table:
                fdata["table"] = table[f]
            fields.append(fdata)
            notes.append(f"# guessed: field {f}: {why}")
        data = {
            "name": prefix,
            "role": "sequence",
            "category": "sequence",
            "max_len": max_len,
            "timestamp": ts,
            "fields": fields,
        }
        features.append(_Entry(data, notes))
    for p in profiles:
        if p.name not in taken and p.name not in {e.data["name"] for e in features}:
            if p.name in id_cols or _is_float(p.type):
                continue
            dropped.append(f"{p.name} (type {p.type} is not a supported feature type)")

    spec_dict: dict[str, Any] = {"name": name or root.resolve().name, "request_time": request_time}
    if user is not None:
        spec_dict["user_id"] = user.name
    spec_dict["features"] = [e.data for e in features]
    spec_dict["labels"] = [e.data for e in labels] or [{"name": "TODO_label_column"}]
    if sampling:
        spec_dict["sampling"] = sampling
    if weight is not None:
        spec_dict["weight_column"] = weight.name
    text = _render(spec_dict, header, features, labels, sampling_notes, dropped, files_read, root)
    parsed = FeatureSpec.from_dict(yaml.safe_load(text), "the drafted spec")
    guesses = text.count("# guessed:")
    return SpecDraft(text, parsed, guesses, dropped, files_read)


def _flow(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, default_flow_style=True, sort_keys=False, width=10_000).strip()


def _render(
    spec: dict[str, Any],
    header: list[str],
    features: list[_Entry],
    labels: list[_Entry],
    sampling_notes: list[str],
    dropped: Iterable[str],
    files_read: int,
    root: Path,
) -> str:
    lines = [
        f"# Feature spec drafted by `dhen-cvr init-spec` from {files_read} Parquet file(s) of {root}.",
        "# Every '# guessed:' line is a guess to confirm. Categories decide what the Figure 6",
        "# ablation drops: demographic, counting, categorical, pretrained, sequence (the user),",
        "# candidate (the ad being scored), context (the request). Then run",
        "#   dhen-cvr validate DATA --spec THIS_FILE",
        "# which passes or names the file, column and row to fix. Reference: dhen_cvr/data/spec.py.",
        f"name: {json.dumps(spec['name'])}",
        *header,
        f"request_time: {spec['request_time']}",
    ]
    if "user_id" in spec:
        lines.append(f"user_id: {spec['user_id']}")
    lines.append("features:")
    for e in features:
        lines.extend(f"  {n}" for n in e.notes)
        if e.data["role"] == "sequence":
            d = e.data
            lines.append(f"  - name: {d['name']}")
            for k in ("role", "category", "max_len", "timestamp"):
                lines.append(f"    {k}: {d[k]}")
            lines.append("    fields:")
            lines.extend(f"      - {_flow(f)}" for f in d["fields"])
        else:
            lines.append(f"  - {_flow(e.data)}")
    lines += [
        "  # Derived from the request time (uncomment to add; utc_offset_hours shifts UTC):",
        "  # - {name: hour_of_day, role: categorical, category: context, derive: hour_of_day}",
        "  # - {name: day_of_week, role: categorical, category: context, derive: day_of_week}",
        "  # Item attributes from a side table: add `lookups:` and features with",
        "  # `lookup: TABLE.COLUMN` (see dhen_cvr/data/spec.py).",
        "labels:",
    ]
    if not labels:
        lines.append("  # guessed: no 0/1 column named like a label: name your label column(s)")
    for e in labels:
        lines.extend(f"  {n}" for n in e.notes)
        lines.append(f"  - {_flow(e.data)}")
    if not labels:
        lines.append(f"  - {_flow(spec['labels'][0])}")
    if "sampling" in spec:
        lines.extend(sampling_notes)
        lines.append(f"sampling: {_flow(spec['sampling'])}")
    if "weight_column" in spec:
        lines.append("# guessed: a per-row training weight")
        lines.append(f"weight_column: {spec['weight_column']}")
    dropped = list(dropped)
    if dropped:
        lines.append("# dropped (not in the spec; add them by hand if they should be):")
        lines.extend(f"#   {d}" for d in dropped)
    return "\n".join(lines) + "\n"
