#!/usr/bin/env python
"""Reproduce the paper's table: train every method for every seed, evaluate base and trained
models, write the table and the curves. Resumable: a re-run skips finished runs and evaluations.

    bash scripts/reproduce_paper.sh [--pairs a,b] [--seeds 1,2,3] [--steps N] [--ablations]
                                    [--stage all|train|eval|tables|after-train] [--nodes N] [--dry-run]
                                    [--sweep KEY=V1,V2,...] [--allow-missing] [-- overrides]

Details (formats, equations, options): docs/running.md, section scripts/reproduce_paper.py.
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
STAGES = ("all", "train", "eval", "tables", "after-train")
EVAL_ROLES = {"grpo_small": ("small",), "grpo_large": ("large",), "frozen_teacher": ("small",)}  # else both


# the entry point's per-step console line: "codistill: step 12/40  <metrics>  (34s elapsed)"
_STEP_LINE = re.compile(r"^codistill: step (\d+)/(\d+)\s")


def progress_step(line: str) -> int | None:
    """The step a run has finished, from one line of its console output (None for any other line)."""
    m = _STEP_LINE.match(line)
    return int(m.group(1)) if m else None


def say(message: str) -> None:
    print(f"[reproduce] {message}", flush=True)


def situation() -> str:
    if os.environ.get("SLURM_JOB_ID"):
        return "allocation"
    if shutil.which("sbatch"):
        return "login"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return "gpu" if any(line.startswith("GPU") for line in out.splitlines()) else "cpu"


@dataclass
class Run:
    pair: str
    exp: str
    seed: int
    folder: Path
    steps: int
    hydra: list[str]  # the entry point's arguments
    name: str = ""  # the table's method: exp, or a sweep's codistill[kd.coef=0.3]

    @property
    def label(self) -> str:
        return f"{self.pair}/{self.name or self.exp} seed {self.seed}"

    def latest_step(self) -> int | None:
        """The step verl's tracker file names (None: no checkpoint yet)."""
        try:
            return int((self.folder / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip())
        except (OSError, ValueError):
            return None

    def checkpoint(self, model: str) -> Path:
        return self.folder / "checkpoints" / f"global_step_{self.latest_step()}" / model

    def finished(self) -> bool:
        step = self.latest_step()
        return step is not None and step >= self.steps and self.checkpoint("actor").is_dir()


class Plan:
    """What the stages do for the pairs, seeds and methods asked for; facts come from the recipe's config."""

    def __init__(self, args, where: str):
        sys.path[:0] = [str(REPO), str(REPO / "scripts")]
        from omegaconf import OmegaConf

        from recipe.codistill_grpo.configuration import compose_config, resolved

        self.args, self.where = args, where
        self.platform = "cpu" if where == "cpu" else "gpu"
        self.out = Path(os.environ["CODISTILL_OUTPUT_DIR"]) / "reproduce"
        self.exps = METHODS + (ABLATIONS if args.ablations else [])
        variants = [("codistill", "codistill", [])]  # (table name, folder, extra hydra)
        if args.sweep:
            key, values = args.sweep
            short = ".".join(key.split(".")[-2:])
            variants = [
                (f"codistill[{short}={v}]", re.sub(r"[^A-Za-z0-9._-]", "_", f"codistill_{short}-{v}"), [f"{key}={v}"])
                for v in values
            ]
            self.exps = [v for e in self.exps for v in ([n for n, _, _ in variants] if e == "codistill" else [e])]
        variant_of = {n: (folder, extra) for n, folder, extra in variants}
        self.runs: list[Run] = []
        self.pairs: dict[str, dict] = {}
        for pair in args.pairs:
            base = resolved(compose_config(pair, "codistill", self._common(), platform=self.platform))
            val = [Path(v) for v in base.data.val_files]
            small, large = (str(base.pair[r].model.path) for r in ("small", "large"))
            steps, max_tokens = int(base.trainer.total_training_steps), int(base.data.max_response_length)
            sampled = _sampled_eval(pair, OmegaConf.select(base, "pair.eval", default=None))
            self.pairs[pair] = dict(small=small, large=large, data_dir=str(val[0].parent), suites=[v.stem for v in val])
            self.pairs[pair].update(max_tokens=max_tokens, steps=steps, sampled=sampled)
            for seed in args.seeds:
                for name in self.exps:
                    exp, folder_name, extra = (
                        ("codistill", *variant_of[name]) if name in variant_of else (name, name, [])
                    )
                    folder = self.out / "runs" / pair / folder_name / f"seed{seed}"
                    hydra = [f"pair={pair}", f"exp={exp}", f"platform={self.platform}", f"run.seed={seed}"]
                    hydra += [f"run.dir={folder}", *self._common(), *extra]
                    self.runs.append(Run(pair, exp, seed, folder, self.pairs[pair]["steps"], hydra, name))

    def expected_minutes(self, todo: list[Run]) -> str:
        """One line: runs to train x per-run minutes, measured from finished runs' logs or estimated."""
        from make_tables import read_log, train_minutes  # the table's train time, read the table's way

        measured = []
        for run in filter(Run.finished, self.runs):
            with contextlib.suppress(OSError, ValueError):  # no log yet, or a broken one: not a measurement
                minutes = train_minutes({"run": read_log(run.folder / "metrics.jsonl")}).get("run", [])
                measured += [m for m in minutes if m > 0]
        if measured:
            per_run, how = sum(measured) / len(measured), f"measured: mean of {len(measured)} finished runs"
        elif self.platform == "cpu":
            per_run, how = 1 + 3 * max(r.steps for r in todo) / 60, "estimate: ~3 s per CPU step + 1 min start-up"
        else:
            return f"{len(todo)} runs to train; no finished run to time them by"
        return f"{len(todo)} runs to train x {per_run:.1f} min per run ({how}) = about {len(todo) * per_run:.0f} min"

    def _common(self) -> list[str]:
        steps = [f"trainer.total_training_steps={self.args.steps}"] if self.args.steps else []
        return steps + list(self.args.overrides)


def _sampled_eval(pair: str, node) -> dict | None:
    """``{"n", "temperature"}`` of a pair's ``pair.eval`` node (None: greedy evaluation only)."""
    if node is None:
        return None
    try:
        n, temperature = int(node["n"]), float(node["temperature"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"pair {pair}: pair.eval needs integer n and float temperature, got {node} ({e})") from None
    if n < 1 or temperature <= 0:
        raise ValueError(f"pair {pair}: pair.eval needs n >= 1 and temperature > 0, got n={n} {temperature=}")
    return {"n": n, "temperature": temperature}


def act(args, cmd: list[str], stream=None) -> int:
    if args.dry_run:
        print("would run: " + shlex.join(cmd), flush=True)
        return 0
    if stream is None:
        say("+ " + shlex.join(cmd))
        return subprocess.run(cmd, cwd=REPO).returncode
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: deque[str] = deque(maxlen=40)
    for line in proc.stdout:
        tail.append(line)
        stream(line)
    rc = proc.wait()
    if rc:
        sys.stdout.write("".join(tail))
    return rc


def python() -> str:
    return os.environ.get("CODISTILL_PYTHON") or sys.executable


# ------------------------------------------------------------------------------------------ stages


def stage_train(plan: Plan) -> list[str]:
    """Run (or submit) every unfinished run; returns the submitted SLURM job ids (login node)."""
    args, todo = plan.args, [r for r in plan.runs if not r.finished()]
    for run in plan.runs:
        if run.finished():
            say(f"skip run {run.label}: finished ({run.folder})")
    if todo:
        say("expected time: " + plan.expected_minutes(todo))
    jobs: list[str] = []
    if plan.where == "login":
        for run in todo:
            job = _pending_job(run)
            if job:
                say(f"skip run {run.label}: SLURM job {job} is still queued or running")
                jobs.append(job)
                continue
            cmd = ["bash", "scripts/run_qwen_math.sh", "--pair", run.pair, "--exp", run.exp]
            cmd += (["--nodes", str(args.nodes)] if args.nodes else []) + ["--", *run.hydra[3:]]
            if args.dry_run:
                act(args, cmd)
                continue
            out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            sys.stdout.write(out.stdout)
            if out.returncode:
                raise SystemExit(f"[reproduce] error: submitting {run.label} failed:\n{out.stderr[-2000:]}")
            words = [w for line in out.stdout.splitlines() if "submitted job" in line for w in line.split()]
            job = words[3].rstrip(":")
            run.folder.mkdir(parents=True, exist_ok=True)
            (run.folder / "slurm_job_id").write_text(job + "\n")
            jobs.append(job)
        return jobs
    total_steps = sum(r.steps for r in todo)
    done_steps, start = 0, time.monotonic()
    for i, run in enumerate(todo, 1):

        def progress(line: str, run=run, i=i, before=done_steps) -> None:
            step = progress_step(line)
            if step is None:
                return
            elapsed = time.monotonic() - start
            left = total_steps - (before + step)
            rate = elapsed / max(before + step, 1)
            say(
                f"run {i}/{len(todo)} {run.label}: step {step}/{run.steps}; elapsed {elapsed / 60:.1f} min, "
                f"about {left * rate / 60:.0f} min left"
            )

        say(f"run {i}/{len(todo)} {run.label}: training in {run.folder}")
        rc = act(args, [python(), "-m", "recipe.codistill_grpo.main_codistill", *run.hydra], stream=progress)
        if rc:
            raise SystemExit(f"[reproduce] error: {run.label} failed (exit {rc}); see {run.folder}/train.log")
        done_steps += run.steps
    return jobs


def _pending_job(run: Run) -> str | None:
    """The SLURM job of this run if it is still queued or running."""
    try:
        job = (run.folder / "slurm_job_id").read_text().strip()
    except OSError:
        return None
    out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
    return job if out.returncode == 0 and out.stdout.strip() else None


def _complete(folder: Path, suites: list[str]) -> bool:
    """Every suite's evaluate.py result is there and marked complete."""
    with contextlib.suppress(OSError, ValueError):
        return all(json.loads((folder / f"{suite}.json").read_text()).get("complete") for suite in suites)
    return False


def _evaluate(
    plan: Plan, pair: str, name: str, checkpoint: str, method: str, role: str, seed: int | None, exp: str = "base"
) -> None:
    """Evaluate one model greedily into results/<pair>/<name>; with ``pair.eval`` also sampled into
    results/<pair>/<name>-sampled (n samples per item at its temperature). Complete results are skipped."""
    facts = plan.pairs[pair]
    results = plan.out / "results" / pair
    sampling, folders = [], [name]
    if {"aime24", "amc23"} & set(facts["suites"]):
        sampling = ["--suite-n", "aime24=16,amc23=16", "--sample-temperature", "0.6"]
    if facts["sampled"]:  # one evaluate call, one model load: greedy, then sampled into <name>-sampled
        sampled = facts["sampled"]
        sampling += ["--sampled", f"{sampled['n']},{sampled['temperature']}"]
        folders.append(f"{name}-sampled")
    if all(_complete(results / folder, facts["suites"]) for folder in folders):
        say(f"skip evaluation {pair}/{name}: results complete")
        return
    cmd = [python(), "scripts/evaluate.py", "--checkpoint", checkpoint, "--name", name, "--out", str(results)]
    cmd += ["--data-dir", facts["data_dir"], "--suites", ",".join(facts["suites"]), "--no-progress"]
    cmd += ["--backend", "hf" if plan.where == "cpu" else "vllm", "--max-tokens", str(facts["max_tokens"])]
    cmd += ["--pair", pair, "--method", method, "--role", role]
    cmd += ["--merged-root", str(plan.out / "merged" / pair / exp)]  # run folders are seed<N> under each exp
    cmd += (["--run-seed", str(seed)] if seed is not None else []) + sampling
    cmd += ["--batch-size", "64"] if plan.where == "cpu" else []  # the toy models: one generate call per 64 items
    if act(plan.args, cmd):
        raise SystemExit(f"[reproduce] error: evaluating {pair}/{name} failed")


def stage_eval(plan: Plan) -> None:
    for pair, facts in plan.pairs.items():
        if plan.where == "cpu":  # the base models are the CPU stand-in pair, built on first use (cached)
            folder = str(Path(facts["small"]).parents[1])
            if act(plan.args, [python(), "-m", "recipe.codistill_grpo.cpu.stand_in", "--pair", pair, "--out", folder]):
                raise SystemExit(f"[reproduce] error: building the {pair} pair in {folder} failed")
        for role in ("small", "large"):
            _evaluate(plan, pair, f"base_{role}", facts[role], "base", role, None)
    for run in plan.runs:
        if not run.finished():
            say(f"skip evaluation {run.label}: no final checkpoint yet ({run.folder})")
            continue
        method, exp = ("grpo" if run.exp.startswith("grpo_") else run.name), run.folder.parent.name
        for role in EVAL_ROLES.get(run.exp, ("small", "large")):
            model = "large_actor" if role == "large" and run.exp != "grpo_large" else "actor"
            name, checkpoint = f"{exp}-seed{run.seed}-{role}", str(run.checkpoint(model))
            _evaluate(plan, run.pair, name, checkpoint, method, role, run.seed, exp)


def stage_tables(plan: Plan) -> None:
    """One table per pair (tables/<pair>/): its results, its runs' logs (a row's train time and
    tokens come from the same pair's runs)."""
    for pair, facts in plan.pairs.items():
        cmd = [python(), "scripts/make_tables.py", "--results", str(plan.out / "results" / pair)]
        cmd += ["--out", str(plan.out / "tables" / pair), "--suites", ",".join(facts["suites"])]
        for r in plan.runs:
            if r.pair == pair and (r.folder / "metrics.jsonl").exists():
                cmd += ["--log", f"{r.name}/{r.seed}={r.folder / 'metrics.jsonl'}"]
        cmd += ["--seeds", ",".join(map(str, plan.args.seeds))] + ["--allow-missing"] * plan.args.allow_missing
        if act(plan.args, cmd):
            raise SystemExit(f"[reproduce] error: make_tables.py failed for {pair}")


def submit_after_train(plan: Plan, jobs: list[str]) -> None:
    args = plan.args
    cmd = ["bash", "scripts/reproduce_paper.sh", "--stage", "after-train", "--pairs", ",".join(args.pairs)]
    cmd += ["--seeds", ",".join(map(str, args.seeds))]
    cmd += (["--ablations"] if args.ablations else []) + (["--steps", str(args.steps)] if args.steps else [])
    cmd += ["--sweep", f"{args.sweep[0]}={','.join(args.sweep[1])}"] if args.sweep else []
    cmd += ["--allow-missing"] if args.allow_missing else []
    cmd += ["--", *args.overrides] if args.overrides else []
    log = Path(os.environ["CODISTILL_OUTPUT_DIR"]) / "slurm" / "%x-%j.out"
    sbatch = ["sbatch", "--parsable", f"--chdir={REPO}", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=8"]
    sbatch += ["--job-name=codistill-reproduce-eval", f"--output={log}"]
    if jobs:
        sbatch.append("--dependency=afterany:" + ":".join(jobs))
    sbatch += ["scripts/slurm/job.sbatch", *cmd]
    if args.dry_run:
        print("would submit: " + shlex.join(sbatch), flush=True)
        return
    out = subprocess.run(sbatch, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"[reproduce] error: sbatch refused the evaluation job: {out.stderr.strip()}")
    after = f" after jobs {', '.join(jobs)}" if jobs else ""
    say(f"submitted evaluation job {out.stdout.strip().split(';')[0]}{after}; tables will be in {plan.out / 'tables'}")


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))  # this checkout's recipe package
    from recipe.codistill_grpo.cli import parse_with_overrides

    p = argparse.ArgumentParser(prog="reproduce_paper.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", help="comma-separated (default: toy on CPU, the two paper pairs elsewhere)")
    p.add_argument("--seeds", help="comma-separated training seeds (default: 1,2,3 on CPU, 1 elsewhere)")
    p.add_argument("--steps", type=int, help="training steps of every run (default: the pair's)")
    p.add_argument("--ablations", action="store_true", help="also frozen_teacher, no_is, kd_only")
    p.add_argument("--stage", default="all", choices=STAGES)
    p.add_argument("--nodes", type=int, help="nodes per training run (login node: run_qwen_math.sh --nodes)")
    p.add_argument("--dry-run", action="store_true", help="list what would run and what is skipped; run nothing")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", help="one codistill run per value of a hydra key")
    p.add_argument("--allow-missing", action="store_true", help="make_tables.py: tabulate despite missing results")
    args, overrides = parse_with_overrides(p, argv)
    if args.sweep:
        key, _, values = args.sweep.partition("=")
        values = [v for v in values.split(",") if v]
        if not re.fullmatch(r"[A-Za-z_][\w.]*", key) or not values:
            raise SystemExit(f"[reproduce] error: --sweep expects KEY=V1,V2,... (a hydra key), got {args.sweep!r}")
        args.sweep = (key, values)
    args.overrides = overrides
    os.environ.setdefault("CODISTILL_OUTPUT_DIR", str(REPO / "outputs"))
    os.environ.setdefault("CODISTILL_DATA_DIR", str(REPO / "data"))
    where = situation()
    say(f"situation: {where}")
    args.pairs = (args.pairs or ("toy" if where == "cpu" else ",".join(GPU_PAIRS))).split(",")
    try:
        args.seeds = [int(s) for s in (args.seeds or ("1,2,3" if where == "cpu" else "1")).split(",") if s]
    except ValueError:
        raise SystemExit(f"[reproduce] error: --seeds must be comma-separated integers, got {args.seeds!r}") from None
    for pair in (p for p in args.pairs if where == "cpu" and p not in CPU_PAIRS):
        raise SystemExit(f"[reproduce] error: pair {pair} needs GPUs; on a CPU machine use --pairs toy or toy_strong")
    try:
        plan = Plan(args, where)
    except ValueError as e:  # an unknown pair or a bad override: one line from the config module
        raise SystemExit(f"[reproduce] error: {e}") from None
    say(
        f"{len(plan.runs)} runs: {', '.join(plan.exps)} x seeds {', '.join(map(str, args.seeds))} on "
        f"{', '.join(args.pairs)}; output in {plan.out}"
    )
    started = time.monotonic()
    stages = {"after-train": ["eval", "tables"], "all": ["train"] if where == "login" else ["train", "eval", "tables"]}
    stages = stages.get(args.stage, [args.stage])
    jobs: list[str] = []
    for stage in stages:
        say(f"== stage {stage}")
        result = {"train": stage_train, "eval": stage_eval, "tables": stage_tables}[stage](plan)
        jobs = result or jobs
    if where == "login" and args.stage == "all":
        submit_after_train(plan, jobs)
    dry = "dry run: nothing was run or submitted; " if args.dry_run else ""
    say(f"{dry}done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
