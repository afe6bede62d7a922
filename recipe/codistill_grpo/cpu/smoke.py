"""CPU smoke run: build the tiny model pair and data, then run the real entry point with the CPU preset.

    python -m recipe.codistill_grpo.cpu.smoke --out DIR --steps N [--baseline] [--resume] [-- extra hydra overrides]

Writes ``DIR/tiny/{small,large}`` (models), ``DIR/data/{train,test}.parquet``,
``DIR/metrics.jsonl`` (one JSON line per step, verl's file logger), ``DIR/checkpoints/`` and
``DIR/train.log``. Exit status is the trainer's. No GPU, no network.

Each run is a fresh run of N steps: the previous run's ``DIR/checkpoints`` and ``DIR/metrics.jsonl``
are removed first (verl would otherwise resume from them and train past N). ``--resume``
continues from the latest checkpoint in ``DIR/checkpoints`` instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from recipe.codistill_grpo.cpu.overrides import cpu_env, cpu_overrides

ENTRY = "recipe.codistill_grpo.main_codistill"


def build_command(out: Path, steps: int, baseline: bool, extra: list[str], **preset) -> tuple[list[str], dict]:
    from recipe.codistill_grpo.cpu.tiny_pair import build_tiny_data, build_tiny_pair

    # rebuilt every run (deterministic, a few seconds): a copy left by an older version of
    # tiny_pair.py would silently run other models
    pair = build_tiny_pair(out / "tiny")
    data = build_tiny_data(out / "data")
    args = cpu_overrides(
        small=pair["small"],
        large=None if baseline else pair["large"],
        train=data["train"],
        val=data["test"],
        out_dir=str(out),
        steps=steps,
        **preset,
    )
    cmd = [sys.executable, "-m", ENTRY, *args, *extra]
    env = {**os.environ, **cpu_env(str(out))}
    return cmd, env


def split_passthrough(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """``(own args, hydra overrides)``: everything after the first ``--`` goes to hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def main(argv: list[str] | None = None) -> int:
    argv, extra = split_passthrough(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (models, data, metrics, checkpoints)")
    parser.add_argument("--steps", type=int, default=2, help="training steps")
    parser.add_argument("--baseline", action="store_true", help="plain GRPO on the small model (no large model)")
    parser.add_argument("--save-freq", type=int, default=-1, help="checkpoint every N steps (-1: never)")
    parser.add_argument("--test-freq", type=int, default=-1, help="validate every N steps (-1: never)")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints instead of starting fresh")
    ns = parser.parse_args(argv)
    out = Path(ns.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not ns.resume:
        for stale in (out / "checkpoints", out / "metrics.jsonl"):
            if stale.exists():
                print(f"[smoke] fresh run: removing the previous run's {stale} (use --resume to continue it)", flush=True)
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        extra = ["trainer.resume_mode=disable", *extra]
    cmd, env = build_command(out, ns.steps, ns.baseline, extra, save_freq=ns.save_freq, test_freq=ns.test_freq)
    print("+ " + " ".join(cmd), flush=True)
    with open(out / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
