"""scripts/reproduce_paper.sh: the sequence of stages, seeds, resumability, and the login-node flow
(training jobs, one dependent evaluation job), against the fakes in tests/fakebin."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.support import load_script
from tests.test_run_script import FAKEBIN, REPO, Env

SCRIPT = REPO / "scripts" / "reproduce_paper.sh"
PY = str(FAKEBIN / "fake-python")


def run(e: Env, *args, extra_env=None, timeout=300):
    return e.run(*args, extra_env=extra_env, script=SCRIPT, timeout=timeout)


def would_run(proc) -> list[list[str]]:
    return [
        shlex.split(line[len("would run: ") :]) for line in proc.stdout.splitlines() if line.startswith("would run: ")
    ]


def arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def finish_run(out: Path, pair: str, exp: str, seed: int, steps: int, large: bool = False) -> Path:
    """A run folder as verl + the recipe leave it after `steps` steps."""
    folder = out / "reproduce" / "runs" / pair / exp / f"seed{seed}"
    step = folder / "checkpoints" / f"global_step_{steps}"
    (step / "actor").mkdir(parents=True)
    if large:
        (step / "large_actor").mkdir()
    (folder / "checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(steps))
    (folder / "metrics.jsonl").write_text('{"step": 1, "data": {"critic/score/mean": 0.5, "timing_s/step": 3.0}}\n')
    return step


SAMPLED = [
    "++pair.eval.n=8",
    "++pair.eval.temperature=1.0",
]  # the toy pair's sampled evaluation, whatever toy.yaml says


@pytest.mark.slow
def test_cpu_dry_run_lists_the_whole_sequence(tmp_path):
    e = Env(tmp_path, tools=())
    proc = run(e, "--dry-run", "--", *SAMPLED)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    lines = proc.stdout.splitlines()
    assert lines[0] == "[reproduce] situation: cpu"
    assert lines[1] == (
        f"[reproduce] 9 runs: grpo_small, codistill, grpo_large x seeds 1, 2, 3 on toy; output in {out / 'reproduce'}"
    )
    cmds = would_run(proc)
    train, build, evals, tables = cmds[:9], cmds[9], cmds[10:12], cmds[12:]
    assert build == [PY, "-m", "recipe.codistill_grpo.cpu.stand_in", "--pair", "toy", "--out", str(out / "toy")]
    assert [c[:3] for c in train] == [[PY, "-m", "recipe.codistill_grpo.main_codistill"]] * 9
    assert [(c[3], c[4], c[5], c[6]) for c in train[:3]] == [
        ("pair=toy", f"exp={x}", "platform=cpu", "run.seed=1") for x in ("grpo_small", "codistill", "grpo_large")
    ]
    assert train[4][7] == f"run.dir={out}/reproduce/runs/toy/codistill/seed2"
    # every model in one call: greedy into <name>, then 8 samples per item at temperature 1 into <name>-sampled
    assert [arg(c, "--name") for c in evals] == ["base_small", "base_large"]
    for role, cmd in zip(("small", "large"), evals):
        assert cmd[:2] == [PY, "scripts/evaluate.py"]
        assert arg(cmd, "--checkpoint") == str(out / "toy" / "models" / role)
        assert arg(cmd, "--suites") == "test" and arg(cmd, "--backend") == "hf" and arg(cmd, "--max-tokens") == "24"
        assert arg(cmd, "--method") == "base" and arg(cmd, "--role") == role
        assert arg(cmd, "--data-dir") == str(out / "toy" / "data")
    assert "--n" not in evals[0] and "--temperature" not in evals[0]
    assert arg(evals[0], "--sampled") == arg(evals[1], "--sampled") == "8,1.0"
    assert len(tables) == 1 and tables[0][:2] == [PY, "scripts/make_tables.py"]
    assert arg(tables[0], "--results") == str(out / "reproduce" / "results" / "toy")
    assert arg(tables[0], "--out") == str(out / "reproduce" / "tables" / "toy")
    assert "[reproduce] skip evaluation toy/codistill seed 1: no final checkpoint yet" in proc.stdout
    assert e.runs() == [] and not (out / "reproduce" / "runs").exists()


@pytest.mark.slow
def test_bad_sampled_evaluation_settings_are_one_line(tmp_path):
    proc = run(Env(tmp_path, tools=()), "--dry-run", "--", "++pair.eval.n=8", "++pair.eval.temperature=0")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "[reproduce] error: pair toy: pair.eval needs n >= 1 and temperature > 0, got n=8 temperature=0.0"
    )


@pytest.mark.slow
def test_seeds_steps_ablations_and_overrides_reach_every_run(tmp_path):
    e = Env(tmp_path, tools=())
    proc = run(e, "--seeds", "4", "--steps", "5", "--ablations", "--dry-run", "--", "pair.small.actor.optim.lr=2e-4")
    assert proc.returncode == 0, proc.stderr
    train = [c for c in would_run(proc) if c[1:3] == ["-m", "recipe.codistill_grpo.main_codistill"]]
    assert [c[4] for c in train] == [
        f"exp={x}" for x in ("grpo_small", "codistill", "grpo_large", "frozen_teacher", "no_is", "kd_only")
    ]
    assert all(
        c[6] == "run.seed=4" and c[-2:] == ["trainer.total_training_steps=5", "pair.small.actor.optim.lr=2e-4"]
        for c in train
    )


@pytest.mark.slow
def test_finished_runs_are_skipped_and_their_models_evaluated(tmp_path):
    e = Env(tmp_path, tools=())
    out = tmp_path / "out"
    step = finish_run(out, "toy", "codistill", 1, 40, large=True)
    finish_run(out, "toy", "grpo_large", 1, 40)
    proc = run(e, "--seeds", "1", "--stage", "all", "--", *SAMPLED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[reproduce] skip run toy/codistill seed 1: finished ({step.parents[1]})" in proc.stdout
    calls = [c["argv"] for c in e.runs()]
    trained = [c for c in calls if c[:2] == ["-m", "recipe.codistill_grpo.main_codistill"]]
    assert [c[3] for c in trained] == ["exp=grpo_small"]  # the only unfinished run
    evals = {arg(c, "--name"): c for c in calls if c[0] == "scripts/evaluate.py"}
    names = ["base_large", "base_small", "codistill-seed1-large", "codistill-seed1-small", "grpo_large-seed1-large"]
    assert sorted(evals) == sorted(names)
    assert (
        arg(evals["codistill-seed1-large"], "--run-seed") == "1"
        and arg(evals["codistill-seed1-large"], "--sampled") == "8,1.0"
    )
    assert arg(evals["codistill-seed1-small"], "--checkpoint") == str(step / "actor")
    assert arg(evals["codistill-seed1-large"], "--checkpoint") == str(step / "large_actor")
    assert (
        arg(evals["grpo_large-seed1-large"], "--method") == "grpo"
        and arg(evals["grpo_large-seed1-large"], "--run-seed") == "1"
    )
    assert arg(evals["grpo_large-seed1-large"], "--checkpoint").endswith(
        "grpo_large/seed1/checkpoints/global_step_40/actor"
    )
    # two runs of one seed both have a seed1/checkpoints/global_step_40: their merges must not share a folder
    assert arg(evals["codistill-seed1-small"], "--merged-root") == str(
        out / "reproduce" / "merged" / "toy" / "codistill"
    )
    assert arg(evals["grpo_large-seed1-large"], "--merged-root") == str(
        out / "reproduce" / "merged" / "toy" / "grpo_large"
    )
    (tables,) = [c for c in calls if c[0] == "scripts/make_tables.py"]
    logs = [tables[i + 1] for i, a in enumerate(tables) if a == "--log"]
    assert sorted(label.split("=")[0] for label in logs) == ["codistill/1", "grpo_large/1"]


@pytest.mark.slow
def test_complete_results_are_not_evaluated_again(tmp_path):
    e = Env(tmp_path, tools=())
    folder = tmp_path / "out" / "reproduce" / "results" / "toy" / "base_small"
    folder.mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps({"complete": True}))
    proc = run(e, "--seeds", "1", "--stage", "eval", "--", *SAMPLED)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the sampled half is missing: the model is evaluated again (its finished greedy items are kept by evaluate.py)
    assert [arg(c["argv"], "--name") for c in e.runs() if c["argv"][0] == "scripts/evaluate.py"] == [
        "base_small",
        "base_large",
    ]
    sampled = tmp_path / "out" / "reproduce" / "results" / "toy" / "base_small-sampled"
    sampled.mkdir(parents=True)
    (sampled / "test.json").write_text(json.dumps({"complete": True}))
    proc = run(e, "--seeds", "1", "--stage", "eval", "--", *SAMPLED)
    assert "[reproduce] skip evaluation toy/base_small: results complete" in proc.stdout


@pytest.mark.slow
def test_login_node_submits_the_runs_then_one_dependent_evaluation_job(tmp_path):
    e = Env(tmp_path)
    out = tmp_path / "out"
    finish_run(out, "qwen2.5-math-1.5b_7b", "codistill", 1, 300, large=True)
    pending = out / "reproduce" / "runs" / "qwen2.5-math-1.5b_7b" / "grpo_large" / "seed1"
    pending.mkdir(parents=True)
    (pending / "slurm_job_id").write_text("999\n")
    proc = run(
        e,
        "--pairs",
        "qwen2.5-math-1.5b_7b",
        "--nodes",
        "2",
        extra_env={"FAKE_JOB_ID": "500", "FAKE_SQUEUE_JOBS": "999"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == "[reproduce] situation: login"
    assert (
        "[reproduce] skip run qwen2.5-math-1.5b_7b/grpo_large seed 1: SLURM job 999 is still queued or running"
        in proc.stdout
    )
    submitted = [shlex.split(line) for line in e.lines("sbatch.log")]
    assert len(submitted) == 2  # grpo_small's run, then the evaluation job
    run_job, eval_job = submitted
    assert "--nodes=2" in run_job and "pair=qwen2.5-math-1.5b_7b" in run_job and "exp=grpo_small" in run_job
    assert f"run.dir={out}/reproduce/runs/qwen2.5-math-1.5b_7b/grpo_small/seed1" in run_job
    assert (
        out / "reproduce" / "runs" / "qwen2.5-math-1.5b_7b" / "grpo_small" / "seed1" / "slurm_job_id"
    ).read_text() == "500\n"
    assert "--dependency=afterany:500:999" in eval_job
    i = eval_job.index("scripts/slurm/job.sbatch")
    assert eval_job[i + 1 :] == [
        "bash",
        "scripts/reproduce_paper.sh",
        "--stage",
        "after-train",
        "--pairs",
        "qwen2.5-math-1.5b_7b",
        "--seeds",
        "1",
    ]
    assert "[reproduce] submitted evaluation job 501 after jobs 500, 999" in proc.stdout
    assert e.runs() == []  # nothing trained or evaluated on the login node


@pytest.mark.slow
def test_after_train_in_an_allocation_evaluates_with_vllm_and_tabulates(tmp_path):
    e = Env(tmp_path)
    out = tmp_path / "out"
    step = finish_run(out, "qwen2.5-math-1.5b_7b", "codistill", 1, 300, large=True)
    proc = run(e, "--pairs", "qwen2.5-math-1.5b_7b", "--stage", "after-train", extra_env=e.allocation(1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0] == "[reproduce] situation: allocation"
    calls = [c["argv"] for c in e.runs()]
    evals = {arg(c, "--name"): c for c in calls if c[0] == "scripts/evaluate.py"}
    assert sorted(evals) == [
        "base_large",
        "base_small",
        "codistill-seed1-large",
        "codistill-seed1-small",
    ]  # no pair.eval
    assert arg(evals["base_small"], "--checkpoint") == "Qwen/Qwen2.5-Math-1.5B"
    assert arg(evals["codistill-seed1-large"], "--checkpoint") == str(step / "large_actor")
    assert all(arg(c, "--backend") == "vllm" and arg(c, "--suite-n") == "aime24=16,amc23=16" for c in evals.values())
    assert arg(evals["base_small"], "--suites") == "math500,minerva,olympiadbench,aime24,amc23"
    assert [c[0] for c in calls][-1] == "scripts/make_tables.py"


def test_bad_arguments(tmp_path):
    e = Env(tmp_path, tools=())
    proc = run(e, "--pairs", "qwen2.5-math-1.5b_7b")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "[reproduce] error: pair qwen2.5-math-1.5b_7b needs GPUs; on a CPU machine use --pairs toy or toy_strong"
    )
    proc = run(e, "--seeds", "one")
    assert (
        proc.stderr.strip().splitlines()[-1] == "[reproduce] error: --seeds must be comma-separated integers, got 'one'"
    )
    proc = run(e, "--stage", "deploy")
    assert proc.returncode == 2 and "invalid choice: 'deploy'" in proc.stderr


def test_progress_reads_the_entry_points_step_lines_and_nothing_else():
    """The lines the entry point prints during and after a run (as in a real run's train.log)."""
    progress_step = load_script("reproduce_paper").progress_step

    assert progress_step("codistill: step 7/40  critic/score/mean=0.2812  timing_s/step=1.326  (105s elapsed)") == 7
    assert progress_step("codistill: step 40/40  critic/score/mean=0.1484  (108s elapsed)\n") == 40
    for other in (
        "codistill: step 40: critic/score/mean=0.1484, small/pg_loss=0.001908",  # the final summary
        "codistill: done: steps 1..40 of 40 in /x (host vm)",
        "(TaskRunner pid=1) codistill: step 3/40  x",
        "codistill: step 12/40: non-finite log-probs",
    ):
        assert progress_step(other) is None, other


@pytest.mark.slow
def test_sweep_runs_codistill_once_per_value_and_tabulates_a_row_each(tmp_path):
    e = Env(tmp_path, tools=())
    out = tmp_path / "out"
    step = finish_run(out, "toy", "codistill_kd.coef-0.3", 1, 40, large=True)  # one value already trained (3 s)
    proc = run(
        e,
        "--seeds",
        "1",
        "--sweep",
        "algorithm.codistill.kd.coef=0,0.3,1",
        "--",
        "++pair.eval.n=2",
        "++pair.eval.temperature=1.0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "[reproduce] 5 runs: grpo_small, codistill[kd.coef=0], codistill[kd.coef=0.3], codistill[kd.coef=1], grpo_large"
        in proc.stdout
    )
    # 4 runs left, each timed by the finished run's log: 3 s = 0.05 min
    assert (
        "[reproduce] expected time: 4 runs to train x 0.1 min per run (measured: mean of 1 finished runs) = about 0 min"
        in proc.stdout
    )
    calls = [c["argv"] for c in e.runs()]
    trained = [c for c in calls if c[:2] == ["-m", "recipe.codistill_grpo.main_codistill"]]
    assert [(c[3], c[-1]) for c in trained if c[3] == "exp=codistill"] == [
        ("exp=codistill", "algorithm.codistill.kd.coef=0"),
        ("exp=codistill", "algorithm.codistill.kd.coef=1"),
    ]
    assert f"run.dir={out}/reproduce/runs/toy/codistill_kd.coef-1/seed1" in trained[2]
    evals = {arg(c, "--name"): c for c in calls if c[0] == "scripts/evaluate.py"}
    assert arg(evals["codistill_kd.coef-0.3-seed1-large"], "--method") == "codistill[kd.coef=0.3]"
    assert arg(evals["codistill_kd.coef-0.3-seed1-large"], "--checkpoint") == str(step / "large_actor")
    (tables,) = [c for c in calls if c[0] == "scripts/make_tables.py"]
    assert f"codistill[kd.coef=0.3]/1={step.parents[1] / 'metrics.jsonl'}" in tables
    assert arg(tables, "--seeds") == "1"


@pytest.mark.slow
def test_expected_time_is_an_estimate_before_any_run_has_finished(tmp_path):
    (tmp_path / "a").mkdir()
    proc = run(Env(tmp_path / "a", tools=()), "--dry-run", "--seeds", "1,2", "--steps", "20")
    assert proc.returncode == 0, proc.stderr
    # 6 runs x (1 min + 20 steps x 3 s = 2 min)
    assert (
        "[reproduce] expected time: 6 runs to train x 2.0 min per run (estimate: ~3 s per CPU step + 1 min start-up) "
        "= about 12 min"
    ) in proc.stdout
    proc = run(Env(tmp_path, tools=()), "--sweep", "kd.coef")
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "[reproduce] error: --sweep expects KEY=V1,V2,... (a hydra key), got 'kd.coef'"
    )


@pytest.mark.slow
def test_each_pair_gets_its_own_table_from_its_own_runs(tmp_path):
    """Two pairs: two make_tables calls, each reading only its pair's results and run logs (a
    toy row's train time must not come from a toy_strong run of the same experiment and seed)."""
    e = Env(tmp_path, tools=())
    out = tmp_path / "out"
    for pair in ("toy", "toy_strong"):
        finish_run(out, pair, "codistill", 1, 40, large=True)
    proc = run(e, "--pairs", "toy,toy_strong", "--seeds", "1", "--stage", "tables", "--", *SAMPLED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = [c["argv"] for c in e.runs() if c["argv"][0] == "scripts/make_tables.py"]
    assert [(arg(c, "--results"), arg(c, "--out")) for c in tables] == [
        (str(out / "reproduce" / "results" / p), str(out / "reproduce" / "tables" / p)) for p in ("toy", "toy_strong")
    ]
    for pair, cmd in zip(("toy", "toy_strong"), tables):
        logs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--log"]
        assert logs == [f"codistill/1={out / 'reproduce' / 'runs' / pair / 'codistill' / 'seed1' / 'metrics.jsonl'}"]
