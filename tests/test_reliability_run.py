"""Faults on the run side (train, evaluate, checkpoints): each ends with one ``error:`` line
naming what and where, exit code 2, no traceback, and nothing lost on disk.

The CLI runs two ways: in this process through :func:`dhen_cvr.cli.main` (the console
entry point, so the same error boundary; ``capsys`` holds its output) and as a real
``python -m dhen_cvr.cli`` subprocess.

Read-only folders: ``chmod`` does not stop root, and these tests may run as root. Where
``chmod 0o555`` does not block writes (probed, :func:`_read_only`), the tests use another
real file-system refusal instead, and say which: a ``--out`` whose parent is a regular
file (``ENOTDIR``), or a folder squatting the report's file name (``EISDIR``). The
read-only *file system* (``EROFS``) and the full disk (``ENOSPC``) are raised from the
writer by a monkeypatch (the real file is written, then cut short, then the error).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import dhen_cvr.runtime.checkpoint as checkpoint_module
from dhen_cvr.cli import describe_error, main
from dhen_cvr.eval.evaluate import EvalReport, evaluation_file
from dhen_cvr.pipeline import train_and_evaluate
from dhen_cvr.runtime.checkpoint import latest_checkpoint, load_checkpoint
from dhen_cvr.train import plan_training
from train_world import cli_overrides, make_world, tiny_config

SRC = Path(__file__).parents[1] / "src"
TESTS = Path(__file__).parent
# Day 1 is 7 steps of 64 rows: checkpoints at steps 3, 6 (every 3) and 7 (the end), the
# newest two kept. log_every=100 > 7 steps: only the flushed final window is logged.
SETTINGS = ("train.checkpoint_every_steps=3", "train.log_every=100")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("reliab") / "world")


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run on day 1 evaluated on day 2 (its training-time ``eval.json``)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train_and_evaluate(tiny_config(*SETTINGS), world, "1", run, eval_days="2", show_progress=False)
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run for a test to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _train_args(world: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        "tiny",
        "--data",
        str(world),
        "--train-days",
        "1",
        "--out",
        str(out),
        "--quiet",
        *cli_overrides(*SETTINGS),
        *extra,
    ]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``dhen-cvr ARGS`` in this process, through the console entry point."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def cli_subprocess(*args: str, prelude: str = "") -> tuple[int, str, str]:
    """``python -m dhen_cvr.cli ARGS`` (or, with ``prelude``, that code then ``main()``)."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    if prelude:
        command = [sys.executable, "-c", f"{prelude}\nfrom dhen_cvr.cli import main\nmain()"]
    else:
        command = [sys.executable, "-m", "dhen_cvr.cli"]
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    return done.returncode, done.stdout, done.stderr


def one_error(err: str, *fragments: str) -> str:
    """The single ``error:`` line of ``err`` (no traceback, nothing else but warnings and
    blank lines), holding every fragment."""
    assert "Traceback" not in err and "Aborted" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    others = [x for x in err.splitlines() if x.strip() and not x.startswith(("error:", "warning:"))]
    assert not others, err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _tree(folder: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _chmod_blocks_writes(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return True
    probe.unlink()
    return False


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], bool]]:
    """``make(folder)``: chmod ``folder`` read-only; False when that does not block writes
    (root), with the mode restored. Every folder is made writable again afterwards."""
    changed: list[tuple[Path, int]] = []

    def make(folder: Path) -> bool:
        mode = stat.S_IMODE(folder.stat().st_mode)
        folder.chmod(0o555)
        changed.append((folder, mode))
        if _chmod_blocks_writes(folder):
            return True
        folder.chmod(mode)
        return False

    yield make
    for folder, mode in changed:
        folder.chmod(mode)


# ---- damaged checkpoints ------------------------------------------------------------


def _damage(state: Path, kind: str) -> None:
    data = state.read_bytes()
    if kind == "zero-byte":
        state.write_bytes(b"")
    elif kind == "truncated":
        state.write_bytes(data[: len(data) // 2])
    else:
        state.write_bytes(os.urandom(4096))


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "garbage"])
def test_evaluate_a_damaged_checkpoint_is_one_error_line(
    run: Path, world: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    newest = latest_checkpoint(run)
    assert newest is not None
    _damage(newest / "state.pt", kind)
    before = _tree(run)
    code, out, err = cli(
        capsys, "evaluate", "--run", str(newest), "--data", str(world), "--days", "2"
    )
    assert code == 2 and out == ""
    one_error(err, f"checkpoint {newest} is damaged", "state.pt (")
    assert _tree(run) == before  # nothing written, nothing removed


def test_zero_byte_checkpoint_in_a_real_process_is_not_aborted(run: Path, world: Path) -> None:
    """The typer/click "Aborted." on a zero-byte state.pt (an EOFError) is gone."""
    for step in run.glob("checkpoints/step-*"):
        (step / "state.pt").write_bytes(b"")
    code, out, err = cli_subprocess(
        "evaluate", "--run", str(run), "--data", str(world), "--days", "2"
    )
    assert code == 2 and out == ""
    line = one_error(err, f"no checkpoint of {run} loads", "step-00000006", "step-00000007")
    assert "(0 bytes)" in line and "ends early" in line
    assert not list(run.glob("eval-*.json"))


def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    run: Path, world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newest, previous = run / "checkpoints/step-00000007", run / "checkpoints/step-00000006"
    _damage(newest / "state.pt", "truncated")
    code, out, err = cli(capsys, "evaluate", "--run", str(run), "--data", str(world), "--days", "2")
    assert code == 0, err
    (warning,) = err.splitlines()
    size = (newest / "state.pt").stat().st_size
    assert warning.startswith(f"warning: checkpoint {newest} is damaged: state.pt ({size} bytes)")
    assert warning.endswith(f"; using the previous checkpoint {previous}")
    assert "checkout" in out and f"wrote {evaluation_file(run, ['2026-01-02'])}" in out

    # --resume continues from step 6 and writes a good step 7 over the damaged one
    code, out, err = cli(capsys, "train", "--out", str(run), "--resume", "--quiet")
    assert code == 0, err
    assert "using the previous checkpoint" in err and "trained 7 steps" in out
    assert load_checkpoint(newest).progress.step == 7


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "garbage"])
def test_resume_and_init_from_with_damaged_checkpoints(
    run: Path, world: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in run.glob("checkpoints/step-*"):
        _damage(step / "state.pt", kind)
    before = _tree(run)
    code, _out, err = cli(capsys, "train", "--out", str(run), "--resume", "--quiet")
    assert code == 2
    one_error(err, f"no checkpoint of {run} loads", "step-00000006 is damaged", "state.pt")
    assert _tree(run) == before

    warm = run / "checkpoints/step-00000007"
    fresh = tmp_path / "warm"
    code, _, err = cli(capsys, *_train_args(world, fresh, "--init-from", str(warm)))
    assert code == 2
    one_error(err, f"checkpoint {warm} is damaged", "state.pt")
    assert not fresh.exists()


# ---- writing: read-only folders, a full disk ----------------------------------------


def test_train_into_a_read_only_out_in_a_real_process(
    world: Path, tmp_path: Path, read_only: Callable[[Path], bool]
) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    if read_only(parent):
        out, expected = parent / "run", "Permission denied [EACCES]"
    else:  # root: a path under a regular file is refused by the file system too
        parent.rmdir()
        parent.write_text("a file, not a folder\n")
        out, expected = parent / "run", "Not a directory [ENOTDIR]"
    code, stdout, err = cli_subprocess(*_train_args(world, out))
    assert code == 2 and stdout == ""
    one_error(err, expected, str(out))
    assert not out.exists()


def test_train_on_a_read_only_file_system(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EROFS raised by the writer of the run folder's first file."""
    out = tmp_path / "run"
    real_write_text = Path.write_text

    def read_only_fs(self: Path, *args: Any, **kwargs: Any) -> int:
        if out in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only_fs)
    code, stdout, err = cli(capsys, *_train_args(world, out))
    assert code == 2 and stdout == ""
    one_error(err, "Read-only file system [EROFS]", str(out / "config.yaml"), "read-only")
    assert list(out.iterdir()) == []  # the folder was created, nothing in it


def test_evaluate_a_read_only_run_prints_the_metrics_then_fails(
    run: Path, world: Path, read_only: Callable[[Path], bool], capsys: pytest.CaptureFixture[str]
) -> None:
    target = evaluation_file(run, ["2026-01-02"])
    if read_only(run):
        expected = "Permission denied [EACCES]"
    else:  # root: a folder where the report file goes
        target.mkdir()
        expected = "Is a directory [EISDIR]"
    before = _tree(run)
    code, out, err = cli(capsys, "evaluate", "--run", str(run), "--data", str(world), "--days", "2")
    assert code == 2
    assert "day 2026-01-02" in out and "checkout" in out and "wrote" not in out
    one_error(err, "the metrics above were not saved", expected, str(target))
    assert _tree(run) == before  # the training-time eval.json included


def _fail_on_save(monkeypatch: pytest.MonkeyPatch, nth: int) -> list[Path]:
    """The ``nth`` checkpoint's state.pt is written, cut to half, then ENOSPC; returns the
    temporary files it left at that moment (for the test to check they are gone)."""
    real = checkpoint_module._fsync_write
    saves: list[Path] = []

    def disk_full(path: Path, write: Any) -> None:
        real(path, write)
        if path.name == "state.pt":
            saves.append(path)
            if len(saves) == nth:
                os.truncate(path, path.stat().st_size // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module, "_fsync_write", disk_full)
    return saves


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    saves = _fail_on_save(monkeypatch, nth=2)
    code, _stdout, err = cli(capsys, *_train_args(world, out))
    assert code == 2
    step3, step6 = out / "checkpoints/step-00000003", out / "checkpoints/step-00000006"
    one_error(
        err,
        f"cannot write checkpoint {step6}: No space left on device [ENOSPC]",
        "nothing half-written was left",
        f"the newest checkpoint {step3} is intact",
        "--resume",
    )
    assert saves[1].parent.name.startswith(".tmp-step-00000006") and not saves[1].parent.exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003"]
    assert load_checkpoint(out).progress.step == 3

    monkeypatch.undo()  # space freed: the run continues where it stopped
    code, _, err = cli(capsys, "train", "--out", str(out), "--resume", "--quiet")
    assert code == 0, err
    assert load_checkpoint(out).progress.step == 7


# ---- the failed-run trap and --resume -----------------------------------------------


def test_a_run_that_failed_before_its_first_checkpoint_can_be_run_again(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    command = _train_args(world, out, "--set", "train.log_every=2")
    _fail_on_save(monkeypatch, nth=1)  # at step 3, after the log of steps 1-2
    code, _, err = cli(capsys, *command)
    assert code == 2
    one_error(err, "cannot write checkpoint", "no checkpoint yet")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoints", "config.yaml", "data_notes.json", "metrics.jsonl", "run.json"]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [2]
    (out / "notes.txt").write_text("mine\n")  # a file the user put there

    monkeypatch.undo()
    code, _stdout, err = cli(capsys, *command)  # the same command again
    assert code == 0, err
    assert err.splitlines() == [
        f"warning: {out} holds a run that stopped before its first checkpoint; starting it "
        "again (its metrics.jsonl and TensorBoard events are replaced)"
    ]
    assert (out / "notes.txt").read_text() == "mine\n"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7]  # the stale log replaced
    assert not list((out / "checkpoints").glob(".tmp-*"))

    # once a checkpoint exists, a new run there is refused and nothing is touched
    before = _tree(out)
    code, _, err = cli(capsys, *_train_args(world, out))
    assert code == 2
    one_error(err, f"run folder {out} exists", "step-00000007", "pass --resume")
    assert _tree(out) == before


def test_resume_after_a_failed_start_starts_again_with_the_given_config(
    world: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps({"data": str(world), "train_days": ["2026-01-01"], "init_from": None})
    )
    stored = tiny_config("train.lr=0.1").to_dict()  # another config: nothing was trained
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    plan = plan_training(tiny_config(*SETTINGS), world, "1", out, resume=True)
    assert plan.new_run and plan.checkpoint is None and plan.config == tiny_config(*SETTINGS)


def test_resume_of_a_missing_run_folder_is_an_error(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never-started"
    code, _, err = cli(capsys, *_train_args(world, out, "--resume"))
    assert code == 2
    one_error(err, f"cannot resume {out}: no run was started there", "drop --resume")
    assert not out.exists()
    (out).mkdir()  # an empty folder is no run either
    assert cli(capsys, *_train_args(world, out, "--resume"))[0] == 2
    # schedulers say so explicitly: resume it if it exists, else start it
    plan = plan_training(tiny_config(), world, "1", tmp_path / "new", resume="if-exists")
    assert plan.new_run and plan.checkpoint is None


def test_eval_days_beyond_the_data_are_refused_before_training(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, *_train_args(world, out, "--eval-days", "9"))
    assert code == 2 and stdout == ""
    one_error(err, "day 9 does not exist", str(world))
    assert not out.exists()  # refused before the run folder (and any training) existed


# ---- silent cases made visible ------------------------------------------------------


def test_a_day_without_positives_for_a_head_is_explained(
    run: Path, world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = Path(shutil.copytree(world, tmp_path / "world"))
    day3 = next((data / "dt=2026-01-03").glob("*.parquet"))
    table = pq.read_table(day3)
    index = table.schema.get_field_index("signup")
    zeros = pa.array([0] * len(table), table.schema.field("signup").type)
    pq.write_table(table.set_column(index, "signup", zeros), day3)

    code, out, err = cli(
        capsys, "evaluate", "--run", str(run), "--data", str(data), "--days", "2-3"
    )
    assert code == 0, err
    day3_table = out.split("day 2026-01-03\n")[1].split("\n\n")[0]
    signup_row = next(line for line in day3_table.splitlines() if line.startswith("signup"))
    assert signup_row.split()[1:3] == ["-", "-"]  # ROC-AUC and its oracle
    assert (
        "warning: signup: ROC-AUC/PR-AUC cannot be computed ('-'): 2026-01-03 has no positives; "
        "its metric means are over the 1 other day(s) of 2, while rows and positives add "
        "all days"
    ) in out
    saved = EvalReport.load(evaluation_file(run, ["2026-01-02", "2026-01-03"]))
    assert "2026-01-03 has no positives" in saved.notes["undefined/signup"]
    assert saved.mean["signup"]["roc_auc"] == saved.per_day["2026-01-02"]["signup"]["roc_auc"]


def test_evaluate_keeps_the_training_time_eval_json(
    run: Path, world: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    training_time = (run / "eval.json").read_bytes()
    code, out, err = cli(capsys, "evaluate", "--run", str(run), "--data", str(world), "--days", "3")
    assert code == 0, err
    assert (run / "eval.json").read_bytes() == training_time
    written = run / "eval-2026-01-03.json"
    assert f"wrote {written}" in out and EvalReport.load(written).days == ["2026-01-03"]


def test_a_run_shorter_than_log_every_still_writes_metrics(trained: Path) -> None:
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [7]  # log_every=100: the flushed last window
    assert records[0]["examples_seen"] == load_checkpoint(trained).progress.examples_seen


# ---- the boundary itself -------------------------------------------------------------


def test_the_boundary_describes_library_and_os_errors_and_keeps_bugs() -> None:
    from pydantic import BaseModel, ValidationError

    class Small(BaseModel):
        n: int

    with pytest.raises(ValidationError) as invalid:
        Small(n="x")  # type: ignore[arg-type]
    assert describe_error(invalid.value) == (
        "invalid Small: n: Input should be a valid integer, unable to parse string as an integer"
    )
    arrow = pa.ArrowInvalid("Parquet magic bytes not found in footer.\nmore")
    assert describe_error(arrow) == "pyarrow ArrowInvalid: Parquet magic bytes not found in footer."
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/part-0.parquet")
    assert describe_error(full) == (
        "No space left on device [ENOSPC]: /data/out/part-0.parquet; the disk is full: free "
        "some space"
    )
    assert describe_error(ValueError("a bug")) is None  # keeps its traceback


def test_the_boundary_turns_a_stray_eof_into_an_error_and_leaves_usage_to_click(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate_module = sys.modules["dhen_cvr.eval.evaluate"]  # the package shadows the name

    def eof(*args: Any, **kwargs: Any) -> None:
        raise EOFError("Ran out of input")

    monkeypatch.setattr(evaluate_module, "evaluate", eof)
    code, _out, err = cli(capsys, "evaluate", "--run", "r", "--data", "d", "--days", "1")
    assert code == 2
    one_error(err, "unexpected end of input (Ran out of input)")
    code, _, err = cli(capsys, "train")
    assert code == 2 and "Missing option '--out'" in err and "Traceback" not in err
    assert cli(capsys, "--help")[0] == 0
