#!/usr/bin/env python
"""Reproduce the paper's table: train every method for every seed, evaluate base and trained
models, write the table and the curves. Resumable: a re-run skips finished runs and evaluations.

Run it as ``bash scripts/reproduce_paper.sh`` (--help); details: docs/running.md, section scripts/reproduce_paper.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ["grpo_small", "codistill", "grpo_large"]
ABLATIONS = ["frozen_teacher", "no_is", "kd_only"]
GPU_PAIRS = ["qwen2.5-math-1.5b_7b", "llama-3.2-1b_3.1-8b"]
CPU_PAIRS = ["toy", "toy_strong"]  # the teacher somewhat better / much better
EVAL_ROLES = {"grpo_small": ("small",), "grpo_large": ("large",), "frozen_teacher": ("small",)}  # else both
PYTHON = os.environ.get("CODISTILL_PYTHON") or sys.executable


def progress_step(line: str) -> int | None:
    """The step a run has finished, from one line of its console output (None for any other line):
    the entry point's per-step line ``codistill: step 12/40  <metrics>  (34s elapsed)``."""
    m = re.match(r"codistill: step (\d+)/(\d+)\s", line)
    return int(m.group(1)) if m else None


def say(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def situation() -> str:
    """``allocation`` (inside a SLURM job), ``login`` (sbatch here), ``gpu`` (nvidia-smi lists one) or ``cpu``."""
    if os.environ.get("SLURM_JOB_ID"):
        return "allocation"
    if shutil.which("sbatch"):
        return "login"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        return "gpu" if any(line.startswith("GPU") for line in out.splitlines()) else "cpu"
    return "cpu"


@dataclass
class Run:
    pair: str
    exp: str  # the entry point's exp=
    name: str  # the table's method: exp, or a sweep's codistill[kd.coef=0.3]
    seed: int
    folder: Path
    steps: int
    hydra: list[str]  # the entry point's arguments
    label: str  # <pair>/<name> seed <seed>, for messages

    def checkpoint(self, model: str = "actor") -> Path | None:
        """``<final step>/<model>`` once verl's tracker file names a step >= the run's steps with an actor."""
        with contextlib.suppress(OSError, ValueError):
            step = int((self.folder / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip())
            folder = self.folder / "checkpoints" / f"global_step_{step}"
            return folder / model if step >= self.steps and (folder / "actor").is_dir() else None
        return None


def plan(args) -> None:
    """Sets ``args.runs``, ``args.facts`` (per pair: models, data, suites, eval) and ``args.exps`` (table rows)."""
    sys.path[:0] = [str(REPO), str(REPO / "scripts")]
    from omegaconf import OmegaConf

    from recipe.codistill_grpo.configuration import compose_config, resolved

    platform = "cpu" if args.where == "cpu" else "gpu"
    common = [f"trainer.total_training_steps={args.steps}"] * bool(args.steps) + list(args.overrides)
    variants = {"codistill": ("codistill", [])}  # table name: (folder, extra hydra)
    if args.sweep:
        key, values = args.sweep
        short = ".".join(key.split(".")[-2:])
        folder = lambda v: re.sub(r"[^A-Za-z0-9._-]", "_", f"codistill_{short}-{v}")  # noqa: E731
        variants = {f"codistill[{short}={v}]": (folder(v), [f"{key}={v}"]) for v in values}
    args.exps = [n for e in METHODS + ABLATIONS * args.ablations for n in (variants if e == "codistill" else [e])]
    args.runs, args.facts = [], {}
    for pair in args.pairs:
        base = resolved(compose_config(pair, "codistill", common, platform=platform))
        val = [Path(v) for v in base.data.val_files]
        facts = args.facts[pair] = {role: str(base.pair[role].model.path) for role in ("small", "large")}
        facts.update(data_dir=str(val[0].parent), suites=[v.stem for v in val])
        facts["max_tokens"] = int(base.data.max_response_length)
        if (node := OmegaConf.select(base, "pair.eval", default=None)) is not None:  # evaluate.py --sampled n,t
            bad = f"pair {pair}: pair.eval needs"
            try:
                n, temperature = int(node["n"]), float(node["temperature"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{bad} integer n and float temperature, got {node} ({e})") from None
            if n < 1 or temperature <= 0:
                raise ValueError(f"{bad} n >= 1 and temperature > 0, got n={n} {temperature=}")
        facts["sampled"] = None if node is None else f"{n},{temperature}"
        for seed, name in ((seed, name) for seed in args.seeds for name in args.exps):
            (folder_name, extra), exp = variants.get(name, (name, [])), "codistill" if name in variants else name
            folder = args.out / "runs" / pair / folder_name / f"seed{seed}"
            hydra = [f"pair={pair}", f"exp={exp}", f"platform={platform}", f"run.seed={seed}", f"run.dir={folder}"]
            steps, label = int(base.trainer.total_training_steps), f"{pair}/{name} seed {seed}"
            args.runs.append(Run(pair, exp, name, seed, folder, steps, [*hydra, *common, *extra], label))


def expected_time(args, todo: list[Run]) -> str:
    """One line: runs to train x per-run minutes, measured from finished runs' logs or estimated."""
    from make_tables import read_log, train_minutes  # the table's train time, read the table's way

    measured = []
    for run in (r for r in args.runs if r.checkpoint()):
        with contextlib.suppress(OSError, ValueError):  # no log yet, or a broken one: not a measurement
            log = read_log(run.folder / "metrics.jsonl")
            measured += [m for m in train_minutes({"run": log}).get("run", []) if m > 0]
    if measured:
        per_run, how = sum(measured) / len(measured), f"measured: mean of {len(measured)} finished runs"
    elif args.where == "cpu":
        per_run, how = 1 + 3 * max(r.steps for r in todo) / 60, "estimate: ~3 s per CPU step + 1 min start-up"
    else:
        return f"{len(todo)} runs to train; no finished run to time them by"
    return f"{len(todo)} runs to train x {per_run:.1f} min per run ({how}) = about {len(todo) * per_run:.0f} min"


def act(args, cmd: list[str], stream=None, fail: str = "") -> int:
    """Run ``cmd`` here (--dry-run: print it); ``stream`` gets each line (last 40 shown on failure); ``fail``: error."""
    if args.dry_run:
        print("would run: " + shlex.join(cmd), flush=True)
        return 0
    if stream is None:
        say("+ " + shlex.join(cmd))
        rc = subprocess.run(cmd, cwd=REPO).returncode
    else:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: deque[str] = deque(maxlen=40)
        for line in proc.stdout:
            tail.append(line)
            stream(line)
        if rc := proc.wait():
            sys.stdout.write("".join(tail))
    if rc and fail:
        raise SystemExit(f"[reproduce] error: {fail}")
    return rc


def stage_train(args) -> list[str]:
    """Run (or submit) every unfinished run; returns the SLURM job ids (login node) to wait for."""
    todo = [r for r in args.runs if not r.checkpoint()]
    for run in (r for r in args.runs if r not in todo):
        say(f"skip run {run.label}: finished ({run.folder})")
    if todo:
        say("expected time: " + expected_time(args, todo))
    jobs: list[str] = []
    for run in todo if args.where == "login" else []:
        with contextlib.suppress(OSError):
            job = (run.folder / "slurm_job_id").read_text().strip()
            if subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
                say(f"skip run {run.label}: SLURM job {job} is still queued or running")
                jobs.append(job)
                continue
        cmd = ["bash", "scripts/run_qwen_math.sh", "--pair", run.pair, "--exp", run.exp]
        cmd += ["--nodes", str(args.nodes)] * bool(args.nodes) + ["--", *run.hydra[3:]]
        if args.dry_run:
            act(args, cmd)
            continue
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        sys.stdout.write(out.stdout)
        if out.returncode:
            raise SystemExit(f"[reproduce] error: submitting {run.label} failed:\n{out.stderr[-2000:]}")
        jobs.append(re.search(r"submitted job (\S+):", out.stdout).group(1))
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / "slurm_job_id").write_text(jobs[-1] + "\n")
    done, start, total = 0, time.monotonic(), sum(r.steps for r in todo)
    for i, run in enumerate([] if args.where == "login" else todo, 1):
        head = f"run {i}/{len(todo)} {run.label}"

        def progress(line: str, head=head, run=run, before=done) -> None:
            if (step := progress_step(line)) is not None:
                elapsed, left = time.monotonic() - start, total - (before + step)
                left_min = left * (elapsed / max(before + step, 1)) / 60
                say(f"{head}: step {step}/{run.steps}; elapsed {elapsed / 60:.1f} min, about {left_min:.0f} min left")

        say(f"{head}: training in {run.folder}")
        if rc := act(args, [PYTHON, "-m", "recipe.codistill_grpo.main_codistill", *run.hydra], progress):
            raise SystemExit(f"[reproduce] error: {run.label} failed (exit {rc}); see {run.folder}/train.log")
        done += run.steps
    return jobs


def _evaluate(args, pair: str, name: str, checkpoint: str, method: str, role: str, seed=None, exp="base") -> None:
    """Evaluate one model into results/<pair>/<name> (and <name>-sampled with ``pair.eval``) unless complete."""
    facts, results = args.facts[pair], args.out / "results" / pair
    folders = [name] + [f"{name}-sampled"] * bool(facts["sampled"])
    with contextlib.suppress(OSError, ValueError):
        files = [results / folder / f"{suite}.json" for folder in folders for suite in facts["suites"]]
        if all(json.loads(file.read_text()).get("complete") for file in files):
            return say(f"skip evaluation {pair}/{name}: results complete")
    cmd = [PYTHON, "scripts/evaluate.py", "--checkpoint", checkpoint, "--name", name, "--out", str(results)]
    cmd += ["--data-dir", facts["data_dir"], "--suites", ",".join(facts["suites"]), "--no-progress"]
    cmd += ["--backend", "hf" if args.where == "cpu" else "vllm", "--max-tokens", str(facts["max_tokens"])]
    cmd += ["--pair", pair, "--method", method, "--role", role, "--merged-root", str(args.out / "merged" / pair / exp)]
    cmd += ["--run-seed", str(seed)] * (seed is not None)
    if {"aime24", "amc23"} & set(facts["suites"]):
        cmd += ["--suite-n", "aime24=16,amc23=16", "--sample-temperature", "0.6"]
    cmd += ["--sampled", facts["sampled"]] * bool(facts["sampled"])  # one model load: greedy, then sampled
    cmd += ["--batch-size", "64"] * (args.where == "cpu")  # the toy models: one generate call per 64 items
    act(args, cmd, fail=f"evaluating {pair}/{name} failed")


def stage_eval(args) -> None:
    for pair, facts in args.facts.items():
        if args.where == "cpu":  # the base models are the CPU stand-in pair, built on first use (cached)
            folder = str(Path(facts["small"]).parents[1])
            cmd = [PYTHON, "-m", "recipe.codistill_grpo.cpu.stand_in", "--pair", pair, "--out", folder]
            act(args, cmd, fail=f"building the {pair} pair in {folder} failed")
        for role in ("small", "large"):
            _evaluate(args, pair, f"base_{role}", facts[role], "base", role)
    for run in args.runs:
        if not run.checkpoint():
            say(f"skip evaluation {run.label}: no final checkpoint yet ({run.folder})")
            continue
        method, exp = ("grpo" if run.exp.startswith("grpo_") else run.name), run.folder.parent.name
        for role in EVAL_ROLES.get(run.exp, ("small", "large")):
            model = "large_actor" if role == "large" and run.exp != "grpo_large" else "actor"
            name, checkpoint = f"{exp}-seed{run.seed}-{role}", str(run.checkpoint(model))
            _evaluate(args, run.pair, name, checkpoint, method, role, run.seed, exp)


def stage_tables(args) -> None:
    """One table per pair (tables/<pair>/) from its results and its own runs' logs (train time, tokens)."""
    for pair, facts in args.facts.items():
        cmd = [PYTHON, "scripts/make_tables.py", "--results", str(args.out / "results" / pair)]
        cmd += ["--out", str(args.out / "tables" / pair), "--suites", ",".join(facts["suites"])]
        logged = [r for r in args.runs if r.pair == pair and (r.folder / "metrics.jsonl").exists()]
        cmd += [a for r in logged for a in ("--log", f"{r.name}/{r.seed}={r.folder / 'metrics.jsonl'}")]
        cmd += ["--seeds", ",".join(map(str, args.seeds))] + ["--allow-missing"] * args.allow_missing
        act(args, cmd, fail=f"make_tables.py failed for {pair}")


def submit_after_train(args, jobs: list[str]) -> None:
    """One SLURM job, after ``jobs``, that runs this script's eval and tables stages."""
    cmd = ["bash", "scripts/reproduce_paper.sh", "--stage", "after-train", "--pairs", ",".join(args.pairs)]
    cmd += ["--seeds", ",".join(map(str, args.seeds))] + ["--ablations"] * args.ablations
    cmd += ["--steps", str(args.steps)] * bool(args.steps)
    cmd += ["--sweep", f"{args.sweep[0]}={','.join(args.sweep[1])}"] if args.sweep else []
    cmd += ["--allow-missing"] * args.allow_missing + ["--", *args.overrides] * bool(args.overrides)
    log = Path(os.environ["CODISTILL_OUTPUT_DIR"]) / "slurm" / "%x-%j.out"
    sbatch = ["sbatch", "--parsable", f"--chdir={REPO}", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=8"]
    sbatch += ["--job-name=codistill-reproduce-eval", f"--output={log}"]
    sbatch += ["--dependency=afterany:" + ":".join(jobs)] * bool(jobs) + ["scripts/slurm/job.sbatch", *cmd]
    if args.dry_run:
        return print("would submit: " + shlex.join(sbatch), flush=True)
    out = subprocess.run(sbatch, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"[reproduce] error: sbatch refused the evaluation job: {out.stderr.strip()}")
    after = f" after jobs {', '.join(jobs)}" if jobs else ""
    say(f"submitted evaluation job {out.stdout.strip().split(';')[0]}{after}; tables will be in {args.out / 'tables'}")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))  # this checkout's recipe package
    from recipe.codistill_grpo.cli import parse_with_overrides

    p = argparse.ArgumentParser(prog="reproduce_paper.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", help="comma-separated (default: toy on CPU, the two paper pairs elsewhere)")
    p.add_argument("--seeds", help="comma-separated training seeds (default: 1,2,3 on CPU, 1 elsewhere)")
    p.add_argument("--steps", type=int, help="training steps of every run (default: the pair's)")
    p.add_argument("--ablations", action="store_true", help="also frozen_teacher, no_is, kd_only")
    p.add_argument("--stage", default="all", choices=("all", "train", "eval", "tables", "after-train"))
    p.add_argument("--nodes", type=int, help="nodes per training run (login node: run_qwen_math.sh --nodes)")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is skipped; run nothing")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", help="one codistill run per value of a hydra key")
    p.add_argument("--allow-missing", action="store_true", help="make_tables.py: tabulate despite missing results")
    args, args.overrides = parse_with_overrides(p, argv)
    if args.sweep:
        key, _, values = args.sweep.partition("=")
        if not re.fullmatch(r"[A-Za-z_][\w.]*", key) or not (values := [v for v in values.split(",") if v]):
            raise SystemExit(f"[reproduce] error: --sweep expects KEY=V1,V2,... (a hydra key), got {args.sweep!r}")
        args.sweep = (key, values)
    os.environ.setdefault("CODISTILL_OUTPUT_DIR", str(REPO / "outputs"))
    os.environ.setdefault("CODISTILL_DATA_DIR", str(REPO / "data"))
    args.where, args.out = situation(), Path(os.environ["CODISTILL_OUTPUT_DIR"]) / "reproduce"
    say(f"situation: {args.where}")
    cpu = args.where == "cpu"
    args.pairs = (args.pairs or ("toy" if cpu else ",".join(GPU_PAIRS))).split(",")
    try:
        args.seeds = [int(s) for s in (args.seeds or ("1,2,3" if cpu else "1")).split(",") if s]
    except ValueError:
        raise SystemExit(f"[reproduce] error: --seeds must be comma-separated integers, got {args.seeds!r}") from None
    for pair in (p for p in args.pairs if cpu and p not in CPU_PAIRS):
        raise SystemExit(f"[reproduce] error: pair {pair} needs GPUs; on a CPU machine use --pairs toy or toy_strong")
    try:
        plan(args)
    except ValueError as e:  # an unknown pair or a bad override: one line from the config module
        raise SystemExit(f"[reproduce] error: {e}") from None
    what = f"{', '.join(args.exps)} x seeds {', '.join(map(str, args.seeds))} on {', '.join(args.pairs)}"
    say(f"{len(args.runs)} runs: {what}; output in {args.out}")
    started, jobs = time.monotonic(), []
    stages = {"all": ["train", "eval", "tables"], "after-train": ["eval", "tables"]}.get(args.stage, [args.stage])
    for stage in stages[:1] if args.where == "login" and args.stage == "all" else stages:  # login: eval is a job
        say(f"== stage {stage}")
        jobs = {"train": stage_train, "eval": stage_eval, "tables": stage_tables}[stage](args) or jobs
    if args.where == "login" and args.stage == "all":
        submit_after_train(args, jobs)
    dry = "dry run: nothing was run or submitted; " if args.dry_run else ""
    say(f"{dry}done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
