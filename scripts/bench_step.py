#!/usr/bin/env python
"""Per-phase step time of two runs of the recipe, through the real entry point, side by side.

    python scripts/bench_step.py --platform gpu --steps 8 -- trainer.n_gpus_per_node=8  # GPU: overrides after --

Examples, formats, equations and options: docs/benchmarks.md, section scripts/bench_step.py.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
ENTRY = "recipe.codistill_grpo.main_codistill"

# label -> (metric keys added, metric keys subtracted): verl's timers and the recipe's sub-phase timers
PHASES = [
    ("generate", ["timing_s/gen"], []),
    ("reward", ["timing_s/reward"], []),
    ("small log-prob", ["timing_s/old_log_prob"], ["timing_s/large_log_prob"]),
    ("large log-prob", ["timing_s/large_log_prob"], []),
    ("advantage", ["timing_s/adv", "timing_s/kd_advantage"], []),
    ("small update", ["timing_s/small_update"], []),
    ("large update", ["timing_s/large_update"], []),
    ("weight sync", ["timing_s/update_weights"], []),
    ("step (total)", ["timing_s/step"], []),
]
COMPARISONS = {  # --compare -> {run name: its overrides}
    "grpo": {"codistill": "exp=codistill", "grpo_small": "exp=grpo_small"},
    "skip": {"skip": "exp=codistill", "no_skip": "exp=codistill algorithm.codistill.large.skip_zero_grad=false"},
    # the recipe's hf CPU rollout (pinned: a pair's default may be vLLM) answering waiting requests in batches vs
    # one request at a time (as before batching)
    "batching": {
        "batched": "exp=codistill ++pair.cpu.rollout=hf",
        "one_by_one": "exp=codistill ++pair.cpu.rollout=hf"
        " +actor_rollout_ref.rollout.engine_kwargs.hf.max_batch_size=1",
    },
}


def run(out: Path, ns: argparse.Namespace, variant: str, extra: list[str]) -> pd.DataFrame:
    """One fresh run of the entry point in out: its metrics after the warm-up, a row per step, a column per key."""
    args = [f"pair={ns.pair}", f"platform={ns.platform}", *variant.split(), f"run.dir={out}", "run.fresh=true"]
    args += [f"trainer.total_training_steps={ns.steps}", "trainer.save_freq=-1", *extra]
    print(f"bench_step: {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", ENTRY, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_step: run failed (exit {proc.returncode}), see {out}/train.log\n{proc.stderr[-2000:]}")
    from make_tables import read_log  # the one reader of verl's file-logger JSONL

    log = pd.DataFrame(read_log(out / "metrics.jsonl"))  # a row per step, a column per metric
    return log[log.index > ns.warmup]


def phase_means(df: pd.DataFrame) -> dict[str, float | None]:
    """Per phase, the mean over df's rows of (its added keys - its subtracted keys), in seconds; None where a row
    lacks its first key."""
    total = lambda keys: df.reindex(columns=keys).sum(axis=1)  # noqa: E731 - a missing key or NaN counts 0
    missing = {label: plus[0] not in df or df[plus[0]].isna().any() for label, plus, _ in PHASES}
    return {label: None if missing[label] else (total(plus) - total(minus)).mean() for label, plus, minus in PHASES}


def main(argv: list[str] | None = None) -> None:
    sys.path.insert(0, str(REPO))  # this checkout's recipe package
    from recipe.codistill_grpo.cli import parse_with_overrides

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="qwen2.5-math-1.5b_7b")
    p.add_argument("--platform", default="cpu", choices=("cpu", "gpu"))
    compare = "grpo: codistill vs grpo_small; skip: codistill with vs without the zero-gradient skip; batching "
    compare += "(platform cpu): the hf CPU rollout batching requests vs answering one at a time"
    p.add_argument("--compare", default="grpo", choices=sorted(COMPARISONS), help=compare)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="leading steps left out of the means")
    p.add_argument("--out", help="output folder (default: a temporary folder)")
    ns, extra = parse_with_overrides(p, argv)
    if ns.steps <= ns.warmup:
        raise SystemExit(f"bench_step: no steps after the {ns.warmup} warm-up steps; raise --steps")

    out = Path(ns.out or tempfile.mkdtemp(prefix="bench_step_")).resolve()
    plan = f"pair {ns.pair}, platform {ns.platform}, {ns.steps} steps, first {ns.warmup} left out; runs in {out}"
    print(f"bench_step: {plan}", flush=True)
    runs = {name: run(out / name, ns, variant, extra) for name, variant in COMPARISONS[ns.compare].items()}
    (a, ma), (b, mb) = ((name, phase_means(df)) for name, df in runs.items())
    print(f"\n{'phase':<16}{a + ' ms':>14}{b + ' ms':>14}{'ratio':>8}")
    for label, _, _ in PHASES:
        x, y = ma[label], mb[label]
        cells = ["-" if v is None else f"{v * 1000:9.1f}" for v in (x, y)]
        ratio = f"{x / y:7.2f}x" if (x is not None and y) else "      -"
        print(f"{label:<16}{cells[0]:>14}{cells[1]:>14}{ratio:>8}")
    for name, df in runs.items():
        skipped = df.get("large/skipped_frac", pd.Series()).dropna()
        if len(skipped):
            print(f"{name}: large/skipped_frac mean {skipped.mean():.3f} over {len(skipped)} steps")


if __name__ == "__main__":
    main()
