"""Output folders: which ones this tool may replace, and its hidden work folders.

- **Ownership.** A folder dhen-cvr writes carries a marker file (:data:`DATA_MARKER` for
  data sets, the quickstart its own). ``--overwrite`` replaces only a folder with the
  marker; any other non-empty folder is refused, so unrelated files are never deleted.
- **Work folders.** Data is written into a hidden sibling ``.<out>.<kind>-<pid>-<random>``
  (``kind``: ``tmp`` for the data set being written, ``spill`` for ``prepare-events``'
  bucket files) holding :data:`WORK_MARKER` (pid, host, start time). A run killed with
  ``kill -9`` cannot remove its own; the next run writing next to the same ``out``
  removes those whose process is gone (same host, pid no longer running, or the pid now
  belongs to a process started after the folder was made). Folders without the marker,
  or of another host, are left alone.
- **OS errors** while writing (read-only folder, disk full, a path through a regular
  file) become a :class:`DhenCvrError` naming the path: :func:`write_failure`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from dhen_cvr.data.warning import warn
from dhen_cvr.errors import DhenCvrError

__all__ = [
    "DATA_MARKER",
    "WORK_MARKER",
    "check_replaceable",
    "claim_folder",
    "make_work_folder",
    "remove_stale_work_folders",
    "write_failure",
]

DATA_MARKER = ".dhen-cvr-data"
WORK_MARKER = ".dhen-cvr-work"
_WORK_KINDS = ("tmp", "spill")


def write_failure(err: OSError, path: Path | str, note: str = "") -> DhenCvrError:
    """A one-line user error for an OS error while writing ``path`` (or the file the
    error names): ``cannot write PATH: REASON<note>``."""
    reason = err.strerror or str(err) or type(err).__name__
    where = err.filename if isinstance(err.filename, str) else str(path)
    return DhenCvrError(f"cannot write {where}: {reason}{note}")


def _is_empty_dir(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def check_replaceable(out: Path, marker: str, what: str, *, overwrite: bool) -> None:
    """Refuse ``out`` unless it is missing, an empty folder, or (with ``overwrite``) a
    folder holding ``marker``, i.e. one this tool wrote as ``what``."""
    if not out.exists() or _is_empty_dir(out):
        return
    if not out.is_dir():
        raise DhenCvrError(f"{out} exists and is not a folder; choose another --out")
    if not overwrite:
        raise DhenCvrError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    if not (out / marker).is_file():
        raise DhenCvrError(
            f"{out} is not empty and is not {what} written by dhen-cvr (no {marker} file); "
            "--overwrite replaces only such folders: choose another --out or remove it yourself"
        )


def claim_folder(out: Path, marker: str, what: str) -> None:
    """Create ``out``, or empty it if it holds ``marker``; refuse any other non-empty
    folder. Afterwards ``out`` holds only the marker."""
    check_replaceable(out, marker, what, overwrite=True)
    try:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / marker).write_text(f"created by dhen-cvr ({what}); safe to delete\n")
    except OSError as err:
        raise write_failure(err, out) from None


def _pid_start_time(pid: int) -> float | None:
    """Start time (unix seconds) of a running process, None if unknown (no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def _owner_is_gone(info: dict[str, object]) -> bool:
    pid, created = info.get("pid"), info.get("created")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = _pid_start_time(pid)
    # pid reused: the process now holding it started after the folder was made
    return started is not None and isinstance(created, (int, float)) and started > created + 1


def remove_stale_work_folders(parent: Path, name: str) -> list[Path]:
    """Remove ``parent/.<name>.<kind>-*`` work folders of dead dhen-cvr processes; -> the
    removed paths (each also reported as a :class:`DataWarning`)."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for kind in _WORK_KINDS:
        for folder in parent.glob(f".{name}.{kind}-*"):
            marker = folder / WORK_MARKER
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue  # not ours (or not readable): leave it
            if not isinstance(info, dict) or not _owner_is_gone(info):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
                warn(f"removed {folder}, left by an interrupted dhen-cvr run (pid {info['pid']})")
    return removed


def make_work_folder(parent: Path, name: str, kind: str) -> Path:
    """A fresh hidden work folder ``parent/.<name>.<kind>-<pid>-<random>`` with its
    marker, after removing stale ones of the same ``name``."""
    assert kind in _WORK_KINDS
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work_folders(parent, name)
        folder = Path(tempfile.mkdtemp(prefix=f".{name}.{kind}-{os.getpid()}-", dir=parent))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}
        (folder / WORK_MARKER).write_text(json.dumps(info) + "\n")
    except OSError as err:
        raise write_failure(err, parent, f" (a work folder for {name})") from None
    return folder
