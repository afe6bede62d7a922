"""scripts/run_qwen_math.sh in its situations, against fake sbatch/srun/ray/scontrol/nvidia-smi
(tests/fakebin) and a fake recipe entry point, plus one real CPU smoke run of the no-argument path."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_qwen_math.sh"
FAKEBIN = REPO / "tests" / "fakebin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
QWEN = ("Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B")
SUITES = ("train", "math500", "minerva", "olympiadbench", "aime24", "amc23")


class Env:
    """A sandbox: a bin dir holding the chosen fakes, an HF cache, data files, an output dir."""

    def __init__(self, tmp: Path, tools=("sbatch", "srun", "ray", "scontrol", "squeue", "nvidia-smi"),
                 models=QWEN, data_template="qwen_math"):
        self.tmp = tmp
        self.log = tmp / "log"
        self.log.mkdir()
        bindir = tmp / "bin"
        bindir.mkdir()
        for tool in tools:
            (bindir / tool).symlink_to(FAKEBIN / tool)
        if "nvidia-smi" not in tools:  # hide a host nvidia-smi, if any: this sandbox has no GPU
            (bindir / "nvidia-smi").symlink_to(FAKEBIN / "nvidia-smi")
        for m in models:
            snap = tmp / "hf" / "hub" / ("models--" + m.replace("/", "--")) / "snapshots" / "abc"
            snap.mkdir(parents=True)
            (snap / "config.json").write_text("{}")
        if data_template:
            (tmp / "data" / data_template).mkdir(parents=True)
            for s in SUITES:
                (tmp / "data" / data_template / f"{s}.parquet").write_bytes(b"")
        self.env = {
            "PATH": f"{bindir}:{SYSTEM_PATH}",
            "HOME": str(tmp),
            "FAKE_LOG": str(self.log),
            "FAKE_REAL_PYTHON": sys.executable,
            "CODISTILL_PYTHON": str(FAKEBIN / "fake-python"),
            "HF_HOME": str(tmp / "hf"),
            "HF_HUB_OFFLINE": "1",
            "CODISTILL_DATA_DIR": str(tmp / "data"),
            "CODISTILL_OUTPUT_DIR": str(tmp / "out"),
            "CODISTILL_RAY_POLL_S": "0.1",
        }

    def allocation(self, nodes: int, gpus: int = 8) -> dict:
        names = ",".join(f"gpu{i + 1}" for i in range(nodes))
        return {"SLURM_JOB_ID": "777", "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_JOB_NODELIST": names,
                "SLURM_GPUS_ON_NODE": str(gpus), "SLURM_CPUS_PER_TASK": "32"}

    def run(self, *args: str, extra_env: dict | None = None, script: Path = SCRIPT, timeout: int = 120):
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp)

    def lines(self, name: str) -> list[str]:
        path = self.log / name
        return path.read_text().splitlines() if path.exists() else []

    def entry_calls(self) -> list[dict]:
        return [json.loads(line) for line in self.lines("python.log")]


def overrides_of(call: dict) -> dict[str, str]:
    assert call["argv"][:2] == ["-m", "recipe.codistill_grpo.main_codistill"]
    return dict(a.split("=", 1) for a in call["argv"][2:])


def one_error_line(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ----------------------------------------------------------------------------- static checks


def test_shellcheck_clean():
    scripts = [SCRIPT, REPO / "scripts" / "reproduce_paper.sh", REPO / "scripts" / "lib" / "common.sh",
               REPO / "scripts" / "setup.sh", REPO / ".ci" / "run",
               *[p for p in FAKEBIN.iterdir() if p.is_file() and p.suffix != ".md"]]
    # -x follows `source` into scripts/lib/common.sh (run from the repo root, as its directive says)
    out = subprocess.run([str(REPO / ".venv" / "bin" / "shellcheck"), "-x", *map(str, scripts)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stdout


def test_help(tmp_path):
    proc = Env(tmp_path).run("--help")
    assert proc.returncode == 0
    for word in ("--pair", "--exp", "--nodes", "--dry-run", "CODISTILL_PAIR", "CODISTILL_EXP", "CODISTILL_NODES",
                 "SLURM_PARTITION", "cpu-smoke", "slurm-submit", "allocation", "local-gpu"):
        assert word in proc.stdout, word


@pytest.mark.parametrize("args,message", [
    (["--pair", "gpt-5"], "unknown model pair 'gpt-5'; available: llama-3.2-1b_3.1-8b, qwen2.5-math-1.5b_7b, tiny"),
    (["--exp", "ppo"], "unknown experiment 'ppo'; available: codistill, frozen_teacher, grpo_large, grpo_small, kd_only, no_is"),
    (["--nodes", "two"], "--nodes must be a positive integer, got 'two'"),
    (["--bogus"], "unknown argument '--bogus'"),
    (["--mode", "cloud"], "unknown mode 'cloud'; available: cpu-smoke, slurm-submit, allocation, local-gpu"),
])
def test_bad_arguments_one_line(tmp_path, args, message):
    e = Env(tmp_path)
    line = one_error_line(e.run(*args, "--", "trainer.total_training_steps=1"))
    assert message in line
    assert e.lines("sbatch.log") == [] and e.lines("srun.log") == []


# ----------------------------------------------------------------------------- mode detection


@pytest.mark.parametrize("tools,extra,mode", [
    ((), {}, "cpu-smoke"),
    (("nvidia-smi",), {"FAKE_GPUS": "4"}, "local-gpu"),
    (("sbatch", "nvidia-smi"), {"FAKE_GPUS": "0"}, "slurm-submit"),
    (("sbatch", "srun", "scontrol"), {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "8"}, "allocation"),
])
def test_mode_detection_is_printed_first(tmp_path, tools, extra, mode):
    """The mode line comes before anything else, even before a bad experiment name stops the run."""
    e = Env(tmp_path, tools=tools)
    proc = e.run("--exp", "nope", extra_env=extra)
    assert proc.stdout.splitlines()[0].startswith(f"[codistill] mode: {mode} ")
    assert "unknown experiment 'nope'" in one_error_line(proc)
    assert e.lines("sbatch.log") == [] and e.lines("srun.log") == [] and e.entry_calls() == []


# ----------------------------------------------------------------------------- sbatch submission


def test_submit_writes_and_submits_the_sbatch_script(tmp_path):
    e = Env(tmp_path)
    proc = e.run("--nodes", "2", "--exp", "no_is", "--partition", "gpu-long", "--",
                 "trainer.total_training_steps=7", "trainer.experiment_name='my run'",
                 extra_env={"CODISTILL_ACCOUNT": "proj42", "FAKE_JOB_ID": "31337"})
    assert proc.returncode == 0, proc.stderr
    assert "[codistill] submitted job 31337" in proc.stdout
    log = str(tmp_path / "out" / "slurm" / "codistill-qwen2.5-math-1.5b_7b-no_is-31337.out")
    assert f"[codistill] log: {log}" in proc.stdout
    assert (tmp_path / "out" / "qwen2.5-math-1.5b_7b" / "no_is" / "slurm_job_id").read_text().strip() == "31337"
    assert e.lines("srun.log") == [] and e.entry_calls() == []  # nothing ran on the login node
    assert len(e.lines("sbatch.log")) == 1 and e.lines("sbatch.log")[0].startswith("sbatch --parsable ")
    text = (e.log / "submitted-1.sbatch").read_text()
    sb = dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", text, re.M))
    assert sb["nodes"] == "2" and sb["gpus-per-node"] == "8" and sb["ntasks-per-node"] == "1"
    assert sb["partition"] == "gpu-long" and sb["account"] == "proj42" and sb["time"] == "48:00:00"
    assert sb["output"] == str(tmp_path / "out" / "slurm") + "/%x-%j.out"
    assert "#SBATCH --exclusive" in text
    last = text.strip().splitlines()[-1]
    assert shlex.split(last) == ["exec", "bash", "scripts/run_qwen_math.sh", "--pair", "qwen2.5-math-1.5b_7b",
                                 "--exp", "no_is", "--nodes", "2", "--gpus-per-node", "8", "--",
                                 "trainer.total_training_steps=7", "trainer.experiment_name='my run'"]


def test_submitted_script_runs_ray_across_a_fake_two_node_allocation(tmp_path):
    """Submit, then run the captured sbatch script as SLURM would on the first of two nodes."""
    e = Env(tmp_path)
    assert e.run("--nodes", "2", "--", "trainer.total_training_steps=7").returncode == 0
    script = e.log / "submitted-1.sbatch"
    proc = e.run(script=script, extra_env=e.allocation(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[codistill] mode: allocation (inside SLURM job 777)" in proc.stdout
    srun = e.lines("srun.log")
    assert srun[0] == "srun --nodes=1 --ntasks=1 --overlap -w gpu1 hostname --ip-address"
    ray = str(FAKEBIN / "ray")
    assert srun[1] == (f"srun --nodes=1 --ntasks=1 --overlap -w gpu1 {ray} start --head --node-ip-address=10.0.0.1 "
                       "--port=6379 --num-gpus=8 --num-cpus=32 --block")
    assert srun[2] == f"srun --nodes=1 --ntasks=1 --overlap -w gpu2 {ray} start --address=10.0.0.1:6379 --num-gpus=8 --num-cpus=32 --block"
    assert srun[3].startswith(f"srun --nodes=1 --ntasks=1 --overlap -w gpu1 {FAKEBIN / 'fake-python'} -m recipe.codistill_grpo.main_codistill ")
    assert len(srun) == 4
    assert "[codistill] Ray cluster up: 16 GPUs on 2 nodes" in proc.stdout
    (call,) = e.entry_calls()
    assert call["node"] == "gpu1" and call["ray_address"] == "10.0.0.1:6379"
    assert call["metrics"] == str(tmp_path / "out" / "qwen2.5-math-1.5b_7b" / "codistill" / "metrics.jsonl")
    ov = overrides_of(call)
    assert ov["actor_rollout_ref.model.path"] == QWEN[0] and ov["large_actor.model.path"] == QWEN[1]
    assert ov["trainer.nnodes"] == "2" and ov["trainer.n_gpus_per_node"] == "8"
    assert ov["trainer.total_training_steps"] == "7"
    assert ov["algorithm.codistill.kd.coef"] == "1.0" and ov["algorithm.codistill.large.enable"] == "true"
    assert sorted(line for line in e.lines("ray.log") if line.startswith("stop")) == ["stop node=gpu1", "stop node=gpu2"]


def test_ray_is_torn_down_when_the_recipe_fails(tmp_path):
    e = Env(tmp_path)
    proc = e.run(extra_env={**e.allocation(2), "FAKE_ENTRY_RC": "3"})
    assert "the recipe exited with status 3" in one_error_line(proc)
    assert sorted(line for line in e.lines("ray.log") if line.startswith("stop")) == ["stop node=gpu1", "stop node=gpu2"]


def test_ray_join_timeout_is_one_clear_error_and_tears_down(tmp_path):
    e = Env(tmp_path)
    proc = e.run(extra_env={**e.allocation(2), "FAKE_RAY_HANG_NODE": "gpu2", "CODISTILL_RAY_TIMEOUT_S": "1"})
    line = one_error_line(proc)
    assert "Ray cluster: only 8 of 16 GPUs joined within 1s (nodes: gpu1 gpu2)" in line
    assert e.entry_calls() == []
    assert sorted(line for line in e.lines("ray.log") if line.startswith("stop")) == ["stop node=gpu1", "stop node=gpu2"]


def test_single_node_allocation_skips_multi_node_bring_up(tmp_path):
    e = Env(tmp_path)
    proc = e.run("--exp", "grpo_large", extra_env=e.allocation(1, gpus=4))
    assert proc.returncode == 0, proc.stderr
    assert "single-node allocation" in proc.stdout
    assert e.lines("srun.log") == [] and e.lines("ray.log") == []
    (call,) = e.entry_calls()
    ov = overrides_of(call)
    assert call["ray_address"] == ""
    assert ov["actor_rollout_ref.model.path"] == QWEN[1]  # GRPO-large: the large model generates
    assert ov["actor_rollout_ref.rollout.tensor_model_parallel_size"] == "2"
    assert "large_actor.model.path" not in ov
    assert ov["algorithm.codistill.large.enable"] == "false" and ov["algorithm.codistill.kd.coef"] == "0.0"
    assert ov["trainer.nnodes"] == "1" and ov["trainer.n_gpus_per_node"] == "4"


def test_more_gpus_than_allocated(tmp_path):
    e = Env(tmp_path)
    line = one_error_line(e.run("--nodes", "3", extra_env=e.allocation(2)))
    assert "requested 24 GPUs on 3 node(s) (trainer pool 3 x 8) but only 16 GPUs on 2 node(s) are allocated" in line
    line = one_error_line(e.run("--", "large_actor.placement=separate", extra_env=e.allocation(2)))
    assert "requested 24 GPUs on 3 node(s) (trainer pool 2 x 8 + separate large_actor pool 1 x 8)" in line
    assert e.lines("srun.log") == [] and e.entry_calls() == []


def test_missing_model_offline_is_one_line(tmp_path):
    e = Env(tmp_path, models=())
    line = one_error_line(e.run(extra_env=e.allocation(1)))
    assert "generator model Qwen/Qwen2.5-Math-1.5B is not a local dir and not in the HF cache" in line
    assert "HF_HUB_OFFLINE=1" in line and str(tmp_path / "hf" / "hub") in line
    line = one_error_line(e.run("--", "actor_rollout_ref.model.path=/nowhere/model", extra_env=e.allocation(1)))
    assert "generator model path /nowhere/model does not exist" in line
    assert e.entry_calls() == []


def test_missing_data_names_the_prepare_command(tmp_path):
    e = Env(tmp_path, data_template=None)
    line = one_error_line(e.run("--pair", "qwen2.5-math-1.5b_7b", extra_env=e.allocation(1)))
    data = tmp_path / "data" / "qwen_math"
    assert f"data file {data}/train.parquet (and 5 more) is missing" in line
    assert f"`python scripts/prepare_data.py --template qwen_math --out {data}`" in line
    # submission checks before sbatch too
    line = one_error_line(e.run())
    assert "is missing: make it with `python scripts/prepare_data.py" in line
    assert e.lines("sbatch.log") == []


def test_local_gpu_mode_uses_this_nodes_gpus(tmp_path):
    e = Env(tmp_path, tools=("nvidia-smi",))
    proc = e.run("--exp", "frozen_teacher", extra_env={"FAKE_GPUS": "4"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[codistill] mode: local-gpu (GPUs, no SLURM): the recipe on this node's 4 GPU(s)")
    ov = overrides_of(e.entry_calls()[0])
    assert ov["trainer.nnodes"] == "1" and ov["trainer.n_gpus_per_node"] == "4"
    assert ov["algorithm.codistill.large.train"] == "false"
    line = one_error_line(e.run("--gpus-per-node", "8", extra_env={"FAKE_GPUS": "4"}))
    assert "requested 8 GPUs on 1 node(s) (trainer pool 1 x 8) but only 4 GPUs on 1 node(s) are allocated" in line


def test_environment_variables_select_pair_experiment_nodes(tmp_path):
    e = Env(tmp_path, models=("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
            data_template="llama_instruct")
    proc = e.run(extra_env={**e.allocation(2), "CODISTILL_PAIR": "llama-3.2-1b_3.1-8b", "CODISTILL_EXP": "kd_only",
                            "CODISTILL_NODES": "1"})
    assert proc.returncode == 0, proc.stderr
    ov = overrides_of(e.entry_calls()[0])
    assert ov["actor_rollout_ref.model.path"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert ov["large_actor.model.path"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert ov["algorithm.codistill.task_reward"] == "false" and ov["trainer.nnodes"] == "1"
    assert e.lines("srun.log") == []  # one node requested: no multi-node bring-up


# ----------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("pair,exp,nodes,actor,teacher", [
    ("qwen2.5-math-1.5b_7b", "codistill", 2, QWEN[0], QWEN[1]),
    ("llama-3.2-1b_3.1-8b", "grpo_large", 1, "meta-llama/Llama-3.1-8B-Instruct", None),
    ("tiny", "kd_only", 1, "{out}/tiny/models/small", "{out}/tiny/models/large"),
])
def test_dry_run_prints_resolved_config_and_sbatch_and_runs_nothing(tmp_path, pair, exp, nodes, actor, teacher):
    e = Env(tmp_path)
    proc = e.run("--pair", pair, "--exp", exp, "--nodes", str(nodes), "--dry-run", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    actor = actor.replace("{out}", str(tmp_path / "out"))
    assert f'  actor_rollout_ref.model.path: "{actor}"' in out
    if teacher:
        assert f'  large_actor.model.path: "{teacher.replace("{out}", str(tmp_path / "out"))}"' in out
        assert "== resolved large_actor" in out
    else:
        assert "teacher: none (algorithm.codistill.large.enable=false: no large model is loaded)" in out
        assert "== resolved large_actor" not in out
    assert f"  trainer.nnodes: {nodes}" in out and "  trainer.n_gpus_per_node: 8" in out
    assert "  data.train_batch_size: " in out and "  actor_rollout_ref.actor.ppo_mini_batch_size: " in out
    assert f"resource pools: trainer pool {nodes} x 8; large_actor.placement=colocate; total {8 * nodes} GPUs" in out
    assert f"#SBATCH --nodes={nodes}" in out and "#SBATCH --gpus-per-node=8" in out
    task = "true" if exp != "kd_only" else "false"
    assert f"  task_reward: {task}" in out
    assert "[codistill] dry run: nothing was run or submitted" in out
    assert e.lines("sbatch.log") == [] and e.lines("srun.log") == [] and e.entry_calls() == []
    assert not (tmp_path / "out").exists()


def test_dry_run_on_cpu_shows_the_smoke_command(tmp_path):
    e = Env(tmp_path, tools=())
    proc = e.run("--exp", "grpo_small", "--dry-run", "--", "trainer.test_freq=1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    smoke = proc.stdout.split("== cpu-smoke command", 1)[1].splitlines()[1].split()
    out = str(tmp_path / "out" / "tiny" / "grpo_small")
    assert smoke[1:] == ["-m", "recipe.codistill_grpo.cpu.smoke", "--out", out, "--steps", "2", "--save-freq", "2",
                         "--baseline", "--", "algorithm.codistill.kd.coef=0.0", "algorithm.codistill.large.enable=false",
                         "algorithm.codistill.task_reward=true", "trainer.test_freq=1"]


def test_bad_override_value_fails_the_dry_run_with_the_key(tmp_path):
    e = Env(tmp_path)
    line = one_error_line(e.run("--dry-run", "--", "algorithm.codistill.is.mode=sometimes", timeout=300))
    assert "algorithm.codistill.is.mode" in line and "sometimes" in line


# ----------------------------------------------------------------------------- the real CPU smoke run


def test_no_argument_cpu_smoke_runs_the_real_recipe(tmp_path):
    """`bash scripts/run_qwen_math.sh` with no arguments on a machine without SLURM or GPU."""
    e = Env(tmp_path, tools=())
    env = {k: v for k, v in e.env.items() if k != "CODISTILL_PYTHON"}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[codistill]")]
    assert lines[0] == "[codistill] mode: cpu-smoke (no SLURM, no GPU): the real recipe on the tiny pair, 2 steps on CPU"
    metrics = re.search(r"^\[codistill\] metrics \(one JSON line per step\): (\S+)$", proc.stdout, re.M).group(1)
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("small/kd_reward_mean", "large/is_ess", "actor/pg_loss", "large/pg_loss"):
        assert all(isinstance(r["data"][key], float) for r in rows), key
    assert 0 < rows[-1]["data"]["large/is_ess"] <= 1
    ckpt = re.search(r"^\[codistill\] checkpoint: (\S+) \(contains: (.*)\)$", proc.stdout, re.M)
    assert ckpt.group(1) == str(tmp_path / "out" / "tiny" / "codistill" / "checkpoints" / "global_step_2")
    assert {"actor", "large_actor"} <= set(ckpt.group(2).split())
    assert (Path(ckpt.group(1)) / "actor").is_dir() and (Path(ckpt.group(1)) / "large_actor").is_dir()
    assert re.search(r"^\[codistill\] 2 steps logged; step 2: .*large/is_ess=", proc.stdout, re.M)


def test_separate_large_pool_asks_for_its_nodes(tmp_path):
    """large_actor.placement=separate: the job asks for the trainer's nodes plus the large pool's."""
    e = Env(tmp_path)
    assert e.run("--nodes", "2", "--", "large_actor.placement=separate", "large_actor.nnodes=1").returncode == 0
    text = (e.log / "submitted-1.sbatch").read_text()
    assert "#SBATCH --nodes=3" in text
    proc = e.run(script=e.log / "submitted-1.sbatch", extra_env=e.allocation(3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    starts = sorted(line.split()[1] for line in e.lines("ray.log") if line.startswith("start"))
    assert starts == ["node=gpu1", "node=gpu2", "node=gpu3"]
    assert "[codistill] Ray cluster up: 24 GPUs on 3 nodes" in proc.stdout
    ov = overrides_of(e.entry_calls()[0])
    assert ov["trainer.nnodes"] == "2" and ov["large_actor.placement"] == "separate"
