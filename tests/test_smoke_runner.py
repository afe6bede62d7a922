"""The CPU smoke runner starts fresh unless told to resume (verl would resume and train past N steps)."""

import subprocess

import pytest

from recipe.codistill_grpo.cpu import smoke


class _FakeProc:
    def __init__(self, cmd, **kwargs):
        _FakeProc.cmd = cmd
        self.stdout = iter(["trainer output\n"])

    def wait(self):
        return 0


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _FakeProc)
    (tmp_path / "checkpoints" / "global_step_2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    (tmp_path / "metrics.jsonl").write_text('{"step": 2, "data": {}}\n')
    return tmp_path


def test_fresh_run_removes_previous_checkpoints_and_disables_resume(run_dir, capsys):
    assert smoke.main(["--out", str(run_dir), "--steps", "2", "--", "trainer.logger=[console]"]) == 0
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "metrics.jsonl").exists()
    cmd = _FakeProc.cmd
    assert cmd[1:3] == ["-m", "recipe.codistill_grpo.main_codistill"]
    # the user's overrides come last, so they can still turn resuming back on
    assert cmd.index("trainer.resume_mode=disable") < cmd.index("trainer.logger=[console]") == len(cmd) - 1
    assert "removing the previous run's" in capsys.readouterr().out
    assert (run_dir / "train.log").read_text() == "trainer output\n"


def test_resume_keeps_checkpoints(run_dir):
    assert smoke.main(["--out", str(run_dir), "--steps", "3", "--resume"]) == 0
    assert (run_dir / "checkpoints" / "global_step_2").is_dir()
    assert (run_dir / "metrics.jsonl").exists()
    assert not any(arg.startswith("trainer.resume_mode=") for arg in _FakeProc.cmd)
