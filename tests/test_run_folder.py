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

from recipe.codistill_grpo.run_folder import ATTEMPT_FILE, MetricsAppender, RunFolderError, open_run


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
    assert [(r["step"], r["data"]["tag"]) for r in rows(run / "metrics.jsonl")] == [(1, "old"), (2, "old"), (3, "new"), (4, "new")]
    assert [(r["step"], r["data"]["tag"]) for r in rows(run / "metrics.superseded.jsonl")] == [(3, "old"), (4, "old")]
    assert (run / "checkpoints" / "global_step_2" / "actor" / "weights.pt").read_text() == "w"


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


def test_entry_point_refuses_a_folder_in_use_and_a_typo_touches_nothing(tmp_path, tiny_dir):
    """Through the real entry point, before Ray: the lock of another run, and a bad value with --fresh."""
    run = tmp_path / "run"
    checkpointed(run, 2)
    write_rows(run / "metrics.jsonl", [1, 2])
    base = [sys.executable, "-m", "recipe.codistill_grpo.main_codistill", "platform=cpu", f"run.dir={run}"]
    proc = subprocess.run([*base, "run.fresh=true", "algorithm.codistill.is.level=tokn"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "codistill: algorithm.codistill.is.level='tokn' not in ['token', 'sequence', 'geo_mean']"
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == [1, 2] and (run / "checkpoints" / "global_step_2").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    with open_run(run, fresh=False, say=lambda _: None):
        proc = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"codistill: run folder {run} is in use by pid {os.getpid()} on host")
    assert "ray init kwargs" not in proc.stdout
