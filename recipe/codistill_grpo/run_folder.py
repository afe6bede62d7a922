"""The run folder: one run at a time, nothing of a previous run deleted, metrics appended.

    <run.dir>/
      .lock                     held (flock) by the running driver; names its pid and host
      .lock.trainer             held (flock) by the attempt's trainer process (a Ray actor) while it runs
      checkpoints/              verl's global_step_N/{actor,large_actor,data.pt} + tracker file;
                                global_step_N/metrics_row.json: step N's row as known at its checkpoint
      metrics.jsonl             one JSON line per step ({"step": N, "data": {...}}), every step once
      metrics.superseded.jsonl  steps a crashed attempt logged after its last checkpoint
      .metrics.attempt.jsonl    what verl's file logger writes during the current attempt
      config.yaml               the resolved config of the latest attempt
      train.log                 the console output, appended by scripts/run_qwen_math.sh

A run into a folder with checkpoints resumes (verl's ``resume_mode=auto``); ``fresh`` first moves
the folder's content to ``<run.dir>.old-<time>`` (renamed, never deleted). A run whose checkpoint
is its last step is complete (``RunComplete``): nothing is trained or changed. Every step with a
checkpoint has its metrics row: a row lost to a stop between the checkpoint and verl's log of the
step is restored from ``global_step_N/metrics_row.json``. An empty or corrupt tracker file (a
stop inside verl's write of it) is rewritten to name the newest complete checkpoint, and said.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
TRAINER_LOCK_FILE = ".lock.trainer"
TRAINER_WAIT_S = 60.0
METRICS_FILE = "metrics.jsonl"
SUPERSEDED_FILE = "metrics.superseded.jsonl"
ATTEMPT_FILE = ".metrics.attempt.jsonl"
TRACKER_FILE = "latest_checkpointed_iteration.txt"
STEP_ROW_FILE = "metrics_row.json"


class RunFolderError(RuntimeError):
    """The run folder cannot be used; the message is one line naming it."""


class RunComplete(RunFolderError):
    """The run's checkpoint is its last step: nothing to do (not an error; the message says so)."""


def _os_error(action: str, path: Path, e: OSError) -> RunFolderError:
    reason = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return RunFolderError(f"cannot {action} {path}: {reason}")


def _step_folders(checkpoint_dir: Path) -> dict[int, Path]:
    if not checkpoint_dir.is_dir():
        return {}
    return {
        int(p.name.removeprefix("global_step_")): p
        for p in checkpoint_dir.iterdir()
        if p.name.startswith("global_step_") and p.name.removeprefix("global_step_").isdigit() and p.is_dir()
    }


def resume_step(checkpoint_dir: Path, say: Callable[[str], None]) -> int | None:
    """The step a run resumes from (None: no tracker file, a new run).

    A tracker file that exists but holds no step number (verl opens it for writing, then writes: a
    stop in between leaves it empty) is rewritten to name the newest complete ``global_step_N``
    (verl's ``data.pt``, written after the model checkpoints and before the tracker, is in it), and
    said in one line; with no complete checkpoint the run is refused, naming the file.
    """
    tracker = checkpoint_dir / TRACKER_FILE
    if not tracker.exists():
        return None
    try:
        text = tracker.read_text()
    except OSError as e:
        raise _os_error("read the checkpoint tracker", tracker, e) from None
    try:
        return int(text.strip())
    except ValueError:
        pass
    complete = [n for n, p in _step_folders(checkpoint_dir).items() if (p / "data.pt").is_file()]
    shown = repr(text[:40]) if text.strip() else "empty"
    if not complete:
        raise RunFolderError(
            f"the checkpoint tracker {tracker} is corrupt ({shown}) and no complete checkpoint folder is there to "
            "resume from; move the folder aside or start over with --fresh"
        )
    step = max(complete)
    tmp = tracker.with_name(TRACKER_FILE + ".tmp")
    try:
        tmp.write_text(str(step))
        os.replace(tmp, tracker)
    except OSError as e:
        raise _os_error("repair the checkpoint tracker", tracker, e) from None
    say(
        f"the checkpoint tracker {tracker} was corrupt ({shown}, a stop while verl wrote it); it now names "
        f"the newest complete checkpoint, global_step_{step}"
    )
    return step


def _restore_checkpoint_rows(folder: Path, upto: int, say: Callable[[str], None]) -> None:
    """Append the rows of checkpointed steps (<= ``upto``) that ``metrics.jsonl`` lacks, from their checkpoints."""
    metrics = folder / METRICS_FILE
    last = max((int(r.get("step", -1)) for r in _read_rows(metrics)), default=-1)
    restored = []
    for step, path in sorted(_step_folders(folder / "checkpoints").items()):
        if last < step <= upto and (path / STEP_ROW_FILE).is_file():
            try:
                row = json.loads((path / STEP_ROW_FILE).read_text())
            except ValueError:
                continue
            if int(row.get("step", -1)) == step:
                restored.append(row)
    _append(metrics, restored)
    for row in restored:
        say(
            f"step {row['step']}: its metrics row was restored from checkpoints/global_step_{row['step']}/"
            f"{STEP_ROW_FILE} (the run stopped before verl logged it; the metrics verl adds after the checkpoint, "
            "e.g. timing and validation, are missing from it)"
        )


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    if rows:
        with open(path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
            f.flush()


class MetricsAppender:
    """Appends the steps verl's file logger writes (``.metrics.attempt.jsonl``) to ``metrics.jsonl``.

    Only rows with a step above the last one in ``metrics.jsonl`` are appended, so a step is
    never written twice; ``on_row`` sees each appended row (the console line of the step).
    """

    def __init__(self, folder: Path, on_row: Callable[[dict], None] | None = None, poll_s: float = 1.0):
        self.attempt = folder / ATTEMPT_FILE
        self.metrics = folder / METRICS_FILE
        self.on_row = on_row
        self.poll_s = poll_s
        rows = _read_rows(self.metrics)
        self.last_step = max((int(r.get("step", -1)) for r in rows), default=-1)
        self._offset = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> None:
        """Append the complete new lines of the attempt file."""
        try:
            with open(self.attempt, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        new = []
        for line in complete.decode().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if int(row.get("step", -1)) > self.last_step:
                new.append(row)
                self.last_step = int(row["step"])
        _append(self.metrics, new)
        if self.on_row:
            for row in new:
                self.on_row(row)

    def rows_since(self, step: int) -> list[dict]:
        """The rows of ``metrics.jsonl`` with a step above ``step``."""
        return [r for r in _read_rows(self.metrics) if int(r.get("step", -1)) > step]

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.sync()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="codistill-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and append what is left (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sync()


def _exclusive(path: Path, busy: str):
    """Open ``path``, take its exclusive lock without waiting and write who holds it; a holder
    already there: ``RunFolderError`` with ``{holder}`` in ``busy`` replaced. Returns the open handle (keep it)."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "an unknown process"
        handle.close()
        raise RunFolderError(busy.replace("{holder}", holder)) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    handle.flush()
    return handle


def _take_lock(folder: Path):
    lock_path = folder / LOCK_FILE
    try:
        open(lock_path, "a+").close()
    except OSError as e:
        raise _os_error("write to the run folder", folder, e) from None
    return _exclusive(
        lock_path,
        f"run folder {folder} is in use by {{holder}} (lock: {lock_path}); wait for it or pick another run.dir",
    )


def hold_trainer_lock(folder: str | os.PathLike):
    """Taken by the trainer process (a Ray actor, not the driver) before it writes into the run folder,
    held until that process ends: killing the launcher leaves Ray's processes running a moment, and a
    new launcher waits for them (``open_run``). Returns the open handle (keep a reference)."""
    path = Path(folder) / TRAINER_LOCK_FILE
    return _exclusive(
        path,
        f"run folder {folder} is still written by the trainer of another attempt ({{holder}}, "
        f"lock: {path}); stop it first (see README: how to stop a run)",
    )


def _wait_for_old_trainer(folder: Path, wait_s: float) -> None:
    """Wait until no trainer of an earlier attempt holds ``.lock.trainer`` (a killed launcher's Ray
    processes end shortly after it); refuse with one line after ``wait_s`` seconds."""
    path = folder / TRAINER_LOCK_FILE
    if not path.exists():
        return
    deadline = time.monotonic() + wait_s
    with open(path, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                return
            except OSError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "an unknown process"
                    raise RunFolderError(
                        f"run folder {folder} is still written by the trainer of an earlier attempt ({holder}, lock: "
                        f"{path}) after {wait_s:.0f} s; stop it (ray stop, or scancel the job) and run again"
                    ) from None
                time.sleep(0.2)


def _move_aside(folder: Path) -> Path | None:
    """Move everything but the lock to ``<folder>.old-<time>``; None if there was nothing."""
    entries = [p for p in folder.iterdir() if p.name not in (LOCK_FILE, TRAINER_LOCK_FILE)]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.old-{stamp}")
    suffix = 1
    while target.exists():
        target = folder.with_name(f"{folder.name}.old-{stamp}-{suffix}")
        suffix += 1
    target.mkdir(parents=True)
    for entry in entries:
        entry.rename(target / entry.name)
    return target


def _supersede_after(folder: Path, step: int) -> int:
    """Move ``metrics.jsonl`` rows with a step above ``step`` to ``metrics.superseded.jsonl``."""
    metrics = folder / METRICS_FILE
    rows = _read_rows(metrics)
    later = [r for r in rows if int(r.get("step", -1)) > step]
    if not later:
        return 0
    _append(folder / SUPERSEDED_FILE, later)
    kept = [r for r in rows if int(r.get("step", -1)) <= step]
    tmp = metrics.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, metrics)
    return len(later)


@contextmanager
def open_run(
    folder: str | os.PathLike,
    fresh: bool,
    say: Callable[[str], None] = print,
    on_row: Callable[[dict], None] | None = None,
    total_steps: int | None = None,
    trainer_wait_s: float = TRAINER_WAIT_S,
) -> Iterator[MetricsAppender]:
    """Lock the run folder, decide new / resume / fresh (and say which), keep metrics.jsonl appended.

    Yields the ``MetricsAppender`` (started); on exit its last rows are appended and the lock released.
    Raises ``RunComplete`` (the lock released, nothing else changed) if the checkpoint is step
    ``total_steps`` or later. Waits up to ``trainer_wait_s`` for an earlier attempt's trainer to end.
    """
    folder = Path(folder).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise _os_error("write to the run folder", folder, e) from None
    lock = _take_lock(folder)
    try:
        _wait_for_old_trainer(folder, trainer_wait_s)
        if fresh:
            moved = _move_aside(folder)
            say(
                f"fresh run in {folder}"
                + (f": the previous run was moved to {moved} (nothing deleted)" if moved else "")
            )
        MetricsAppender(folder).sync()  # steps a killed attempt left behind
        step = resume_step(folder / "checkpoints", say)
        if step:
            _restore_checkpoint_rows(folder, step, say)
        if step and total_steps and step >= int(total_steps):
            raise RunComplete(
                f"run {folder} is complete: checkpoints/global_step_{step} is step {step} of {total_steps}; nothing "
                "to do (raise trainer.total_training_steps to train on, or start over with --fresh)"
            )
        superseded = _supersede_after(folder, step or 0)
        if step:
            say(f"resuming run {folder} from step {step} (checkpoints/global_step_{step})")
        elif not fresh:
            say(f"new run in {folder}")
        if superseded:
            say(f"{superseded} metrics row(s) logged after the last checkpoint moved to {SUPERSEDED_FILE}")
        (folder / ATTEMPT_FILE).unlink(missing_ok=True)
        appender = MetricsAppender(folder, on_row=on_row)
        appender.start()
        try:
            yield appender
        finally:
            appender.stop()
            (folder / ATTEMPT_FILE).unlink(missing_ok=True)
    finally:
        lock.close()
