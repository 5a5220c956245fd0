"""Reliability of the data commands under bad input and faults (issue 10, data side).

Every failure case asserts: exit code 2, one ``error: ...`` line on stderr naming what
and where, no traceback, and what is left on disk. Faults are real:

- read-only ``--out``: a read-only tmpfs mounted in a private mount namespace
  (``unshare -m``; the tests run as root here, so ``chmod`` would not stop a write).
  Where mounting is not allowed: ``chmod 555`` as a normal user, else (root without
  mounts) ``--out`` under a path whose parent is a regular file;
- disk full: a tmpfs of a few KiB in the same kind of namespace (a real ENOSPC). Where
  mounting is not allowed: the Parquet / Arrow IPC writers patched to raise
  ``OSError(ENOSPC)`` in the CLI process;
- ``kill -9``: a real ``synth`` subprocess killed while writing; stale spill folders of
  ``prepare-events`` are fabricated in the exact form (name + marker) with a dead pid.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhen_cvr.cli import main
from dhen_cvr.data.folders import DATA_MARKER, WORK_MARKER
from dhen_cvr.data.mapping import map_ids
from dhen_cvr.data.spec import CategoricalField
from dhen_cvr.data.warning import DataWarning, one_line_format

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--days", "2", "--users", "40", "--impressions-per-day", "400"]


# ---- helpers ---------------------------------------------------------------------------
def cli(capfd: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run the console entry point in this process -> (exit code, stdout, stderr).

    pytest captures warnings, so the DataWarnings raised are appended to stderr in the
    CLI's one-line format (Python's default once-per-call-site filter applies)."""
    capfd.readouterr()
    old = sys.argv
    sys.argv = ["dhen-cvr", *map(str, args)]
    code: int | str | None = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            main()
        except SystemExit as stop:
            code = stop.code
        finally:
            sys.argv = old
    out, err = capfd.readouterr()
    for w in caught:
        if issubclass(w.category, DataWarning):
            err += one_line_format(w.message, w.category, w.filename, w.lineno)
    return (0 if code is None else int(code)), out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def write_log(path: Path, users: int = 30, days: float = 3.0, seed: int = 0) -> Path:
    """An event log ``user,item,event,ts,rating``: views, rates, clicks over ``days``."""
    rng = np.random.default_rng(seed)
    n = int(users * 40)
    t0 = 1_700_000_000
    ts = np.sort(rng.integers(t0, t0 + int(days * 86400), n))
    event = rng.choice(["view", "rate", "click"], n, p=[0.6, 0.25, 0.15])
    lines = ["user,item,event,ts,rating"]
    for i in range(n):
        rating = "" if event[i] != "rate" else str(int(rng.integers(1, 6)))
        lines.append(f"u{rng.integers(users)},i{rng.integers(20)},{event[i]},{ts[i]},{rating}")
    path.write_text("\n".join(lines) + "\n")
    return path


MAPPING = """
kind: events
source: {format: csv, id_type: string}
columns: {user: user, item: item, event: event, timestamp: ts}
event_types: [view, rate, click]
exposure: view
labels:
  - {name: click, events: [click], window: 24h}
sequences:
  - {name: seen, events: [view], max_len: 5}
"""


def write_mapping(path: Path, text: str = MAPPING) -> Path:
    path.write_text(text)
    return path


def write_table(path: Path, rows: int = 50, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, rows)
    buy = click * rng.integers(0, 2, rows)
    lines = ["click,buy,uid,price"]
    lines += [
        f"{c},{b},{rng.integers(9)},{rng.random():.3f}" for c, b in zip(click, buy, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


TABLE_MAPPING = """
kind: table
click: click
conversion: buy
categorical: [{column: uid, category: demographic}]
dense: [{column: price, category: candidate}]
"""


@functools.cache
def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
        capture_output=True,
    )
    return probe.returncode == 0


def run_in_tmpfs(
    tmp_path: Path, mount_options: str, cli_args: list[str], fallback_patch: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``dhen-cvr CLI_ARGS`` in a subprocess where ``tmp_path/mnt`` is a fresh tmpfs
    mounted with ``mount_options`` (``{mnt}`` in the args is replaced); -> the process
    and the listing of the mount afterwards (names, hidden ones included)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    listing = tmp_path / "listing.txt"
    args = [a.replace("{mnt}", str(mnt)) for a in cli_args]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    py = [sys.executable, "-c", "from dhen_cvr.cli import main; main()", *args]
    if can_mount_tmpfs():
        quoted = " ".join(_quote(a) for a in py)
        script = (
            f"mount -t tmpfs -o {mount_options} tmpfs {mnt} || exit 99; "
            f"{quoted}; rc=$?; ls -A {mnt} > {listing}; exit $rc"
        )
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env
        )
        assert proc.returncode != 99, proc.stderr
    else:  # no mounts here: the writers raise the OS error themselves
        py[2] = fallback_patch + py[2]
        proc = subprocess.run(py, capture_output=True, text=True, env=env)
        listing.write_text("\n".join(p.name for p in mnt.iterdir()))
    return proc, [line for line in listing.read_text().splitlines() if line]


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


ENOSPC_PATCH = """
import errno, pyarrow.parquet as _pq, pyarrow.ipc as _ipc
def _full(*a, **k): raise OSError(errno.ENOSPC, "No space left on device")
_pq.ParquetWriter.write_table = _full
_ipc.RecordBatchFileWriter.write_table = _full
"""


def readonly_out(tmp_path: Path) -> tuple[str, str]:
    """(mount options, --out) of a folder nobody can write, by the best real mechanism."""
    if can_mount_tmpfs():
        return "ro,size=64k", "{mnt}/data"
    blocker = tmp_path / "mnt" / "not-a-folder"
    return "", str(blocker / "data")  # created below by the caller when needed


# ---- inspect ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dhen_cvr.data.synth import WorldConfig, synthesize

    root = tmp_path_factory.mktemp("world") / "w"
    synthesize(root, WorldConfig(days=2, users=40, impressions_per_day=400))
    return root


def test_inspect_truncated_parquet_is_one_line(
    world: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "w"
    shutil.copytree(world, data)
    part = sorted(data.glob("dt=*/*.parquet"))[-1]
    size = part.stat().st_size
    part.write_bytes(part.read_bytes()[: size // 2])
    code, _, err = cli(capfd, "inspect", data)
    assert_one_line_error(code, err, str(part), "not a readable Parquet file")
    assert part.stat().st_size == size // 2  # nothing touched


def test_inspect_label_value_two_names_file_column_row(
    world: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "w"
    shutil.copytree(world, data)
    part = sorted(data.glob("dt=*/*.parquet"))[0]
    table = pq.read_table(part)
    y = table["checkout"].to_numpy().copy()
    y[7] = 2
    i = table.column_names.index("checkout")
    table = table.set_column(i, "checkout", pa.array(y, table.schema.field("checkout").type))
    pq.write_table(table, part, row_group_size=5)
    code, _, err = cli(capfd, "inspect", data)
    # row 7 of the file is row 2 of row group 1 (5 rows a group): the file-level row is named
    assert_one_line_error(code, err, str(part), "row group 1", "'checkout'", "row 7", "label 2")


# ---- unwritable and full --out ------------------------------------------------------------
def _unwritable_case(tmp_path: Path, command: list[str]) -> None:
    options, out = readonly_out(tmp_path)
    if not can_mount_tmpfs():
        (tmp_path / "mnt").mkdir()
        if os.geteuid() != 0:
            (tmp_path / "mnt").chmod(0o555)
            out = "{mnt}/data"
        else:
            (tmp_path / "mnt" / "not-a-folder").write_text("a regular file")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "dhen_cvr.cli",
                *command,
                "--out",
                out.replace("{mnt}", str(tmp_path / "mnt")),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
        )
        left = sorted(p.name for p in (tmp_path / "mnt").iterdir())
        assert left in ([], ["not-a-folder"])
    else:
        proc, left = run_in_tmpfs(tmp_path, options, [*command, "--out", out])
        assert left == []  # nothing, not even a hidden work folder
    assert_one_line_error(proc.returncode, proc.stderr, "cannot write", str(tmp_path / "mnt"))


def test_synth_into_a_read_only_out(tmp_path: Path) -> None:
    _unwritable_case(tmp_path, ["synth", *TINY])


def test_prepare_events_into_a_read_only_out(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv")
    mapping = write_mapping(tmp_path / "m.yaml")
    _unwritable_case(tmp_path, ["prepare-events", "--events", str(log), "--mapping", str(mapping)])


def test_prepare_table_into_a_read_only_out(tmp_path: Path) -> None:
    table = write_table(tmp_path / "t.csv")
    mapping = write_mapping(tmp_path / "m.yaml", TABLE_MAPPING)
    _unwritable_case(tmp_path, ["prepare-table", "--csv", str(table), "--mapping", str(mapping)])


def test_synth_disk_full(tmp_path: Path) -> None:
    proc, left = run_in_tmpfs(
        tmp_path, "size=12k", ["synth", *TINY, "--out", "{mnt}/data"], ENOSPC_PATCH
    )
    line = assert_one_line_error(proc.returncode, proc.stderr, "cannot write", str(tmp_path))
    assert "No space left on device" in line and "nothing written" in line
    assert left == []  # the work folder was removed, no data set


def test_prepare_events_disk_full_while_spilling(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.csv", users=60)
    mapping = write_mapping(tmp_path / "m.yaml")
    args = ["prepare-events", "--events", str(log), "--mapping", str(mapping), "--buckets", "2"]
    proc, left = run_in_tmpfs(tmp_path, "size=12k", [*args, "--out", "{mnt}/data"], ENOSPC_PATCH)
    line = assert_one_line_error(proc.returncode, proc.stderr, "No space left on device")
    assert str(tmp_path / "mnt") in line and "--tmp-dir" in line
    assert left == []


# ---- kill -9 leaves work folders; the next run removes stale ones of ours ------------
def test_killed_synth_leaves_a_work_folder_the_next_run_removes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dhen_cvr.cli",
            "synth",
            "--out",
            str(out),
            "--days",
            "30",
            "--users",
            "3000",
            "--impressions-per-day",
            "50000",
        ],
        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".data.tmp-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, "synth finished before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (stale,) = tmp_path.glob(".data.tmp-*")
    assert (stale / WORK_MARKER).is_file() and not out.exists()
    # look-alikes that are not ours (no marker) or whose owner lives are kept
    foreign = tmp_path / ".data.tmp-foreign"
    foreign.mkdir()
    live = tmp_path / ".data.tmp-live"
    live.mkdir()
    info = {"pid": os.getppid(), "host": socket.gethostname(), "created": time.time()}
    (live / WORK_MARKER).write_text(json.dumps(info))

    code, _, err = cli(capfd, "synth", "--out", out, *TINY)
    assert code == 0, err
    assert f"warning: removed {stale}" in err and "interrupted" in err
    assert not stale.exists() and foreign.is_dir() and live.is_dir()
    assert (out / "_spec.yaml").is_file() and not (out / WORK_MARKER).exists()


def _reap_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_spill_folder_of_prepare_events_is_removed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "log.csv")
    mapping = write_mapping(tmp_path / "m.yaml")
    pid = _reap_pid()
    stale = tmp_path / f".data.spill-{pid}-abc123"
    stale.mkdir()
    (stale / "bucket-00000-part-0000.arrow").write_bytes(b"\0" * 1000)
    info = {"pid": pid, "host": socket.gethostname(), "created": time.time() - 60}
    (stale / WORK_MARKER).write_text(json.dumps(info))
    other = tmp_path / ".other.spill-1-abc"  # another --out's: not touched
    other.mkdir()
    (other / WORK_MARKER).write_text(json.dumps(info))
    code, _, err = cli(
        capfd, "prepare-events", "--events", log, "--mapping", mapping, "--out", tmp_path / "data"
    )
    assert code == 0, err
    assert f"removed {stale}" in err
    assert not stale.exists() and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".data")) == []


# ---- --overwrite only replaces what this tool wrote -----------------------------------
def test_overwrite_refuses_a_folder_this_tool_did_not_write(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, _, err = cli(capfd, "synth", "--out", out, *TINY, "--overwrite")
    assert_one_line_error(code, err, str(out), DATA_MARKER, "--overwrite replaces only")
    table = write_table(tmp_path / "t.csv")
    mapping = write_mapping(tmp_path / "m.yaml", TABLE_MAPPING)
    code, _, err = cli(
        capfd, "prepare-table", "--csv", table, "--mapping", mapping, "--out", out, "--overwrite"
    )
    assert_one_line_error(code, err, str(out), DATA_MARKER)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml", "mine", "t.csv"]


def test_overwrite_replaces_a_data_set_this_tool_wrote(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    table = write_table(tmp_path / "t.csv")
    mapping = write_mapping(tmp_path / "m.yaml", TABLE_MAPPING)
    args = ["prepare-table", "--csv", table, "--mapping", mapping, "--out", out]
    assert cli(capfd, *args)[0] == 0
    assert (out / DATA_MARKER).is_file()
    second = write_table(tmp_path / "t2.csv", seed=1)
    code, _, err = cli(capfd, *args, "--csv", second, "--overwrite")
    assert code == 0, err
    assert len(list(out.glob("dt=*"))) == 2


# ---- silent cases now say what happened -----------------------------------------------
def test_string_ids_in_a_vocab_column_warn_once_per_column(
    world: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "w"
    shutil.copytree(world, data)
    for part in data.glob("dt=*/*.parquet"):
        table = pq.read_table(part)
        i = table.column_names.index("user_gender")
        genders = pa.array([["f", "m", "x"][v % 3] for v in table["user_gender"].to_pylist()])
        pq.write_table(table.set_column(i, "user_gender", genders), part, row_group_size=4)
    proc = subprocess.run(
        [sys.executable, "-m", "dhen_cvr.cli", "validate", str(data)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
    )
    err = proc.stderr
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, err  # many row groups and files, one line
    assert "'user_gender'" in lines[0] and "out-of-vocabulary" in lines[0]
    assert "Traceback" not in err

    feature = CategoricalField(name="k", vocab_size=5)
    with pytest.warns(DataWarning, match="'k' has vocab_size 5"):
        rows = map_ids(pa.array(["3", "a", None]), feature)
    assert rows.tolist() == [4, 6, 6]  # "3" is id 3; "a" and null are OOV


def test_zero_positive_head_and_a_log_shorter_than_a_day_warn(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.csv"
    log.write_text(
        "user,item,event,ts,rating\n"
        + "".join(f"u{i % 3},i{i % 4},view,{1_700_000_000 + 600 * i},\n" for i in range(12))
    )
    mapping = write_mapping(tmp_path / "m.yaml")
    out = tmp_path / "data"
    code, stdout, err = cli(
        capfd, "prepare-events", "--events", log, "--mapping", mapping, "--out", out
    )
    assert code == 0, err
    warns = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warns) == 2, err
    assert "label 'click' has no positive example in 12 examples" in warns[0]
    assert "the log spans only 1h 50m" in warns[1] and "less than one day" in warns[1]
    assert "label windows (up to 24h 00m) are cut off" in warns[1]
    quality = json.loads((out / "_quality.json").read_text())
    assert len(quality["warnings"]) == 2 and "warning: label 'click'" in stdout


def test_header_only_first_csv_in_prepare_table_is_an_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "train.csv"
    empty.write_text("click,buy,uid,price\n")
    val = write_table(tmp_path / "val.csv")
    mapping = write_mapping(tmp_path / "m.yaml", TABLE_MAPPING)
    out = tmp_path / "data"
    code, _, err = cli(
        capfd, "prepare-table", "--csv", empty, "--csv", val, "--mapping", mapping, "--out", out
    )
    assert_one_line_error(code, err, str(empty), "no data rows", "day 1 (2024-01-01)")
    assert not out.exists() and not list(tmp_path.glob(".data*"))


# ---- bring your own data ---------------------------------------------------------------
RATINGS_MAPPING = """
kind: events
source: {format: csv, id_type: string}
columns: {user: user, item: item, event: event, timestamp: ts}
event_types: [view, rate, click]
exposure: [view, rate]
labels:
  - {name: click, events: [click], window: 24h}
  - {name: liked, condition: {column: rating, op: ">=", value: 4}}
"""


def test_several_exposure_types_and_a_label_from_the_rows_own_value(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "log.csv")
    mapping = write_mapping(tmp_path / "m.yaml", RATINGS_MAPPING)
    out = tmp_path / "data"
    code, _, err = cli(capfd, "prepare-events", "--events", log, "--mapping", mapping, "--out", out)
    assert code == 0, err
    rows = [line.split(",") for line in log.read_text().splitlines()[1:]]
    want = {
        (u, it, int(t)): int(e == "rate" and int(r) >= 4)
        for u, it, e, t, r in rows
        if e in ("view", "rate")
    }
    got = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("dt=*/*.parquet"))).to_pydict()
    keys = list(zip(got["user_id"], got["item_id"], got["ts"], strict=True))
    assert sorted(keys) == sorted(want)  # one example per view and per rate
    assert got["liked"] == [want[k] for k in keys]
    liked = sum(got["liked"])
    assert 0 < liked < len(keys)


def test_condition_on_a_text_column_is_a_one_line_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "log.csv")
    mapping = write_mapping(
        tmp_path / "m.yaml", RATINGS_MAPPING.replace("column: rating", "column: item")
    )
    code, _, err = cli(
        capfd, "prepare-events", "--events", log, "--mapping", mapping, "--out", tmp_path / "d"
    )
    assert_one_line_error(code, err, str(log), "column 'item'", "needs numbers")


def _taobao_rows(n: int = 40) -> list[str]:
    day = int(dt.datetime(2017, 11, 26, 12, tzinfo=dt.timezone.utc).timestamp())
    events = ["pv", "pv", "cart", "buy"]
    return [f"{i % 5},{i % 7},{i % 3},{events[i % 4]},{day + 3600 * i}" for i in range(n)]


def test_taobao_preset_skips_a_matching_header_and_names_a_different_one(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(_taobao_rows()) + "\n")
    headed = tmp_path / "headed.csv"
    headed.write_text("user_id,item_id,category_id,behavior,timestamp\n" + plain.read_text())
    for name, src in (("a", plain), ("b", headed)):
        code, _, err = cli(
            capfd, "prepare-events", "--events", src, "--preset", "taobao", "--out", tmp_path / name
        )
        assert code == 0, err
    a, b = (json.loads((tmp_path / n / "_quality.json").read_text()) for n in "ab")
    assert a["rows_read"] == b["rows_read"] == 40 and a["examples"] == b["examples"]
    assert b["counters"]["header_rows_skipped"] == 1

    other = tmp_path / "other.csv"
    other.write_text("uid,iid,cid,type,time\n" + plain.read_text())
    code, _, err = cli(
        capfd, "prepare-events", "--events", other, "--preset", "taobao", "--out", tmp_path / "c"
    )
    assert_one_line_error(code, err, str(other), "looks like a header row", "source.column_names")
    assert not (tmp_path / "c").exists()
