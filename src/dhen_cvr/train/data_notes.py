"""What the model will *not* see, said out loud at train start (``RUN/data_notes.json``).

Settings that silently change the input are listed, each as one line:

- ``max_len_cut``: the config's ``model.sequence.max_len_cap`` keeps fewer items than the
  spec's ``max_len``;
- ``oov``: an id feature whose sampled values mostly (or all) map to the out-of-vocabulary
  row: a ``vocab_size`` too small, string ids under ``vocab_size`` (only digit strings
  map), or a lookup whose side table misses the ids;
- ``dropped_category``: features removed by ``model.drop_categories``;
- ``unused_columns``: Parquet columns the spec does not name (oracle columns, which
  evaluation reads, are not listed).

The OOV check reads the first row group of the first training file only (cheap, and an
id mapping that is wrong is wrong everywhere).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dhen_cvr.config import ExperimentConfig
from dhen_cvr.data.decode import map_id_column, parquet_files
from dhen_cvr.data.spec import CategoricalFeature, CategoricalField, FeatureSpec
from dhen_cvr.errors import DataError

__all__ = ["DATA_NOTES_FILE", "DataNote", "collect_data_notes", "report_data_notes"]

DATA_NOTES_FILE = "data_notes.json"
OOV_WARN = 0.5  # note an id feature when at least this share of sampled values is OOV


@dataclass(frozen=True)
class DataNote:
    """One thing the model will not see: ``kind``, the feature/column, one line why."""

    kind: str
    name: str
    message: str


def collect_data_notes(
    spec: FeatureSpec, config: ExperimentConfig, days: Sequence[Path]
) -> list[DataNote]:
    """Every silent cut or default of this (spec, config, training days)."""
    notes: list[DataNote] = []
    seq_config = config.model.sequence
    for seq in spec.sequences:
        kept = seq_config.max_len(seq)
        if kept < seq.max_len:
            notes.append(
                DataNote(
                    "max_len_cut",
                    seq.name,
                    f"sequence {seq.name!r}: the spec keeps {seq.max_len} newest items, the "
                    f"config's model.sequence.max_len_cap keeps {kept}",
                )
            )
    dropped = set(config.model.drop_categories)
    gone = [f.name for f in spec.features if f.category.value in dropped]
    if gone:
        notes.append(
            DataNote(
                "dropped_category",
                ",".join(sorted(dropped)),
                f"model.drop_categories {sorted(dropped)} removes {len(gone)} feature(s): "
                + ", ".join(gone),
            )
        )
    files = parquet_files(list(days)) if days else []
    if files:
        notes += _file_notes(spec, files[0])
    return notes


def _file_notes(spec: FeatureSpec, path: Path) -> list[DataNote]:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    used = set(spec.source_columns())
    oracle = {spec.oracle_prefix + h for h in spec.label_names}
    unused = [c for c in names if c not in used | oracle | {spec.user_id}]
    notes: list[DataNote] = []
    if unused:
        notes.append(
            DataNote(
                "unused_columns",
                ",".join(unused),
                f"{len(unused)} column(s) of {path.name} are not in the spec and not read: "
                + ", ".join(unused),
            )
        )
    if pf.metadata.num_row_groups == 0:
        return notes
    needed = [c for c in spec.source_columns() if c in names]
    table = pf.read_row_group(0, columns=needed)
    for item, values in _id_values(spec, table):
        try:
            rows = values()
        except (DataError, KeyError, TypeError, pa.ArrowException):
            continue  # the decoder reports these properly
        if not len(rows):
            continue
        size = item.vocab_size if item.vocab_size is not None else item.hash_buckets
        assert size is not None
        share = float(np.mean(rows == size + 1))
        if share >= OOV_WARN:
            how = "all" if share == 1.0 else f"{share:.0%} of"
            hint = (
                "string ids under vocab_size (only digit strings map; use hash_buckets)"
                if item.vocab_size is not None and _has_strings(table, item)
                else "ids missing from its lookup table"
                if item.lookup is not None
                else "ids at or above vocab_size (raise it or use hash_buckets)"
            )
            notes.append(
                DataNote(
                    "oov",
                    item.name,
                    f"{item.name!r}: {how} {len(rows)} sampled values map to the "
                    f"out-of-vocabulary row: {hint}",
                )
            )
    return notes


def _has_strings(table: pa.Table, item: CategoricalFeature | CategoricalField) -> bool:
    t = _flat(table, item.source).type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _id_values(
    spec: FeatureSpec, table: pa.Table
) -> list[tuple[CategoricalFeature | CategoricalField, Callable[[], np.ndarray]]]:
    """(id feature, a function mapping its sampled values) for every id column read
    (derived features cannot be OOV)."""
    items: list[CategoricalFeature | CategoricalField] = [
        c for c in spec.categorical if c.derive is None
    ]
    for seq in spec.sequences:
        items.extend(seq.fields)
    return [(item, functools.partial(_mapped, table, item, spec)) for item in items]


def _mapped(
    table: pa.Table, item: CategoricalFeature | CategoricalField, spec: FeatureSpec
) -> np.ndarray:
    return map_id_column(_flat(table, item.source), item, spec)


def _flat(table: pa.Table, column: str) -> pa.Array:
    arr = table.column(column).combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def report_data_notes(
    run: Path,
    spec: FeatureSpec,
    config: ExperimentConfig,
    days: Sequence[Path],
    say: Callable[[str], None] = print,
) -> list[DataNote]:
    """Collect the notes, print each (``note: ...``) and write ``RUN/data_notes.json``."""
    notes = collect_data_notes(spec, config, days)
    for n in notes:
        say(f"note: {n.message}")
    run.mkdir(parents=True, exist_ok=True)
    (run / DATA_NOTES_FILE).write_text(
        json.dumps({"notes": [asdict(n) for n in notes]}, indent=2) + "\n"
    )
    return notes
