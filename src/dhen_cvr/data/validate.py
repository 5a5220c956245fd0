"""``dhen-cvr validate``: scan a whole data set with the reader's own checks
(:mod:`dhen_cvr.data.decode`) and report every problem, one line each, instead of
stopping at the first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dhen_cvr.data.decode import (
    Location,
    decode_row_group,
    open_parquet,
    parquet_files,
    read_row_group,
    schema_problems,
)
from dhen_cvr.data.spec import FeatureSpec
from dhen_cvr.errors import DataError

__all__ = ["ValidationReport", "validate_dataset"]


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` found; ``errors`` holds at most ``max_errors``."""

    files: int = 0
    row_groups: int = 0
    rows: int = 0
    errors: list[DataError] = field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = f"{self.files} files, {self.row_groups} row groups, {self.rows} rows: " + (
            "OK" if self.ok else f"{len(self.errors)}{'+' if self.truncated else ''} problem(s)"
        )
        return "\n".join([head, *(f"  {e}" for e in self.errors)])


def validate_dataset(
    sources: Sequence[str | Path] | str | Path, spec: FeatureSpec, *, max_errors: int = 100
) -> ValidationReport:
    """Scan every row group of every file with the reader's checks and report all
    problems (the first of each column per row group; a file with a bad schema or that
    cannot be opened is reported once and skipped)."""
    report = ValidationReport()
    files: Iterable[Path]
    try:
        files = parquet_files(sources if not isinstance(sources, (str, Path)) else [sources])
    except DataError as err:
        report.errors.append(err)
        return report
    columns = spec.source_columns()
    for path in files:
        report.files += 1
        try:
            pf = open_parquet(path)
        except DataError as err:
            report.errors.append(err)
            continue
        problems = schema_problems(pf.schema_arrow, spec, str(path))
        if problems:
            report.errors.extend(problems)
            continue
        heads = [
            lb.name
            for lb in spec.labels
            if pf.schema_arrow.get_field_index(spec.oracle_prefix + lb.name) >= 0
        ]
        first_row = 0
        for i in range(pf.metadata.num_row_groups):
            where = Location(str(path), i, first_row)
            first_row += pf.metadata.row_group(i).num_rows
            report.row_groups += 1
            try:
                table = read_row_group(
                    pf, i, columns + [spec.oracle_prefix + h for h in heads], where
                )
            except DataError as err:
                report.errors.append(err)
                continue
            report.rows += table.num_rows
            decode_row_group(table, spec, where, oracle_heads=heads, errors=report.errors)
            if len(report.errors) >= max_errors:
                break
        if len(report.errors) >= max_errors:
            report.truncated = True
            del report.errors[max_errors:]
            break
    return report
