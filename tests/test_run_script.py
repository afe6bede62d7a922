"""scripts/run_qwen_math.sh and scripts/slurm/codistill.sbatch in their situations, against fake
sbatch/srun/ray/scontrol/nvidia-smi (tests/fakebin) and a fake python that logs the recipe runs
(its dry run, the config check, is real), plus the real CPU smoke run of the no-argument path."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_qwen_math.sh"

# vLLM's engine start-up on the console: verl's vLLM server prints its command line (~40 lines), vLLM logs its
# warnings from several processes (its CPU build also says when it cannot pin NUMA nodes), verl names the server
# and its CPU weight transfer, and transformers says the CPU lock has no torchvision for vLLM's image processor.
# The recipe's own output (and verl's trainer's) is what must stay short.
VLLM_CONSOLE = re.compile(
    r"vLLMHttpServer|(WARNING|INFO) \d\d-\d\d \d\d:\d\d:\d\d \[|Qwen2VLImageProcessor|LLMServerManager"
    r"|IPC is not supported|NUMA affinity"
)


def console_lines(text: str) -> list[str]:
    """The non-empty console lines that are not vLLM's engine start-up."""
    return [line for line in text.splitlines() if line.strip() and not VLLM_CONSOLE.search(line)]


SBATCH_SCRIPT = REPO / "scripts" / "slurm" / "codistill.sbatch"
FAKEBIN = REPO / "tests" / "fakebin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PAIRS = ["qwen2.5-math-1.5b_7b", "llama-3.2-1b_3.1-8b"]
EXPS = ["codistill", "frozen_teacher", "grpo_large", "grpo_small", "kd_only", "no_is"]
MODELS = {
    "qwen2.5-math-1.5b_7b": ("Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B"),
    "llama-3.2-1b_3.1-8b": ("meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
}
ENTRY = [str(FAKEBIN / "fake-python"), "-m", "recipe.codistill_grpo.main_codistill"]


def sbatch_argv(tmp_path: Path, job_name: str, *rest: str) -> list[str]:
    """The sbatch argv the launcher builds for a 2-node x 8-GPU job in the sandbox: its fixed options, then rest."""
    return [
        "sbatch",
        "--parsable",
        f"--chdir={REPO}",
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=1",
        f"--job-name={job_name}",
        f"--output={tmp_path}/out/slurm/%x-%j.out",
        *rest,
    ]


class Env:
    """A sandbox: a bin dir holding the chosen fakes, an empty HF cache (offline), an output dir."""

    def __init__(self, tmp: Path, tools=("sbatch", "srun", "ray", "scontrol", "squeue", "nvidia-smi")):
        self.tmp = tmp
        self.log = tmp / "log"
        self.log.mkdir()
        bindir = tmp / "bin"
        bindir.mkdir()
        for tool in tools:
            (bindir / tool).symlink_to(FAKEBIN / tool)
        if "nvidia-smi" not in tools:  # hide a host nvidia-smi, if any: this sandbox has no GPU
            (bindir / "nvidia-smi").symlink_to(FAKEBIN / "nvidia-smi")
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
            "TMPDIR": str(tmp),  # where a dry run's resolved config goes
        }

    def allocation(self, nodes: int, gpus: int = 8) -> dict:
        names = ",".join(f"gpu{i + 1}" for i in range(nodes))
        return {
            "SLURM_JOB_ID": "777",
            "SLURM_JOB_NUM_NODES": str(nodes),
            "SLURM_JOB_NODELIST": names,
            "SLURM_GPUS_ON_NODE": str(gpus),
            "SLURM_SUBMIT_DIR": str(REPO),
        }

    def run(self, *args: str, extra_env: dict | None = None, script: Path = SCRIPT, timeout: int = 300):
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(
            ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=self.tmp
        )

    def lines(self, name: str) -> list[str]:
        path = self.log / name
        return path.read_text().splitlines() if path.exists() else []

    def runs(self) -> list[dict]:
        """The recipe runs the fake python was asked for (not its dry runs)."""
        return [json.loads(line) for line in self.lines("python.log")]


def dry_run_config(proc) -> tuple[Path, int]:
    """The file a dry run named for its resolved config, and the line count it printed."""
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("codistill: resolved config (")]
    count, path = line.removeprefix("codistill: resolved config (").split(" lines): ")
    return Path(path), int(count)


def leaves(tree, prefix=""):
    """{"a.b.c": value} of a nested dict (an empty dict is a leaf)."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in leaves(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def one_error_line(proc, rc=2) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("codistill:")]
    assert proc.returncode == rc, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ----------------------------------------------------------------------------- static checks


def test_shellcheck_clean():
    scripts = [
        SCRIPT,
        SBATCH_SCRIPT,
        REPO / "scripts" / "reproduce_paper.sh",
        REPO / "scripts" / "setup.sh",
        REPO / ".ci" / "run",
        *[p for p in FAKEBIN.iterdir() if p.is_file() and p.suffix != ".md"],
    ]
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "shellcheck"), "-x", *map(str, scripts)], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stdout


def test_launcher_is_thin_and_evaluates_nothing():
    text = SCRIPT.read_text()
    assert len(text.splitlines()) < 120
    assert "eval " not in text and "compose" not in text
    assert not (REPO / "scripts" / "lib" / "compose.py").exists()


def test_help(tmp_path):
    proc = Env(tmp_path).run("--help")
    assert proc.returncode == 0
    for word in (
        "--pair",
        "--exp",
        "--nodes",
        "--dry-run",
        "--fresh",
        "CODISTILL_PAIR",
        "CODISTILL_EXP",
        "CODISTILL_NODES",
        "SBATCH_PARTITION",
        "cpu-smoke",
        "slurm-submit",
        "allocation",
        "local-gpu",
    ):
        assert word in proc.stdout, word


@pytest.mark.parametrize(
    "args,message",
    [
        (["--nodes", "two"], "--nodes must be a positive integer, got 'two'"),
        (["--bogus"], "unknown argument '--bogus'"),
        (["--mode", "cloud"], "unknown mode 'cloud'; available: cpu-smoke, slurm-submit, allocation, local-gpu"),
        (
            ["--exp", "../pair/qwen2.5-math-1.5b_7b"],
            "--exp must be a config name (letters, digits, . _ -), got '../pair/qwen2.5-math-1.5b_7b'",
        ),
        (["--pair", "/etc/passwd"], "--pair must be a config name"),
        (
            ["--time", "1:00:00\ntouch /tmp/x"],
            "a control character (newline, tab, ...) in '--time=1:00:00?touch /tmp/x'",
        ),
        (["--partition", "gpu\rx"], "a control character (newline, tab, ...) in '--partition=gpu?x'"),
        (
            ["--", "trainer.experiment_name=a\nb"],
            "a control character (newline, tab, ...) in 'trainer.experiment_name=a?b'",
        ),
        (["--pair"], "--pair needs a value"),
    ],
)
def test_bad_arguments_one_line(tmp_path, args, message):
    e = Env(tmp_path)
    line = one_error_line(e.run(*args))
    assert message in line
    assert e.lines("sbatch.log") == [] and e.lines("srun.log") == [] and e.runs() == []


def test_control_characters_in_sbatch_variables_are_refused(tmp_path):
    e = Env(tmp_path)
    line = one_error_line(e.run(extra_env={"SBATCH_TIMELIMIT": "1:00:00\ntouch /tmp/x"}))
    assert "a control character (newline, tab, ...) in '1:00:00?touch /tmp/x'" in line
    assert e.lines("sbatch.log") == []


# ----------------------------------------------------------------------------- mode detection


@pytest.mark.parametrize(
    "tools,extra,mode",
    [
        ((), {}, "cpu-smoke"),
        (("nvidia-smi",), {"FAKE_GPUS": "4"}, "local-gpu"),
        (("sbatch", "nvidia-smi"), {"FAKE_GPUS": "0"}, "slurm-submit"),
        (
            ("sbatch", "srun", "scontrol"),
            {"SLURM_JOB_ID": "5", "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "8"},
            "allocation",
        ),
    ],
)
@pytest.mark.slow
def test_mode_detection_is_printed_first(tmp_path, tools, extra, mode):
    e = Env(tmp_path, tools=tools)
    proc = e.run("--dry-run", "--exp", "grpo_small", extra_env=extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0].startswith(f"codistill: mode: {mode} ")
    plan = {  # the first line of a dry run says which plan it shows
        "cpu-smoke": "CPU smoke run on this machine (no SLURM, no GPU): the qwen2.5-math-1.5b_7b x grpo_small config",
        "local-gpu": "the recipe on this machine (GPUs, no SLURM): the recipe on this node's 4 GPU(s)",
        "slurm-submit": "SLURM job, 1 node(s) x 8 GPU(s) (sbatch found: without --dry-run it submits)",
        "allocation": "the recipe in this allocation (inside SLURM job 5)",
    }[mode]
    assert proc.stdout.splitlines()[0].startswith(f"codistill: mode: {mode} (dry run), plan: {plan}")
    assert e.lines("sbatch.log") == [] and e.lines("srun.log") == [] and e.runs() == []


def test_unknown_experiment_is_one_line_from_the_entry_point(tmp_path):
    e = Env(tmp_path, tools=())
    proc = e.run("--exp", "ppo", extra_env={"CODISTILL_PYTHON": sys.executable})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "codistill: unknown exp 'ppo'; available: codistill, frozen_teacher, grpo_large, grpo_small, kd_only, no_is"
    )


# ----------------------------------------------------------------------------- sbatch submission


@pytest.mark.slow
def test_submit_checks_then_hands_the_static_script_to_sbatch(tmp_path):
    e = Env(tmp_path)
    proc = e.run(
        "--nodes",
        "2",
        "--exp",
        "no_is",
        "--partition",
        "gpu-long",
        "--account",
        "proj42",
        "--",
        "trainer.total_training_steps=7",
        "trainer.experiment_name='my run'",
        extra_env={"FAKE_JOB_ID": "31337"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = tmp_path / "out" / "slurm" / "codistill-qwen2.5-math-1.5b_7b-no_is-31337.out"
    assert f"codistill: submitted job 31337: log {log}" in proc.stdout
    assert e.lines("srun.log") == [] and e.runs() == []  # nothing ran on the login node
    (line,) = e.lines("sbatch.log")
    hydra = [
        "pair=qwen2.5-math-1.5b_7b",
        "exp=no_is",
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=8",
        "trainer.total_training_steps=7",
        "trainer.experiment_name='my run'",
    ]
    assert shlex.split(line) == sbatch_argv(
        tmp_path,
        "codistill-qwen2.5-math-1.5b_7b-no_is",
        "--partition=gpu-long",
        "--account=proj42",
        "scripts/slurm/codistill.sbatch",
        *hydra,
    )


@pytest.mark.slow
def test_submit_runs_the_config_check_first(tmp_path):
    """A bad algorithm.codistill value never reaches the queue (it would fail once allocated)."""
    e = Env(tmp_path)
    proc = e.run("--", "algorithm.codistill.is.level=tokn")
    assert proc.returncode == 2
    assert "codistill: algorithm.codistill.is.level='tokn' not in ['token', 'sequence', 'geo_mean']" in proc.stderr
    assert "codistill: error: the config check failed (above); nothing was submitted" in proc.stderr
    assert e.lines("sbatch.log") == []


def test_the_sbatch_script_brings_ray_up_with_symmetric_run_on_two_nodes(tmp_path):
    """What SLURM runs on the first node of a two-node job."""
    e = Env(tmp_path)
    proc = e.run(
        "pair=qwen2.5-math-1.5b_7b",
        "exp=codistill",
        "trainer.total_training_steps=7",
        script=SBATCH_SCRIPT,
        extra_env=e.allocation(2),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "codistill: Ray on 2 nodes, head gpu1 (10.0.0.1:6379)" in proc.stdout
    srun = e.lines("srun.log")
    assert srun[0] == "srun --nodes=1 --ntasks=1 --overlap -w gpu1 hostname --ip-address"
    entry = [
        *ENTRY,
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=8",
        "pair=qwen2.5-math-1.5b_7b",
        "exp=codistill",
        "trainer.total_training_steps=7",
    ]
    assert srun[1] == " ".join(
        [
            "srun",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--overlap",
            str(FAKEBIN / "ray"),
            "symmetric-run",
            "--address",
            "10.0.0.1:6379",
            "--min-nodes",
            "2",
            "--num-gpus",
            "8",
            "--",
            *entry,
        ]
    )
    assert e.lines("ray.log") == ["symmetric-run --address 10.0.0.1:6379 --min-nodes 2 --num-gpus 8"]
    (call,) = e.runs()
    assert call["argv"] == entry[1:] and call["node"] == "gpu1"


def test_inside_an_allocation_the_launcher_runs_the_sbatch_script(tmp_path):
    e = Env(tmp_path)
    proc = e.run("--exp", "grpo_large", extra_env=e.allocation(1, gpus=4))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("codistill: mode: allocation (inside SLURM job 777)")
    assert e.lines("srun.log") == [] and e.lines("ray.log") == []  # one node: the recipe starts Ray itself
    (call,) = e.runs()
    assert call["argv"] == ENTRY[1:] + [
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=4",
        "pair=qwen2.5-math-1.5b_7b",
        "exp=grpo_large",
    ]


def test_local_gpu_mode_uses_this_nodes_gpus(tmp_path):
    e = Env(tmp_path, tools=("nvidia-smi",))
    proc = e.run("--exp", "frozen_teacher", "--fresh", extra_env={"FAKE_GPUS": "4"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("codistill: mode: local-gpu (GPUs, no SLURM): the recipe on this node's 4 GPU(s)")
    (call,) = e.runs()
    assert call["argv"] == ENTRY[1:] + [
        "pair=qwen2.5-math-1.5b_7b",
        "exp=frozen_teacher",
        "trainer.nnodes=1",
        "trainer.n_gpus_per_node=4",
        "run.fresh=true",
    ]


@pytest.mark.slow
def test_environment_variables_select_pair_experiment_nodes(tmp_path):
    e = Env(tmp_path)
    proc = e.run(
        extra_env={"CODISTILL_PAIR": "llama-3.2-1b_3.1-8b", "CODISTILL_EXP": "kd_only", "CODISTILL_NODES": "4"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    args = shlex.split(e.lines("sbatch.log")[0])
    assert "--nodes=4" in args and "pair=llama-3.2-1b_3.1-8b" in args and "exp=kd_only" in args
    assert "trainer.nnodes=4" in args


# ----------------------------------------------------------------------------- dry run


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("exp", EXPS)
def test_dry_run_shows_models_and_sbatch_request_and_runs_nothing(tmp_path, pair, exp):
    e = Env(tmp_path)
    proc = e.run("--pair", pair, "--exp", exp, "--nodes", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    small, large = MODELS[pair]
    generator = large if exp == "grpo_large" else small
    assert f"  small model      {generator} (actor + vllm rollout), pool global_pool: 2 node(s) x 8 GPU(s)" in out
    if exp in ("grpo_small", "grpo_large"):
        assert "  large model      off (plain GRPO on the generating model)" in out
    else:
        mode = "frozen (forward only, no optimizer)" if exp == "frozen_teacher" else "trained (codistill_teacher loss)"
        assert f"  large model      {large} {mode}, colocated on global_pool" in out
    config, count = dry_run_config(proc)  # the resolved config: in a file, not on the console
    assert config.parent == tmp_path and "\nactor_rollout_ref:\n  actor:\n" in config.read_text()
    assert len(config.read_text().splitlines()) == count > 900 and len(out.splitlines()) < 40
    assert "codistill: estimated cost: " in out and "GPU-hours" in out
    (request,) = [line for line in out.splitlines() if line.startswith("codistill: would submit: sbatch ")]
    assert "--nodes=2 --gpus-per-node=8" in request and f"pair={pair} exp={exp} trainer.nnodes=2" in request
    assert "codistill: dry run: nothing was run or submitted" in out
    assert e.lines("sbatch.log") == [] and e.lines("srun.log") == [] and e.runs() == []
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the real CPU smoke run


@pytest.mark.slow
def test_no_argument_cpu_smoke_then_a_rerun_resumes(tmp_path):
    """`bash scripts/run_qwen_math.sh` on a machine without SLURM or GPU, then again for one more step:
    the second run resumes (it does not delete the first), and each summary reports the steps it ran."""
    e = Env(tmp_path, tools=())
    # no TMPDIR under pytest's (long) tmp path: Ray puts its session's unix sockets there, and a socket path is
    # limited to 107 bytes (".../sockets/plasma_store" failed)
    env = {k: v for k, v in e.env.items() if k not in ("CODISTILL_PYTHON", "TMPDIR")}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    run = tmp_path / "out" / "cpu" / "qwen2.5-math-1.5b_7b" / "codistill"
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "codistill: mode: cpu-smoke (no SLURM, no GPU): the qwen2.5-math-1.5b_7b x codistill config "
        "with the CPU substitutions, 2 steps"
    )
    assert lines[1] == f"codistill: new run in {run}"
    assert len(console_lines(proc.stdout)) < 80
    assert f"codistill: done: steps 1..2 of 2 in {run} (host " in proc.stdout
    assert f"codistill: metrics (one JSON line per step): {run}/metrics.jsonl" in lines
    assert (
        f"codistill: checkpoint: {run}/checkpoints/global_step_2 (contains: actor data.pt large_actor metrics_row.json)"
        in lines
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert 0 < rows[-1]["data"]["large/is_ess"] <= 1

    proc = subprocess.run(
        ["bash", str(SCRIPT), "--", "trainer.total_training_steps=3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.stdout.splitlines()[1] == f"codistill: resuming run {run} from step 2 (checkpoints/global_step_2)"
    assert f"codistill: done: steps 3..3 of 3 in {run}" in proc.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (run / "checkpoints" / "global_step_2" / "large_actor").is_dir()


@pytest.mark.slow
def test_dry_run_sbatch_line_is_shell_quoted(tmp_path):
    """Issue 16 item 6: the printed "would submit:" line, pasted into a shell, runs sbatch with exactly the
    arguments given (the `;` and `$(...)` stay inside them) and nothing else."""
    e = Env(tmp_path)
    proc = e.run("--partition", "gpu;touch INJECTED_A", "--account", "$(touch INJECTED_B)", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("codistill: would submit: ")]
    pasted = line.removeprefix("codistill: would submit: ")
    ran = subprocess.run(["bash", "-c", pasted], env=e.env, capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert not (tmp_path / "INJECTED_A").exists() and not (tmp_path / "INJECTED_B").exists()
    (logged,) = e.lines("sbatch.log")
    argv = shlex.split(logged)
    assert "--partition=gpu;touch INJECTED_A" in argv and "--account=$(touch INJECTED_B)" in argv
    assert argv[:2] == ["sbatch", "--parsable"] and "scripts/slurm/codistill.sbatch" in argv


# ----------------------------------------------------------------------------- the cluster's plan anywhere


@pytest.mark.slow
def test_nodes_dry_run_without_sbatch_shows_the_slurm_plan(tmp_path, monkeypatch):
    """Issue 17 item 4: `--nodes 2 --dry-run` on a machine without sbatch shows the SLURM job's plan (not a
    CPU smoke run's), says so first, writes the GPU config to a file and starts nothing."""
    e = Env(tmp_path, tools=())
    pair, exp = "qwen2.5-math-1.5b_7b", "codistill"
    proc = e.run("--pair", pair, "--nodes", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "codistill: mode: slurm-submit (dry run), plan: SLURM job, 2 node(s) x 8 GPU(s) "
        "(sbatch not needed for --dry-run)"
    )
    assert len(lines) < 40  # not the ~1,200 lines of the resolved config
    out = proc.stdout
    # the GPU config's models and batch arithmetic (configs/pair/qwen2.5-math-1.5b_7b.yaml: 128 prompts x 8)
    assert (
        "  small model      Qwen/Qwen2.5-Math-1.5B (actor + vllm rollout), pool global_pool: 2 node(s) x 8 GPU(s)"
        in out
    )
    assert "  large model      Qwen/Qwen2.5-Math-7B trained (codistill_teacher loss), colocated on global_pool" in out
    assert "  batch            128 prompts x 8 samples = 1024 responses/step, mini-batch 512" in out
    assert "CPU substitutions" not in out and "hf rollout" not in out
    (cost,) = [x for x in lines if x.startswith("codistill: estimated cost: ")]
    assert "on 16 GPUs" in cost
    (request,) = [x for x in lines if x.startswith("codistill: would submit: ")]
    assert shlex.split(request.removeprefix("codistill: would submit: ")) == sbatch_argv(
        tmp_path,
        f"codistill-{pair}-{exp}",
        "scripts/slurm/codistill.sbatch",
        f"pair={pair}",
        f"exp={exp}",
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=8",
    )
    assert lines[-1] == "codistill: dry run: nothing was run or submitted"
    # the file: the resolved GPU config (hydra composing pair x exp x platform=gpu), key for key
    path, count = dry_run_config(proc)
    assert path.parent == tmp_path and path.name.startswith(f"codistill-dry-run-{pair}-{exp}-")
    written = yaml.safe_load(path.read_text())
    assert len(path.read_text().splitlines()) == count
    from recipe.codistill_grpo import configuration

    for var in ("CODISTILL_OUTPUT_DIR", "CODISTILL_DATA_DIR"):
        monkeypatch.setenv(var, e.env[var])
    gpu = configuration.compose_config(pair, exp, ["trainer.nnodes=2", "trainer.n_gpus_per_node=8"], platform="gpu")
    expected = leaves(OmegaConf.to_container(configuration.resolved(gpu)))
    got = leaves(written)
    assert set(got) == set(expected)
    assert {k for k in got if got[k] != expected[k]} == {"run.dry_run"}
    assert got["actor_rollout_ref.model.path"] == "Qwen/Qwen2.5-Math-1.5B"
    assert got["pair.large.model.path"] == "Qwen/Qwen2.5-Math-7B"
    assert got["actor_rollout_ref.rollout.name"] == "vllm" and got["data.train_batch_size"] == 128
    assert got["trainer.nnodes"] == 2 and got["trainer.n_gpus_per_node"] == 8
    assert got["run.dir"] == f"{tmp_path}/out/{pair}/{exp}"  # the GPU run folder, not <out>/cpu/...
    # nothing launched or written besides that file
    assert e.lines("sbatch.log") == [] and e.lines("srun.log") == [] and e.runs() == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tools,extra", [((), {}), (("nvidia-smi",), {"FAKE_GPUS": "4"})])
def test_nodes_without_sbatch_and_without_dry_run_is_an_error(tmp_path, tools, extra):
    """`--nodes 2` (or CODISTILL_NODES) where there is no sbatch would run on this machine, not on 2 nodes."""
    e = Env(tmp_path, tools=tools)
    mode = "local-gpu" if extra else "cpu-smoke"
    line = one_error_line(e.run("--nodes", "2", extra_env=extra))
    assert line == (
        f"codistill: error: --nodes 2 sizes a SLURM job, but this is a {mode} run on this machine (no sbatch on PATH): "
        "submit from the cluster's login node, add --dry-run to see the SLURM plan here, or leave out --nodes "
        "(and CODISTILL_NODES)"
    )
    line = one_error_line(e.run(extra_env={**extra, "CODISTILL_NODES": "3"}))
    assert line.startswith(f"codistill: error: --nodes 3 sizes a SLURM job, but this is a {mode} run on this machine")
    line = one_error_line(e.run("--nodes", "2", "--mode", "cpu-smoke", "--dry-run", extra_env=extra))
    assert "(--mode cpu-smoke): submit from the cluster's login node, or leave out --nodes" in line
    assert e.runs() == [] and e.lines("sbatch.log") == [] and not (tmp_path / "out").exists()
