#!/usr/bin/env python
"""Per-phase step time of CoDistill-GRPO vs the small-only GRPO baseline, through the real entry point.

Runs ``python -m recipe.codistill_grpo.main_codistill`` twice with the same settings (CoDistill, then
the baseline ``large.enable=false, kd.coef=0``), reads each run's per-step metrics (verl's file
logger) and prints the mean time per phase over the steps after the warm-up steps, with the ratio.

    # CPU (no GPU present): the tiny model pair, built on the fly, and the CPU preset
    python scripts/bench_step.py --steps 6 --warmup 2

    # GPU: real models; pass the GPU overrides (rollout engine, batch sizes, ...) after `--`
    python scripts/bench_step.py --small Qwen/Qwen2.5-Math-1.5B --large Qwen/Qwen2.5-Math-7B \\
        --train data/train.parquet --val data/eval.parquet --steps 8 -- actor_rollout_ref.rollout.name=vllm ...

Phases: generate (``timing_s/gen``), reward, small/large old log-probs, advantage (verl's pass plus
the codistill pass), small/large update, weight sync (``timing_s/update_weights``) and the whole step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENTRY = "recipe.codistill_grpo.main_codistill"

# (label, metric keys summed)
PHASES = [
    ("generate", ["timing_s/gen"]),
    ("reward", ["timing_s/reward"]),
    ("small log-prob", ["timing/small_log_prob"]),
    ("large log-prob", ["timing/large_log_prob"]),
    ("advantage", ["timing_s/adv", "timing/codistill_adv"]),
    ("small update", ["timing/small_update"]),
    ("large update", ["timing/large_update"]),
    ("weight sync", ["timing_s/update_weights"]),
    ("step (total)", ["timing_s/step"]),
]


def _gpu_present() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _run(out: Path, overrides: list[str], env: dict) -> dict[int, dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**env, "VERL_FILE_LOGGER_PATH": str(out / "metrics.jsonl")}
    cmd = [sys.executable, "-m", ENTRY, *overrides, "trainer.logger=[console,file]"]
    with open(out / "train.log", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if rc != 0:
        raise SystemExit(f"bench_step: run failed (exit {rc}), see {out / 'train.log'}")
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rows[rec["step"]] = rec["data"]
    return rows


def _phase_means(rows: dict[int, dict], warmup: int) -> dict[str, float | None]:
    steps = [s for s in sorted(rows) if s > warmup]
    if not steps:
        raise SystemExit(f"bench_step: no steps after the {warmup} warm-up steps; raise --steps")
    means = {}
    for label, keys in PHASES:
        present = [k for k in keys if all(k in rows[s] for s in steps)]
        means[label] = (
            sum(sum(float(rows[s][k]) for k in present) for s in steps) / len(steps) if present else None
        )
    return means


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:9.1f}"


def main(argv: list[str] | None = None) -> int:
    from recipe.codistill_grpo.cpu.smoke import split_passthrough

    argv, extra = split_passthrough(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", help="small model (default on CPU: the tiny pair)")
    p.add_argument("--large", help="large model (default on CPU: the tiny pair)")
    p.add_argument("--train", help="train parquet (default on CPU: tiny data)")
    p.add_argument("--val", help="eval parquet (default on CPU: tiny data)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the means")
    p.add_argument("--out", help="output folder (default: a temporary folder)")
    p.add_argument("--cpu", action="store_true", help="use the CPU preset even if a GPU is present")
    ns = p.parse_args(argv)

    out = Path(ns.out or tempfile.mkdtemp(prefix="bench_step_")).resolve()
    use_cpu = ns.cpu or not _gpu_present()
    env = dict(os.environ)
    if use_cpu:
        from recipe.codistill_grpo.cpu.overrides import cpu_env, cpu_overrides
        from recipe.codistill_grpo.cpu.tiny_pair import build_tiny_data, build_tiny_pair

        pair = {"small": ns.small, "large": ns.large}
        if not (ns.small and ns.large):
            pair = build_tiny_pair(out / "tiny")
        data = {"train": ns.train, "test": ns.val}
        if not (ns.train and ns.val):
            data = build_tiny_data(out / "data")
        env.update(cpu_env())

        def overrides(large: bool) -> list[str]:
            return cpu_overrides(
                small=pair["small"], large=pair["large"] if large else None, train=data["train"],
                val=data["test"], out_dir=str(out / ("codistill" if large else "baseline")), steps=ns.steps,
            ) + extra
    else:
        if not (ns.small and ns.large and ns.train and ns.val):
            raise SystemExit("bench_step: on a GPU pass --small, --large, --train and --val")

        def overrides(large: bool) -> list[str]:
            args = [
                f"actor_rollout_ref.model.path={ns.small}", f"data.train_files={ns.train}", f"data.val_files={ns.val}",
                f"trainer.total_training_steps={ns.steps}", "trainer.save_freq=-1", "trainer.test_freq=-1",
                "trainer.val_before_train=false",
                f"trainer.default_local_dir={out / ('codistill' if large else 'baseline') / 'checkpoints'}",
            ]
            args += [f"large_actor.model.path={ns.large}"] if large else [
                "algorithm.codistill.large.enable=false", "algorithm.codistill.kd.coef=0"
            ]
            return args + extra

    print(f"bench_step: {'CPU preset' if use_cpu else 'GPU'}, {ns.steps} steps, first {ns.warmup} left out; logs in {out}")
    cod = _phase_means(_run(out / "codistill", overrides(True), env), ns.warmup)
    base = _phase_means(_run(out / "baseline", overrides(False), env), ns.warmup)

    print(f"\n{'phase':<16}{'codistill ms':>13}{'grpo ms':>13}{'ratio':>8}")
    for label, _ in PHASES:
        c, b = cod[label], base[label]
        ratio = f"{c / b:7.2f}x" if (c is not None and b) else "      -"
        print(f"{label:<16}{_fmt(c):>13}{_fmt(b):>13}{ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
