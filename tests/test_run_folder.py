"""The run folder: one run at a time, a re-run resumes, --fresh moves the old run aside, metrics are
appended (each step once), and a folder that cannot be written to is one line."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recipe.codistill_grpo.run_folder import (
    ATTEMPT_FILE,
    STEP_ROW_FILE,
    MetricsAppender,
    RunComplete,
    RunFolderError,
    open_run,
)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_rows(path: Path, steps, tag="old") -> None:
    path.write_text("".join(json.dumps({"step": s, "data": {"tag": tag, "x": s}}) + "\n" for s in steps))


def checkpointed(folder: Path, step: int) -> None:
    (folder / "checkpoints" / f"global_step_{step}" / "actor").mkdir(parents=True)
    (folder / "checkpoints" / f"global_step_{step}" / "actor" / "weights.pt").write_text("w")
    (folder / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(step))


def test_new_run_says_so_and_holds_a_lock_naming_it(tmp_path):
    said = []
    with open_run(tmp_path / "run", fresh=False, say=said.append):
        assert said == [f"new run in {tmp_path / 'run'}"]
        assert (tmp_path / "run" / ".lock").read_text() == f"pid {os.getpid()} on host {socket.gethostname()}\n"


def test_a_second_run_into_the_folder_is_refused_with_the_holder(tmp_path):
    with open_run(tmp_path / "run", fresh=False, say=lambda _: None):
        with pytest.raises(RunFolderError) as err:
            with open_run(tmp_path / "run", fresh=True, say=lambda _: None):
                pass
    assert str(err.value) == (
        f"run folder {tmp_path / 'run'} is in use by pid {os.getpid()} on host {socket.gethostname()} "
        f"(lock: {tmp_path / 'run' / '.lock'}); wait for it or pick another run.dir"
    )
    # the refused --fresh moved nothing; the lock is free again afterwards
    with open_run(tmp_path / "run", fresh=False, say=lambda _: None):
        pass


def test_lock_is_held_across_processes(tmp_path):
    code = (
        "import sys, time\n"
        "from recipe.codistill_grpo.run_folder import open_run\n"
        "with open_run(sys.argv[1], fresh=False, say=lambda _: None):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"is in use by pid {holder.pid} on host"):
            with open_run(tmp_path / "run", fresh=False, say=lambda _: None):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_rerun_resumes_and_keeps_each_step_once(tmp_path):
    run = tmp_path / "run"
    checkpointed(run, 2)
    write_rows(run / "metrics.jsonl", [1, 2, 3])  # step 3 was logged, then the run died before its checkpoint
    write_rows(run / ATTEMPT_FILE, [3, 4])  # and a killed attempt left its file behind
    said = []
    with open_run(run, fresh=False, say=said.append) as appender:
        assert said[0] == f"resuming run {run} from step 2 (checkpoints/global_step_2)"
        assert said[1] == "2 metrics row(s) logged after the last checkpoint moved to metrics.superseded.jsonl"
        assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2]
        write_rows(run / ATTEMPT_FILE, [3, 4], tag="new")  # what verl's file logger writes in this attempt
        appender.sync()
    assert [(r["step"], r["data"]["tag"]) for r in rows(run / "metrics.jsonl")] == [
        (1, "old"),
        (2, "old"),
        (3, "new"),
        (4, "new"),
    ]
    assert [(r["step"], r["data"]["tag"]) for r in rows(run / "metrics.superseded.jsonl")] == [(3, "old"), (4, "old")]
    assert (run / "checkpoints" / "global_step_2" / "actor" / "weights.pt").read_text() == "w"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_finished_run_is_complete_and_left_untouched(tmp_path):
    """Issue 16 item 2: a run whose tracker names its last step trains nothing and changes nothing."""
    run = tmp_path / "run"
    checkpointed(run, 2)
    write_rows(run / "metrics.jsonl", [1, 2])
    before = _snapshot(run)
    said = []
    with pytest.raises(RunComplete) as err:
        with open_run(run, fresh=False, say=said.append, total_steps=2):
            pytest.fail("a complete run must not start")
    assert str(err.value) == (
        f"run {run} is complete: checkpoints/global_step_2 is step 2 of 2; nothing to do "
        "(raise trainer.total_training_steps to train on, or start over with --fresh)"
    )
    assert _snapshot(run) == before
    with open_run(run, fresh=False, say=said.append, total_steps=3):  # one more step asked for: it resumes
        assert said[-1] == f"resuming run {run} from step 2 (checkpoints/global_step_2)"


def test_a_stop_between_checkpoint_and_log_keeps_the_steps_row(tmp_path):
    """Issue 16 item 3: step 3's checkpoint (with the row known at save time) exists but verl never logged
    the step: the resumed run's metrics.jsonl holds every checkpointed step once, 1, 2, 3."""
    run = tmp_path / "run"
    checkpointed(run, 3)
    write_rows(run / "metrics.jsonl", [1, 2])
    row3 = {"step": 3, "data": {"tag": "ckpt", "x": 3}, "at_checkpoint": True}
    (run / "checkpoints" / "global_step_3" / STEP_ROW_FILE).write_text(json.dumps(row3))
    said = []
    with open_run(run, fresh=False, say=said.append) as appender:
        assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
        assert rows(run / "metrics.jsonl")[-1] == row3
        assert any(
            line.startswith("step 3: its metrics row was restored from checkpoints/global_step_3/") for line in said
        )
        write_rows(run / ATTEMPT_FILE, [3, 4], tag="new")  # verl resumes at step 4; a stray 3 is not doubled
        appender.sync()
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert not (run / "metrics.superseded.jsonl").exists()


@pytest.mark.parametrize("content", ["", "3\x00", "garbage"])
def test_a_corrupt_tracker_resumes_from_the_newest_complete_checkpoint(tmp_path, content):
    """Issue 16 item 5: an empty/corrupt tracker is said in one line and rewritten to the newest folder with
    verl's data.pt; no metrics row is superseded on the guess."""
    run = tmp_path / "run"
    checkpointed(run, 2)
    checkpointed(run, 3)
    (run / "checkpoints" / "global_step_2" / "data.pt").write_text("d")
    (run / "checkpoints" / "global_step_3" / "data.pt").write_text("d")
    (run / "checkpoints" / "global_step_4" / "actor").mkdir(parents=True)  # a save cut short: no data.pt
    tracker = run / "checkpoints" / "latest_checkpointed_iteration.txt"
    tracker.write_text(content)
    write_rows(run / "metrics.jsonl", [1, 2, 3])
    said = []
    with open_run(run, fresh=False, say=said.append):
        assert said[0].startswith(f"the checkpoint tracker {tracker} was corrupt (")
        assert said[0].endswith("it now names the newest complete checkpoint, global_step_3")
        assert said[1] == f"resuming run {run} from step 3 (checkpoints/global_step_3)"
    assert tracker.read_text() == "3"
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2, 3]
    assert not (run / "metrics.superseded.jsonl").exists()


def test_a_corrupt_tracker_without_a_complete_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "global_step_1" / "actor").mkdir(parents=True)
    tracker = run / "checkpoints" / "latest_checkpointed_iteration.txt"
    tracker.write_text("")
    write_rows(run / "metrics.jsonl", [1])
    with pytest.raises(RunFolderError) as err:
        with open_run(run, fresh=False, say=lambda _: None):
            pass
    assert str(err.value) == (
        f"the checkpoint tracker {tracker} is corrupt (empty) and no complete checkpoint "
        "folder is there to resume from; move the folder aside or start over with --fresh"
    )
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1] and tracker.read_text() == ""


def test_fresh_moves_the_old_run_aside_and_deletes_nothing(tmp_path):
    run = tmp_path / "run"
    checkpointed(run, 2)
    write_rows(run / "metrics.jsonl", [1, 2])
    (run / "train.log").write_text("yesterday\n")
    said = []
    with open_run(run, fresh=True, say=said.append):
        moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
        assert len(moved) == 1
        assert said == [f"fresh run in {run}: the previous run was moved to {moved[0]} (nothing deleted)"]
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert (moved[0] / "checkpoints" / "global_step_2" / "actor" / "weights.pt").read_text() == "w"
    assert [r["step"] for r in rows(moved[0] / "metrics.jsonl")] == [1, 2]
    assert (moved[0] / "train.log").read_text() == "yesterday\n"


def test_appender_shows_each_new_step_once(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "data": {}}) + "\n")
    seen = []
    appender = MetricsAppender(tmp_path, on_row=lambda r: seen.append(r["step"]))
    with open(tmp_path / ATTEMPT_FILE, "w") as f:
        f.write(json.dumps({"step": 1, "data": {}}) + "\n" + json.dumps({"step": 2, "data": {}}) + "\n")
        f.write('{"step": 3, "da')  # a line still being written
    appender.sync()
    appender.sync()
    assert seen == [2]
    with open(tmp_path / ATTEMPT_FILE, "a") as f:
        f.write('ta": {}}\n')
    appender.stop()
    assert seen == [2, 3] and [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunFolderError) as err:
        with open_run(tmp_path / "file" / "run", fresh=False, say=lambda _: None):
            pass
    assert str(err.value) == f"cannot write to the run folder {tmp_path / 'file' / 'run'}: Not a directory"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(RunFolderError, match=rf"^cannot write to the run folder {tmp_path / 'run'}: disk full$"):
        with open_run(tmp_path / "run", fresh=False, say=lambda _: None):
            pass


@pytest.mark.slow
def test_entry_point_refuses_a_folder_in_use_and_a_typo_touches_nothing(tmp_path, tiny_dir):
    """Through the real entry point, before Ray: the lock of another run, and a bad value with --fresh."""
    run = tmp_path / "run"
    checkpointed(run, 2)
    write_rows(run / "metrics.jsonl", [1, 2])
    base = [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", "platform=cpu", f"run.dir={run}"]
    proc = subprocess.run(
        [*base, "run.fresh=true", "algorithm.codistill.is.level=tokn"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "codistill: algorithm.codistill.is.level='tokn' not in ['token', 'sequence', 'geo_mean']"
    )
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2] and (
        run / "checkpoints" / "global_step_2"
    ).is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    with open_run(run, fresh=False, say=lambda _: None):
        proc = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"codistill: run folder {run} is in use by pid {os.getpid()} on host")
    )
    assert "ray init kwargs" not in proc.stdout


@pytest.mark.slow
def test_entry_point_on_a_finished_run_says_complete_and_exits_0(tmp_path, tiny_dir):
    """Issue 16 item 2, through the real entry point (platform=cpu: 2 steps): the tracker names step 2,
    so nothing starts (no Ray), nothing is written, the exit status is 0."""
    run = tmp_path / "run"
    checkpointed(run, 2)
    write_rows(run / "metrics.jsonl", [1, 2])
    before = _snapshot(run)
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", "platform=cpu", f"run.dir={run}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"codistill: run {run} is complete: checkpoints/global_step_2 is step 2 of 2; nothing to do "
        "(raise trainer.total_training_steps to train on, or start over with --fresh)"
    )
    assert "ray init kwargs" not in proc.stdout
    assert _snapshot(run) == before


@pytest.mark.slow
def test_entry_point_output_dir_under_a_file_is_one_line(tmp_path):
    """Issue 16 item 7: CODISTILL_OUTPUT_DIR under a regular file: one line naming the stand-in folder, no traceback."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    env = {**os.environ, "CODISTILL_OUTPUT_DIR": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", "platform=cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"codistill: cannot build the CPU stand-in pair in {out}/tiny (")
    assert last.endswith("Not a directory); set CODISTILL_OUTPUT_DIR to a writable folder")


def test_a_new_run_waits_for_an_earlier_attempts_trainer(tmp_path):
    """Issue 16 item 10: killing the launcher leaves Ray's trainer process running a moment; a new launcher
    into the folder (its .lock free) does not start while that trainer holds .lock.trainer."""
    from recipe.codistill_grpo.run_folder import hold_trainer_lock

    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import sys, time\n"
        "from recipe.codistill_grpo.run_folder import hold_trainer_lock\n"
        "h = hold_trainer_lock(sys.argv[1])\n"
        "print('writing', flush=True); time.sleep(60)\n"
    )
    trainer = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout.readline().strip() == "writing"
        with pytest.raises(RunFolderError) as err:
            with open_run(run, fresh=False, say=lambda _: None, trainer_wait_s=0.5):
                pass
        assert str(err.value).startswith(
            f"run folder {run} is still written by the trainer of an earlier attempt (pid {trainer.pid} on host"
        )
        with pytest.raises(RunFolderError, match="is still written by the trainer of another attempt"):
            hold_trainer_lock(run)  # nor can a second trainer take it
    finally:
        trainer.kill()
        trainer.wait()
    with open_run(run, fresh=False, say=lambda _: None, trainer_wait_s=5):
        handle = hold_trainer_lock(run)  # this attempt's trainer
        handle.close()
