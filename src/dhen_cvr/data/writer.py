"""Atomic writing of day-partitioned Parquet data sets (``OUT/dt=YYYY-MM-DD/part-*.parquet``).

Everything is written under a hidden work folder beside ``OUT`` (see
:mod:`dhen_cvr.data.folders`) that is renamed onto ``OUT`` only when the whole job
succeeded, so a failure never leaves a half-written data set. The data set carries the
:data:`~dhen_cvr.data.folders.DATA_MARKER` file, and ``overwrite`` replaces only a folder
that has it. An OS error while writing (read-only folder, disk full) becomes one
:class:`DhenCvrError` naming the path; ``OUT`` is then unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from dhen_cvr.data.folders import (
    DATA_MARKER,
    WORK_MARKER,
    check_replaceable,
    make_work_folder,
    write_failure,
)
from dhen_cvr.data.spec import SPEC_FILE, FeatureSpec

__all__ = ["DatasetWriter", "day_dirs"]


def day_dirs(root: str | Path) -> list[Path]:
    """The ``dt=*`` folders under ``root``, oldest first."""
    return sorted(p for p in Path(root).glob("dt=*") if p.is_dir())


class DatasetWriter:
    """Context manager writing days into a temp folder, renamed onto ``out`` on success.

    >>> with DatasetWriter(out, overwrite=True) as w:
    ...     w.write_day("2026-01-01", table)      # may be called many times per day
    ...     w.write_spec(spec)
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False, row_group_size: int = 8192):
        self.out = Path(out)
        self.overwrite = overwrite
        self.row_group_size = row_group_size
        self._parts: dict[str, int] = {}
        self._tmp: Path | None = None

    @property
    def tmp(self) -> Path:
        assert self._tmp is not None, "use DatasetWriter as a context manager"
        return self._tmp

    def __enter__(self) -> DatasetWriter:
        check_replaceable(self.out, DATA_MARKER, "a data set", overwrite=self.overwrite)
        self._tmp = make_work_folder(self.out.parent, self.out.name, "tmp")
        return self

    def write_day(self, day: str, table: pa.Table) -> Path:
        """Append one part file to day ``day`` (``YYYY-MM-DD``)."""
        folder = self.tmp / f"dt={day}"
        folder.mkdir(exist_ok=True)
        idx = self._parts.get(day, 0)
        self._parts[day] = idx + 1
        path = folder / f"part-{idx:05d}.parquet"
        pq.write_table(table, path, row_group_size=self.row_group_size, compression="zstd")
        return path

    def write_spec(self, spec: FeatureSpec) -> Path:
        path = self.tmp / SPEC_FILE
        spec.save(path)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    @property
    def _nothing_written(self) -> str:
        return f" (writing the data set {self.out}; its work folder was removed, nothing written)"

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tmp = self.tmp
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise write_failure(exc, tmp, self._nothing_written) from None
            return
        try:
            (tmp / DATA_MARKER).write_text(
                "a data set written by dhen-cvr; --overwrite may replace it\n"
            )
            if self.out.exists():
                old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                os.replace(self.out, old)
                os.replace(tmp, self.out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, self.out)
            (self.out / WORK_MARKER).unlink()
        except OSError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failure(err, self.out, self._nothing_written) from None
