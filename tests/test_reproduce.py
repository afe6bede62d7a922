"""scripts/reproduce_paper.sh: the sequence of stages, resumability, and the login-node flow
(training jobs in parallel, one dependent evaluation job), against the fakes in tests/fakebin."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_run_script import QWEN, Env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce_paper.sh"
QWEN_SUITES = "math500,minerva,olympiadbench,aime24,amc23"


def run(e: Env, *args, extra_env=None, timeout=300):
    return e.run(*args, extra_env=extra_env, script=SCRIPT, timeout=timeout)


def would_run(proc) -> list[list[str]]:
    return [shlex.split(line[len("would run: "):]) for line in proc.stdout.splitlines() if line.startswith("would run: ")]


def finish_run(out: Path, pair: str, exp: str, steps: int, large: bool = False, tracker: int | None = None) -> Path:
    """Lay out a run's checkpoint folder the way verl + the recipe leave it after `steps` steps."""
    ckpt = out / pair / exp / "checkpoints"
    (ckpt / f"global_step_{steps}" / "actor").mkdir(parents=True)
    if large:
        (ckpt / f"global_step_{steps}" / "large_actor").mkdir()
    (ckpt / "latest_checkpointed_iteration.txt").write_text(str(steps if tracker is None else tracker))
    (out / pair / exp / "metrics.jsonl").write_text('{"step": 1, "data": {"critic/score/mean": 0.5}}\n')
    return ckpt / f"global_step_{steps}"


def test_cpu_dry_run_lists_the_whole_sequence(tmp_path):
    e = Env(tmp_path, tools=())
    proc = run(e, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "[reproduce] situation: cpu"
    cmds = would_run(proc)
    out = tmp_path / "out"
    py = str(REPO / "tests" / "fakebin" / "fake-python")
    assert cmds[0] == [py, str(REPO / "scripts" / "lib" / "compose.py"), "check", "--pair", "tiny", "--exp", "codistill"]
    assert cmds[1][:2] == [py, "scripts/evaluate.py"]
    ev = cmds[1]
    assert ev[ev.index("--checkpoint") + 1] == str(out / "tiny" / "models" / "small")
    assert ev[ev.index("--suites") + 1] == "test" and ev[ev.index("--backend") + 1] == "hf"
    assert ev[ev.index("--method") + 1] == "base" and ev[ev.index("--role") + 1] == "small"
    assert ev[ev.index("--max-tokens") + 1] == "16"
    assert cmds[2][cmds[2].index("--checkpoint") + 1] == str(out / "tiny" / "models" / "large")
    assert [c[2:6] for c in cmds[3:6]] == [["--pair", "tiny", "--exp", x] for x in ("grpo_small", "grpo_large", "codistill")]
    assert cmds[6][:2] == [py, "scripts/make_tables.py"] and len(cmds) == 7
    assert "[reproduce] skip evaluation tiny/codistill: no final checkpoint yet" in proc.stdout
    assert not (tmp_path / "log" / "python.log").exists()


def test_ablations_and_gpu_pairs_need_gpus(tmp_path):
    e = Env(tmp_path, tools=())
    proc = run(e, "--dry-run", "--ablations")
    assert [c[5] for c in would_run(proc) if c[:2] == ["bash", "scripts/run_qwen_math.sh"]] == [
        "grpo_small", "grpo_large", "codistill", "frozen_teacher", "no_is", "kd_only"]
    proc = run(e, "--pairs", "qwen2.5-math-1.5b_7b", "--dry-run")
    assert proc.returncode == 2
    assert "error: pair qwen2.5-math-1.5b_7b needs GPUs; on a CPU machine use --pairs tiny" in proc.stderr
    proc = run(e, "--pairs", "mistral", "--dry-run")
    assert "error: unknown model pair 'mistral'; available: llama-3.2-1b_3.1-8b qwen2.5-math-1.5b_7b tiny" in proc.stderr


def test_finished_runs_are_skipped_and_evaluated(tmp_path):
    e = Env(tmp_path, tools=())
    out = tmp_path / "out"
    done = finish_run(out, "tiny", "codistill", 2, large=True)
    finish_run(out, "tiny", "grpo_small", 2, tracker=1)  # stopped after step 1: not finished
    proc = run(e, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"[reproduce] skip run tiny/codistill: final checkpoint {done} exists" in proc.stdout
    runs = [c[5] for c in would_run(proc) if c[:2] == ["bash", "scripts/run_qwen_math.sh"]]
    assert runs == ["grpo_small", "grpo_large"]
    evals = {(c[c.index("--name") + 1], c[c.index("--checkpoint") + 1], c[c.index("--method") + 1], c[c.index("--role") + 1])
             for c in would_run(proc) if "scripts/evaluate.py" in c}
    assert ("codistill_small", str(done / "actor"), "codistill", "small") in evals
    assert ("codistill_large", str(done / "large_actor"), "codistill", "large") in evals
    assert not any(name.startswith("grpo_small") for name, *_ in evals)


def test_complete_results_are_not_evaluated_again(tmp_path):
    e = Env(tmp_path, tools=())
    res = tmp_path / "out" / "results" / "tiny" / "base_small"
    res.mkdir(parents=True)
    (res / "test.json").write_text(json.dumps({"complete": True}))
    proc = run(e, "--dry-run", "--stage", "base")
    assert "[reproduce] skip evaluation tiny/base_small: results complete" in proc.stdout
    names = [c[c.index("--name") + 1] for c in would_run(proc)]
    assert names == ["base_large"]
    (res / "test.json").write_text(json.dumps({"complete": False}))
    assert [c[c.index("--name") + 1] for c in would_run(run(e, "--dry-run", "--stage", "base"))] == ["base_small", "base_large"]


def test_login_node_submits_runs_then_one_dependent_eval_job(tmp_path):
    e = Env(tmp_path)
    proc = run(e, "--pairs", "qwen2.5-math-1.5b_7b", "--nodes", "2", "--", "trainer.save_freq=20",
               extra_env={"FAKE_JOB_ID": "100"})
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.stdout.splitlines()[0] == "[reproduce] situation: login"
    sb = e.lines("sbatch.log")
    assert len(sb) == 4
    runs = [(e.log / f"submitted-{i}.sbatch").read_text() for i in (1, 2, 3)]
    for text, exp in zip(runs, ("grpo_small", "grpo_large", "codistill")):
        assert "#SBATCH --nodes=2" in text
        assert shlex.split(text.strip().splitlines()[-1])[3:] == [
            "--pair", "qwen2.5-math-1.5b_7b", "--exp", exp, "--nodes", "2", "--gpus-per-node", "8", "--", "trainer.save_freq=20"]
    assert sb[3].startswith("sbatch --parsable --dependency=afterany:100:101:102 ")
    eval_job = (e.log / "submitted-4.sbatch").read_text()
    assert "#SBATCH --nodes=1" in eval_job and "#SBATCH --gpus-per-node=8" in eval_job
    assert shlex.split(eval_job.strip().splitlines()[-1]) == [
        "exec", "bash", "scripts/reproduce_paper.sh", "--stage", "after-train", "--pairs", "qwen2.5-math-1.5b_7b"]
    assert "[reproduce] submitted evaluation job 103 (--dependency=afterany:100:101:102)" in proc.stdout
    assert not (tmp_path / "log" / "python.log").exists()  # data existed; nothing ran on the login node

    # again while the jobs are queued: nothing is submitted twice
    proc = run(e, "--pairs", "qwen2.5-math-1.5b_7b", extra_env={"FAKE_JOB_ID": "100", "FAKE_SQUEUE_JOBS": "100 101 102"})
    assert proc.returncode == 0, proc.stderr
    assert "[reproduce] skip run qwen2.5-math-1.5b_7b/codistill: SLURM job 102 is still queued or running" in proc.stdout
    sb = e.lines("sbatch.log")
    assert len(sb) == 5 and sb[4].startswith("sbatch --parsable --dependency=afterany:100:101:102 ")


def test_after_train_stage_in_an_allocation_evaluates_and_tabulates(tmp_path):
    e = Env(tmp_path)
    out = tmp_path / "out"
    pair = "qwen2.5-math-1.5b_7b"
    done = finish_run(out, pair, "codistill", 300, large=True)
    large_only = finish_run(out, pair, "grpo_large", 300)
    proc = run(e, "--pairs", pair, "--stage", "after-train", extra_env=e.allocation(1))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    calls = [json.loads(line)["argv"] for line in e.lines("python.log")]
    evals = [c for c in calls if c[0] == "scripts/evaluate.py"]
    got = [(c[c.index("--checkpoint") + 1], c[c.index("--name") + 1], c[c.index("--method") + 1], c[c.index("--role") + 1])
           for c in evals]
    assert got == [
        (QWEN[0], "base_small", "base", "small"),
        (QWEN[1], "base_large", "base", "large"),
        (str(large_only / "actor"), "grpo_large", "grpo", "large"),
        (str(done / "actor"), "codistill_small", "codistill", "small"),
        (str(done / "large_actor"), "codistill_large", "codistill", "large"),
    ]
    for c in evals:
        assert c[c.index("--backend") + 1] == "vllm" and c[c.index("--suites") + 1] == QWEN_SUITES
        assert c[c.index("--data-dir") + 1] == str(tmp_path / "data" / "qwen_math")
        assert c[c.index("--max-tokens") + 1] == "3072" and c[c.index("--suite-n") + 1] == "aime24=16,amc23=16"
    (tables,) = [c for c in calls if c[0] == "scripts/make_tables.py"]
    assert tables[tables.index("--out") + 1] == str(out / "tables")
    logs = [tables[i + 1] for i, a in enumerate(tables) if a == "--log"]
    assert logs == [f"{pair}/grpo_large={out / pair / 'grpo_large' / 'metrics.jsonl'}",
                    f"{pair}/codistill={out / pair / 'codistill' / 'metrics.jsonl'}"]


def test_data_stage_runs_prepare_data_for_missing_files(tmp_path):
    e = Env(tmp_path, data_template=None)
    proc = run(e, "--pairs", "qwen2.5-math-1.5b_7b,llama-3.2-1b_3.1-8b", "--stage", "data", extra_env=e.allocation(1))
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line)["argv"] for line in e.lines("python.log")]
    assert calls == [
        ["scripts/prepare_data.py", "--template", "qwen_math", "--out", str(tmp_path / "data" / "qwen_math")],
        ["scripts/prepare_data.py", "--template", "llama_instruct", "--out", str(tmp_path / "data" / "llama_instruct")],
    ]


@pytest.mark.parametrize("args,message", [
    (["--stage", "deploy"], "unknown stage 'deploy'; available: all, data, base, train, eval, tables, after-train"),
    (["--nodes", "0"], "--nodes must be a positive integer, got '0'"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_bad_arguments(tmp_path, args, message):
    proc = run(Env(tmp_path, tools=()), *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert re.fullmatch(r"\[reproduce\] error: .*\n", proc.stderr)
